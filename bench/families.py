"""Families benchmark: bonsai against wanda-sp on small trained models of the families added beside Llama
(Gemma 3, Phi-3, Qwen3-MoE), and on the mixture of experts, bonsai removing experts only against the
routing-frequency baseline (the least-routed experts removed).

The models are `bench.train_small`'s (trained on webcode-calib.jsonl, cached); each job calibrates on 64
sequences of 256 tokens of webcode-calib.jsonl and reports perplexity on 64 of webcode-dev.jsonl, fp32 on
the CPU, without compensation unless `--compensate` asks for it (an `ls` refit costs several forward
passes for each candidate the split search judges). bonsai runs at `--budget` (fast: the CPU default)
with free per-layer widths, wanda-sp with uniform ones (its own rule); the sizes of one method share one
scoring (a multi-size job). The experts rows remove a quarter of every layer's experts in total and
nothing else (`unit_kinds: [expert]`); the baseline routes the calibration set through the dense model,
counts each expert's share of the tokens and removes the least-routed, under the same selection rules
and compensation.

    python -m bench.families                       # every family, 20 / 35 / 50%, the experts rows
    python -m bench.families --families qwen3_moe --sparsities 0.2

Prints a table and writes bench/results/families-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.train_small import FAMILIES, SHARED, materialize

REPO = Path(__file__).resolve().parents[1]
EXPERT_FRACTION = 0.25
METHODS = {"bonsai": False, "wanda-sp": True}  # method -> uniform widths


def job_fields(family: str, shared: Path, budget: str, compensate: str) -> dict[str, Any]:
    return {
        "model": str(materialize(family, shared)),
        "data": shared / "data" / "webcode-calib.jsonl",
        "eval_data": shared / "data" / "webcode-dev.jsonl",
        "seq_len": 256,
        "num_samples": 64,
        "eval_samples": 64,
        "precision": "fp32",
        "device": "cpu",
        "budget": budget,
        "compensate": compensate,
    }


def method_rows(
    family: str, method: str, sparsities: list[float], fields: dict[str, Any], options: dict[str, Any]
) -> list[dict[str, Any]]:
    """One multi-size job of `method` with its `options`: a row per size."""
    from pruning import prune
    from pruning.report import PruneReport

    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        summary = prune(
            **fields,
            sparsity=sparsities,
            method=method,
            uniform=METHODS[method],
            options=options,
            out_dir=out,
        )
        elapsed = time.perf_counter() - began
        rows = []
        for entry in summary.sizes:  # type: ignore[union-attr]
            report = PruneReport.read(Path(out) / entry.dir / "pruning_report.json")
            rows.append(row(family, method, "uniform" if METHODS[method] else "global", report, elapsed))
    return rows


def row(family: str, method: str, widths: str, report: Any, job_s: float) -> dict[str, Any]:
    return {
        "family": family,
        "method": method,
        "widths": widths,
        "target": report.sparsity.target,
        "achieved": round(report.sparsity.achieved, 4),
        "perplexity_before": report.perplexity.before,
        "perplexity_after": report.perplexity.after,
        "x_dense": report.perplexity.after / report.perplexity.before,
        "compensation": report.compensation,
        "job_s": round(job_s, 1),
        "params_after": report.params.total_after,
    }


def expert_sparsity(model: str) -> float:
    """The sparsity (over all prunable parameters) that a quarter of the experts makes."""
    from transformers import AutoConfig

    from pruning.model.adapters import adapter_for

    config = AutoConfig.from_pretrained(model)
    adapter = adapter_for(config.model_type)
    shape = adapter.layer_shapes(config)[0]  # every layer alike in the dense model
    attention, expert = adapter.unit_params(config, shape)
    experts = (shape.experts or 0) * expert
    return EXPERT_FRACTION * experts / (experts + shape.num_kv_heads * attention)


def bonsai_experts_row(
    family: str, fields: dict[str, Any], sparsity: float, options: dict[str, Any]
) -> dict[str, Any]:
    from pruning import prune
    from pruning.report import PruneReport

    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        report = prune(**fields, sparsity=sparsity, unit_kinds=["expert"], options=options, out_dir=out)
        assert isinstance(report, PruneReport)  # one size
        result = row(family, "bonsai, experts only", "global", report, time.perf_counter() - began)
    return result | {"experts_removed": sum(not e.kept for e in report.experts or [])}


def routing_baseline_row(family: str, fields: dict[str, Any], sparsity: float) -> dict[str, Any]:
    """The least-routed experts removed (the dense model's routing over the calibration set), under the
    job's selection rules, compensation and evaluation."""
    from pruning import PruneSpec
    from pruning.engine import stages
    from pruning.engine.context import method_context
    from pruning.measure.routing import routing_frequencies
    from pruning.model.adapters import UnitKind

    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        spec = PruneSpec(**fields, sparsity=sparsity, unit_kinds=["expert"], method="random", out_dir=out)
        run = stages.prepare(spec, lambda event: None)
        space = run.space
        with run.installed():
            ctx = method_context(run)
            frequencies = routing_frequencies(run.probe)
            score = torch.full((space.size,), math.inf, dtype=torch.float64)
            for group, frequency in frequencies.items():
                score[space.slice(group)] = frequency
            keep = ~ctx.selector.select(
                score / space.params, torch.ones(space.size, dtype=torch.bool), ctx.target_params
            )
            stages.compensate(run, keep)
            quality = stages.evaluate(run, keep)
        removed_params = float(space.params[~keep].sum())
        return {
            "family": family,
            "method": "routing frequency, experts only",
            "widths": "global",
            "target": sparsity,
            "achieved": round(removed_params / float(space.params.sum()), 4),
            "perplexity_before": run.dense.figures["perplexity"],
            "perplexity_after": quality.figures["perplexity"],
            "x_dense": quality.figures["perplexity"] / run.dense.figures["perplexity"],
            "compensation": run.compensator.name if run.compensator.applied else "none",
            "job_s": round(time.perf_counter() - began, 1),
            "experts_removed": int((~keep[space.kind == UnitKind.EXPERT]).sum()),
        }


def print_table(rows: list[dict[str, Any]], sparsities: list[float]) -> None:
    print("| family | method | widths | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |")
    print("| --- | --- | --- |" + " --- |" * len(sparsities))
    keys = sorted({(r["family"], r["method"], r["widths"]) for r in rows if "experts_removed" not in r})
    for family, method, widths in keys:
        cells = []
        for sparsity in sparsities:
            found = [
                r
                for r in rows
                if (r["family"], r["method"], r["widths"], r["target"]) == (family, method, widths, sparsity)
            ]
            cells.append(f"{found[0]['x_dense']:.3f}" if found else "—")
        print(f"| {family} | {method} | {widths} | " + " | ".join(cells) + " |")
    for r in rows:
        if "experts_removed" in r:
            method = f"{r['method']} ({r['experts_removed']} experts)"
            print(f"| {r['family']} | {method} | {r['widths']} | {r['x_dense']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sparsities", default="0.2,0.35,0.5")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", default="fast")
    parser.add_argument("--options", type=json.loads, default={}, help="JSON dict of bonsai options")
    parser.add_argument("--compensate", default="none", help="none (the default here), bias, ls or auto")
    parser.add_argument("--no-experts", action="store_true", help="skip the experts-only rows")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "families-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    rows: list[dict[str, Any]] = []
    trained: dict[str, Any] = {}
    for family in args.families.split(","):
        fields = job_fields(family, args.shared, args.budget, args.compensate)
        trained[family] = json.loads((Path(fields["model"]) / "train_log.json").read_text())
        for method in args.methods.split(","):
            options = args.options if method == "bonsai" else {}  # the baselines take none
            rows += method_rows(family, method, sparsities, fields, options)
            print(json.dumps(rows[-1]), flush=True)
        if family in ("qwen3_moe",) and not args.no_experts:
            sparsity = expert_sparsity(fields["model"])
            rows.append(bonsai_experts_row(family, fields, sparsity, args.options))
            rows.append(routing_baseline_row(family, fields, sparsity))
            print(json.dumps(rows[-2:]), flush=True)
    print_table(rows, sparsities)
    settings = {
        "budget": args.budget,
        "options": args.options,
        "compensate": args.compensate,
        "threads": args.threads,
    }
    write_results(args.out, settings, trained, rows)


def write_results(
    out: Path, settings: dict[str, Any], trained: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """Write the rows to `out`, replacing the rows an earlier run wrote there for the same families (run
    with the same settings) and keeping the others'."""
    result: dict[str, Any] = {**settings, "models": {}, "rows": []}
    if out.is_file():
        earlier = json.loads(out.read_text())
        if all(earlier.get(key) == value for key, value in settings.items()):
            result["models"] = {k: v for k, v in earlier["models"].items() if k not in trained}
            result["rows"] = [r for r in earlier["rows"] if r["family"] not in trained]
    result["models"].update(trained)
    result["rows"] += rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
