"""One `local` window fitted by gradient (Adam) and by forward-only SPSA steps side by side: the same
pruned, compensated model, the same window (the first block the pruning changed), its training and
held-out streams, each solver from zero changes.

    python -m bench.zo_window --models pycoder --sparsity 0.35 --solvers \
        '[{"solver": "adam", "lr": 1e-3, "steps": 60}, {"solver": "zo", "lr": 1e-3, "steps": 300},
          {"solver": "zo", "lr": 1e-4, "steps": 300}]'

A solver with `"fused": false` trains the window's changes through their hooks (a second matmul a map)
rather than fused into one matmul by W_kept + ΔW, as the recovery does.

Prints the window's held-out error (relative to its target's mean square) before and after each fit,
the share of it the fit removed and its time; writes bench/results/zo-window-<model>-<sparsity>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench.host import describe
from bench.quality import MODELS, SHARED
from bench.recovery import prune_once

REPO = Path(__file__).resolve().parents[1]
TEXT_TOKENS = 64 * 256  # the recovery text: 58 sequences train the window, 6 judge it


def fit_all(run: Any, keep: Any, solvers: list[dict[str, Any]]) -> dict[str, Any]:
    """Each of `solvers` on the first fitted window of `run` pruned to `keep` (hooks installed)."""
    import torch

    from pruning.engine import stages
    from pruning.measure.streams import LayerStreams
    from pruning.recovery.deltas import WeightDeltas
    from pruning.recovery.local import (
        SOLVERS,
        WindowSettings,
        channel_weights,
        held_out_error,
        trainable_window,
        weight_scales,
    )
    from pruning.recovery.recover import judge_split, local_windows
    from pruning.recovery.training import learning_rate

    model, probe, adapter = run.subject.loaded.model, run.probe, run.subject.adapter
    train, judge = judge_split(stages.recovery_text(run, TEXT_TOKENS))
    layers, windows, first, parts = local_windows(model, adapter, probe.space, keep)
    with torch.no_grad():
        streams = LayerStreams.capture(probe, keep, layers[first], train, 4)
        held = LayerStreams.capture(probe, keep, layers[first], judge)
    layer, window = layers[first], windows[first]
    train_targets, judge_targets = streams.dense_outputs(layer), held.dense_outputs(layer)
    weights = channel_weights(train_targets)
    before = held_out_error(held, layer, judge_targets, weights)
    rows = []
    for solver in solvers:
        fitted = WeightDeltas(probe.masks)
        params = trainable_window(window, parts, fitted)
        scales = weight_scales(window, parts, lambda name: window[name].get_parameter("weight"))
        settings = WindowSettings(solver["steps"], solver["lr"], 0, solver["solver"], solver.get("eps", 1e-3))
        with fitted.installed():
            began = time.perf_counter()
            with fitted.fused() if solver.get("fused", True) else nullcontext():
                SOLVERS[settings.solver](
                    streams, layer, train_targets, weights, params, scales, settings, learning_rate,
                    lambda tokens: None, lambda: False,
                )  # fmt: skip
            seconds = time.perf_counter() - began
            after = held_out_error(held, layer, judge_targets, weights)
        row = {**solver, "after": after, "removed": (before - after) / before, "seconds": round(seconds, 1)}
        print(f"{json.dumps(solver):<60} error {before:.4f} -> {after:.4f} removed {row['removed']:>8.2%} "
              f"{seconds:>7.1f} s", flush=True)  # fmt: skip
        rows.append(row)
    weights_count = sum(p.numel() for p in trainable_window(window, parts, WeightDeltas(probe.masks)))
    return {"window": first, "weights": weights_count, "train_sequences": int(train.shape[0]),
            "before": before, "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="pycoder")
    parser.add_argument("--sparsity", type=float, default=0.35)
    parser.add_argument("--solvers", type=json.loads, required=True, help="JSON list of window fits")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from pruning.engine import stages

    host = {**describe(), "threads": torch.get_num_threads()}
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            run = prune_once(MODELS[model](args.shared, Path(work)), args.sparsity, Path(work), {})
            with run.installed():
                result = stages.score(run)
                stages.compensate(run, result.keep)
                fits = fit_all(run, result.keep, args.solvers)
        out = args.out or REPO / "bench" / "results" / f"zo-window-{model}-{args.sparsity}.json"
        out.write_text(
            json.dumps({"model": model, "sparsity": args.sparsity, "host": host, **fits}, indent=2)
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
