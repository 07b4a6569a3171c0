"""Sub-models scored in fp32 and under bf16 autocast (`precision: bf16-mixed`), side by side in one process.

The same random sub-models (each unit dropped with bonsai's default probability 0.2) are scored on the same
calibration sequences in both precisions, alternating, as bonsai's rounds score them (8 per forward): the
tokens per second of each, and how far bf16's losses stray from fp32's (their correlation, and the spread of
the difference against the spread of the losses themselves, which is what the regression reads).

    python -m bench.bf16_scoring                      # pycoder-28m and SmolLM2-135M
    python -m bench.bf16_scoring --models smollm2 --sub-models 64

Prints a table and writes bench/results/bf16-scoring-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.quality import MODELS, REPO, SHARED
from pruning.model.loading import cpu_computes_bf16

DROP = 0.2  # bonsai's default drop_fraction
PER_FORWARD = 8  # bonsai's default masks_per_forward
SEQUENCES = 2  # the fast budget's scoring_sequences


@dataclass
class Scoring:
    """A model loaded in fp32 on the CPU with its unit masks, SEQUENCES calibration sequences and random
    sub-models (keep-masks), as the sub-model scoring benchmarks use them."""

    model: Any
    adapter: Any
    masks: Any  # UnitMasks
    ids: Any  # [SEQUENCES, 256] token ids
    keeps: Any  # [sub_models, U] 1.0 where a sub-model keeps a unit


def scoring(model_dir: str, data: Path, sub_models: int, seed: int) -> Scoring:
    import torch

    from pruning.checkpoint_checks import read_model_type
    from pruning.model.adapters import adapter_for
    from pruning.model.data import load_calibration
    from pruning.model.loading import load_model
    from pruning.model.masking import UnitMasks
    from pruning.model.units import build_unit_space

    adapter = adapter_for(read_model_type(Path(model_dir)))
    loaded = load_model(Path(model_dir), "fp32", torch.device("cpu"), adapter.auto_class())
    ids = load_calibration(loaded.tokenizer, data, 256, SEQUENCES, 0).calibration  # [2, 256]
    space = build_unit_space(loaded.model, adapter, None)
    keeps = (
        torch.rand(sub_models, space.size, generator=torch.Generator().manual_seed(seed)) > DROP
    ).double()
    return Scoring(loaded.model, adapter, UnitMasks(space), ids, keeps)


def score(model_dir: str, data: Path, sub_models: int, repeats: int, seed: int) -> dict[str, Any]:
    import torch

    from pruning.measure.objectives import make_objective

    cpu = torch.device("cpu")
    setup = scoring(model_dir, data, sub_models, seed)
    masks, ids, keeps, space = setup.masks, setup.ids, setup.keeps, setup.masks.space
    objectives = {
        name: make_objective("lm", setup.model, setup.adapter, cpu, masks, dtype)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
    }
    losses: dict[str, torch.Tensor] = {}
    seconds = {name: 0.0 for name in objectives}
    with masks.installed():
        for objective in objectives.values():  # warm-up
            masks.set(keeps[:PER_FORWARD])
            objective.replica_losses(ids, PER_FORWARD)
        for _ in range(repeats):
            for name, objective in objectives.items():
                began = time.perf_counter()
                parts = []
                for start in range(0, sub_models, PER_FORWARD):
                    forward = keeps[start : start + PER_FORWARD]  # [≤ PER_FORWARD, U]
                    masks.set(forward)
                    parts.append(objective.replica_losses(ids, forward.shape[0]))
                seconds[name] += time.perf_counter() - began
                losses[name] = torch.cat(parts)  # [sub_models]
    fp32, bf16 = losses["fp32"], losses["bf16"]
    tokens = repeats * sub_models * ids.numel()
    return {
        "units": space.size,
        "sub_models": sub_models,
        "tokens_per_s_fp32": round(tokens / seconds["fp32"], 1),
        "tokens_per_s_bf16": round(tokens / seconds["bf16"], 1),
        "speedup": round(seconds["fp32"] / seconds["bf16"], 3),
        "loss_mean_fp32": float(fp32.mean()),
        "loss_spread_fp32": float(fp32.std()),
        "difference_mean": float((bf16 - fp32).mean()),
        "difference_spread": float((bf16 - fp32).std()),
        "correlation": float(torch.corrcoef(torch.stack([fp32, bf16]))[0, 1]),
    }


Score = Callable[[str, Path, int, int, int], dict[str, Any]]  # (model dir, data, sub-models, repeats, seed)


def scoring_bench(
    doc: str, models: str, out: Path, score: Score, line: Callable[[str, dict[str, Any]], str], **device: Any
) -> None:
    """The command line of a sub-model scoring benchmark: `score` each model of `--models` (default
    `models`), print `line` of each row, write the rows and the CPU (with `device`) to `--out`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--models", default=models)
    parser.add_argument("--sub-models", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    import torch

    rows = []
    for name in args.models.split(","):
        inputs = MODELS[name](args.shared, Path("."))
        row = {
            "model": name,
            **score(inputs["model"], inputs["data"], args.sub_models, args.repeats, args.seed),
        }
        rows.append(row)
        print(line(name, row))
    cpu = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), **device}
    args.out.write_text(json.dumps({"device": cpu, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


def describe(name: str, row: dict[str, Any]) -> str:
    return (
        f"{name:8} units {row['units']:5}  tok/s fp32 {row['tokens_per_s_fp32']:8.1f}  "
        f"bf16 {row['tokens_per_s_bf16']:8.1f}  ({row['speedup']:.2f}x)  "
        f"loss spread {row['loss_spread_fp32']:.3f}  bf16-fp32 {row['difference_mean']:+.4f} "
        f"± {row['difference_spread']:.4f}  corr {row['correlation']:.5f}"
    )


def main() -> None:
    out = REPO / "bench" / "results" / "bf16-scoring-cpu.json"
    scoring_bench(__doc__, "pycoder,smollm2", out, score, describe, cpu_computes_bf16=cpu_computes_bf16())


if __name__ == "__main__":
    main()
