"""Scoring in other weight formats: throughput, memory, and how far each one's importances agree with bf16's.

    python -m bench.formats --model ../shared/models/pycoder-28m --data ../shared/data/webcode-calib.jsonl
    python -m bench.formats --precisions bf16,int8,int8-weight-only,fp8 --out bench/results/formats.json

One bonsai round over every unit at once (the same seed, so every format evaluates the same sub-models):
what differs between formats is only each sub-model's measured loss, so the importances' rank correlation
with bf16's (Spearman) and the overlap of the units each would keep measure what the format costs the
ranking. Each format runs in its own spawned process (`bench.isolate`), so its memory figures start clean.
The pick is global at --sparsity with no compensation and no split search: the ranking alone.
Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.isolate import log, run_isolated

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = "bf16"


def score_step(
    model: str, data: str, precision: str, device: str, sparsity: float, samples: int, out_dir: str
) -> dict[str, Any]:
    """One prune in `precision`; the report's importances and kept units, scoring rate and memory."""
    from pruning import PruneSpec, prune

    spec = PruneSpec.model_validate(
        {
            "model": model,
            "data": data,
            "sparsity": sparsity,
            "precision": precision,
            "device": device,
            "num_samples": 32,
            "eval_samples": 16,
            "compensate": "none",
            "out_dir": out_dir,
            "options": {
                "rounds": 1,
                "samples_per_round": samples,
                "kind_split": "importance",
                "prior_sequences": 16,
            },
        }
    )
    report = json.loads(prune(spec).to_json())  # the report as its JSON file holds it
    scoring_s = report["stage_s"]["scoring"]
    return {
        "status": "ok",
        "precision": precision,
        "scoring_s": scoring_s,
        "scoring_tokens": report["forward_tokens_by_stage"]["scoring"],
        "scoring_tokens_per_s": round(report["forward_tokens_by_stage"]["scoring"] / scoring_s, 1),
        "peak_gpu_bytes": max(report.get("peak_gpu_bytes", {}).values(), default=None),
        "load_s": report["stage_s"]["load"],
        "perplexity": report["perplexity"],
        "importance": [unit["importance"] for unit in report["units"]],
        "kept": [unit["kept"] for unit in report["units"]],
    }


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties broken by position: importances are continuous)."""
    import torch

    ranks = [torch.tensor(x, dtype=torch.float64).argsort().argsort().double() for x in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def agreement(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    removed = [{i for i, kept in enumerate(run["kept"]) if not kept} for run in (reference, other)]
    return {
        "spearman_vs_bf16": round(spearman(reference["importance"], other["importance"]), 4),
        # of the units bf16's ranking removes, the share this format's removes too
        "removed_overlap_vs_bf16": round(len(removed[0] & removed[1]) / max(len(removed[0]), 1), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(SHARED / "models" / "pycoder-28m"))
    parser.add_argument("--data", default=str(SHARED / "data" / "webcode-calib.jsonl"))
    parser.add_argument("--precisions", default="bf16,int8,int8-weight-only,fp8")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=512, help="sub-models evaluated (one round)")
    parser.add_argument("--step-timeout-s", type=float, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "formats.json")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")
    if REFERENCE not in precisions:
        parser.error(f"--precisions must include {REFERENCE}, the reference")

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        for precision in [REFERENCE] + [p for p in precisions if p != REFERENCE]:
            log(f"{precision}: scoring")
            step_args = {
                "model": args.model,
                "data": args.data,
                "precision": precision,
                "device": args.device,
                "sparsity": args.sparsity,
                "samples": args.samples,
                "out_dir": str(Path(work) / precision),
            }
            runs[precision] = run_isolated(score_step, step_args, args.step_timeout_s, lambda *_: None)
            log(f"{precision}: {runs[precision]['status']} {runs[precision].get('error', '')}")
    reference = runs[REFERENCE]
    rows = []
    for precision, run in runs.items():
        row = {"precision": precision, **{k: v for k, v in run.items() if k not in ("importance", "kept")}}
        if run["status"] == "ok" and reference["status"] == "ok":
            row.update(agreement(reference, run))
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "formats": rows}, indent=2) + "\n")
    print(
        f"{'precision':<17} {'tok/s':>9} {'ratio':>6} {'gpu GB':>7} {'ppl':>7} {'spearman':>8} {'overlap':>7}"
    )
    base = reference.get("scoring_tokens_per_s")
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['precision']:<17} {row['status']}: {row.get('error')}")
            continue
        gpu = f"{row['peak_gpu_bytes'] / 1e9:7.2f}" if row["peak_gpu_bytes"] else "      -"
        ratio = row["scoring_tokens_per_s"] / base if base else 0.0
        print(
            f"{row['precision']:<17} {row['scoring_tokens_per_s']:9.0f} "
            f"{ratio:6.2f} {gpu} {row['perplexity']['after']:7.2f} "
            f"{row.get('spearman_vs_bf16', 1.0):8.4f} {row.get('removed_overlap_vs_bf16', 1.0):7.3f}"
        )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
