"""Recovery side by side: one model pruned and compensated once, then each recovery setting run on that same
pruned model in turn, judged on the dev text and on far text (the exported checkpoint under stock
transformers), with its time and tokens.

    python -m bench.recovery --models pycoder --sparsities 0.35 \
        --variants '[{"recover": "local"}, {"recover": "distill"}, {"recover": "local+distill"}]'

A variant `{"recover": "distill", "time_of": "local", "tokens_per_s": 85, "overhead_s": 90}` trains on the
tokens that pace takes in the time the `local` row's stage took, less the stage's fixed 90 s (a recovery
at equal wall time, its schedule sized to it).

Every variant starts from the same scored, compensated model, so the rows differ by their recovery alone
(a job per setting would also differ by its scoring's rounding). Prints a table and writes
bench/results/recovery-<model>-<sparsity>.json (`--out` to choose).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.host import describe
from bench.quality import MODELS, SHARED, FarText

REPO = Path(__file__).resolve().parents[1]


def prune_once(inputs: dict[str, Any], sparsity: float, work: Path, options: dict[str, Any]) -> Any:
    """The run and the units it keeps: prepared, scored and compensated as a `fast` job with `ls` would
    be, left with its hooks installed by the caller."""
    from pruning.engine import stages
    from pruning.spec import PruneSpec

    spec = PruneSpec(
        **inputs,
        out_dir=work / "base",
        sparsity=sparsity,
        seq_len=256,
        num_samples=64,
        eval_samples=64,
        precision="fp32",
        device="cpu",
        budget="fast",
        compensate="auto",
        **options,
    )
    return stages.prepare(spec, lambda event: None)


def run_variant(
    run: Any, keep: Any, variant: dict[str, Any], out_dir: Path, far: FarText | None
) -> dict[str, Any]:
    """One recovery setting on the pruned model of `run` (hooks installed): its figures and the exported
    checkpoint's far-text perplexity."""
    from pruning.engine import stages

    spec = run.spec.model_copy(update={**variant, "out_dir": out_dir})
    trial = replace(run, spec=spec, recovered=None)
    monitor = run.instruments.monitor
    for peaks in (monitor.peak_host_rss_bytes, monitor.peak_host_anon_bytes):
        peaks.pop("recover", None)  # this variant's own peak, not the largest of all variants'
    stage_s_before = dict(monitor.stage_s)
    began = time.perf_counter()
    stages.recover(trial, keep)
    seconds = time.perf_counter() - began
    pruned = stages.evaluate(trial, keep)
    stages.export(trial, keep)
    record = trial.recovered.record if trial.recovered is not None else None
    row: dict[str, Any] = {
        "variant": variant,
        "perplexity": pruned.figures["perplexity"],
        "stage_s": round(seconds, 1),
        # this variant's own stages (recover, evaluate_pruned, export) and the recovery's host peaks
        "stages_s": {
            name: round(total - stage_s_before.get(name, 0.0), 1)
            for name, total in monitor.stage_s.items()
            if total - stage_s_before.get(name, 0.0) > 0
        },
        "recover_peak_rss_bytes": monitor.peak_host_rss_bytes.get("recover"),
        "recover_peak_anon_bytes": monitor.peak_host_anon_bytes.get("recover"),
        "recovery": record.model_dump(exclude={"quality_before"}) if record else None,
    }
    if far is not None:
        row["far"] = far.perplexity(out_dir)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="pycoder")
    parser.add_argument("--sparsities", default="0.35")
    parser.add_argument("--variants", type=json.loads, required=True, help="JSON list of recovery settings")
    parser.add_argument("--options", type=json.loads, default={}, help="JSON dict of job settings")
    parser.add_argument("--far", action="store_true", help="also perplexity on far text (see FarText)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from pruning.engine import stages

    host = {**describe(), "threads": torch.get_num_threads()}
    far = FarText() if args.far else None
    for model in args.models.split(","):
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            with tempfile.TemporaryDirectory() as work:
                inputs = MODELS[model](args.shared, Path(work))
                rows: list[dict[str, Any]] = []
                run = prune_once(inputs, sparsity, Path(work), args.options)
                dense = run.dense.figures["perplexity"]
                far_dense = far.perplexity(Path(inputs["model"])) if far is not None else None
                out = args.out or REPO / "bench" / "results" / f"recovery-{model}-{sparsity}.json"
                with run.installed():
                    result = stages.score(run)
                    stages.compensate(run, result.keep)
                    prune_stages = run.instruments.monitor.summary()  # load to compensate: the job's stages
                    variants = [{"recover": "none"}, *args.variants]
                    for index, asked in enumerate(variants):
                        variant = at_equal_time(asked, rows)
                        row = run_variant(run, result.keep, variant, Path(work) / f"v{index}", far)
                        row["asked"] = asked
                        row["ratio"] = row["perplexity"] / dense
                        if far_dense is not None:
                            row["far_ratio"] = row["far"] / far_dense
                        rows.append(row)
                        print_row(row)
                        out.write_text(
                            json.dumps(
                                {"model": model, "sparsity": sparsity, "host": host, "dense": dense,
                                 "far_dense": far_dense, "pruning": prune_stages,
                                 "split_search": result.details.get("split_search"), "rows": rows},
                                indent=2,
                            )
                            + "\n"
                        )  # fmt: skip
                print(f"wrote {out}")


def at_equal_time(variant: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`variant` with `"time_of": <recover>`, `"tokens_per_s"` and `"overhead_s"` replaced by the
    `recover_tokens` it trains on at that pace in the recovery stage time of the earlier row that ran
    `<recover>`, less the stage's fixed `overhead_s` (its evaluation before and judgments; pace and
    overhead measured by an earlier run): a recovery given the same time as another, its schedule sized
    to it."""
    if "time_of" not in variant:
        return variant
    settings = {k: v for k, v in variant.items() if k not in ("time_of", "tokens_per_s", "overhead_s")}
    seconds = next(r["stage_s"] for r in rows if r["variant"].get("recover") == variant["time_of"])
    tokens = int((seconds - variant.get("overhead_s", 0.0)) * variant["tokens_per_s"])
    return {**settings, "recover_tokens": max(1024, tokens // 1024 * 1024)}


def print_row(row: dict[str, Any]) -> None:
    recovery = row["recovery"] or {}
    far = f"{row['far_ratio']:.3f}" if "far_ratio" in row else "-"
    print(
        f"{json.dumps(row['variant']):<60} {row['ratio']:>7.3f} far {far:>7} {row['stage_s']:>7.1f} s "
        f"tokens {recovery.get('tokens', 0):>8} kept {recovery.get('windows_kept', '-')}/"
        f"{recovery.get('windows', '-')} rolled back {recovery.get('rolled_back', '-')}",
        flush=True,
    )


if __name__ == "__main__":
    main()
