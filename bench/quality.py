"""Quality benchmark: every method, side by side in one process, on pycoder-28m (and MiniLM-L6).

    python -m bench.quality                 # full budget (GPU)
    python -m bench.quality --reduced       # a CPU-sized budget
    python -m bench.quality --sweep         # bonsai option grid, to choose the defaults

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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PYCODER = SHARED / "models" / "pycoder-28m"
CALIB = SHARED / "data" / "webcode-calib.jsonl"
DEV = SHARED / "data" / "webcode-dev.jsonl"


def budget(reduced: bool) -> dict[str, Any]:
    if reduced:
        return {"seq_len": 128, "num_samples": 16, "eval_samples": 16,
                "options": {"rounds": 2, "samples_per_round": 48, "scoring_sequences": 2}}
    return {"seq_len": 256, "num_samples": 64, "eval_samples": 64, "options": {}}


def run_one(config: dict[str, Any], common: dict[str, Any], shared_dir: Path) -> dict[str, Any]:
    from pruning import prune

    options = {**common.get("options", {}), **config.get("options", {})} if config["method"] == "bonsai" else {}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = prune(model=str(shared_dir / "models" / "pycoder-28m"), data=shared_dir / "data" / "webcode-calib.jsonl",
                       eval_data=shared_dir / "data" / "webcode-dev.jsonl", out_dir=Path(out),
                       **{k: v for k, v in common.items() if k != "options"},
                       **{k: v for k, v in config.items() if k != "options"}, options=options)
        wall = time.perf_counter() - start
    ppl = report["perplexity"]
    return {**config, "options": options, "ppl_dense": ppl["before"], "ppl": ppl["after"],
            "ratio": ppl["after"] / ppl["before"], "achieved": report["sparsity"]["achieved"],
            "params_after": report["params"]["total_after"], "wall_s": wall,
            "scoring_s": report["stage_s"]["scoring"], "forward_tokens": report["forward_tokens"]}


def method_grid(sparsities: list[float], precision: str, compensations: list[str]) -> list[dict[str, Any]]:
    configs = []
    for sparsity, method in itertools.product(sparsities, ["random", "wanda-sp", "flap", "bonsai"]):
        for uniform, compensate in itertools.product((True, False), compensations):
            if method == "wanda-sp" and not uniform:
                continue  # wanda-sp is per-layer by definition
            configs.append({"method": method, "sparsity": sparsity, "uniform": uniform,
                            "precision": precision, "compensate": compensate})
    return configs


def sweep_grid(precision: str, variants: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    base = {"method": "bonsai", "precision": precision, "uniform": False}
    grid: list[dict[str, Any]] = []
    variants = variants or [
        {}, {"rounds": 10}, {"rounds": 2}, {"samples_per_round": 1024}, {"samples_per_round": 64},
        {"drop_fraction": 0.05}, {"drop_fraction": 0.2}, {"ridge": 0.1}, {"ridge": 10.0},
        {"prior_bias": 0.0}, {"prior_bias": 2.0}, {"scoring_sequences": 32}, {"scoring_sequences": 2},
    ]
    for sparsity in (0.2, 0.5):
        grid += [{**base, "sparsity": sparsity, "options": v} for v in variants]
    return grid


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'method':<9} {'spars':>5} {'unif':>5} {'prec':>5} {'comp':>4} {'options':<34} {'ppl':>8} {'x dense':>7} {'achieved':>8} {'scoring s':>9} {'fwd tokens':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in r.get("options", {}).items() if r["method"] == "bonsai")[:34]
        print(f"{r['method']:<9} {r['sparsity']:>5.2f} {str(r['uniform']):>5} {r['precision']:>5} "
              f"{r.get('compensate', 'auto'):>4} {opts:<34} "
              f"{r['ppl']:>8.3f} {r['ratio']:>7.3f} {r['achieved']:>8.4f} {r['scoring_s']:>9.1f} {r['forward_tokens']:>11,}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reduced", action="store_true", help="CPU-sized scoring budget")
    parser.add_argument("--sweep", action="store_true", help="bonsai option grid instead of the method table")
    parser.add_argument("--variants", type=json.loads, help="JSON list of bonsai option dicts for --sweep")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compensations", default="none,bias", help="compensate settings to compare")
    parser.add_argument("--widths", default="uniform,global", help="uniform, global or both")
    parser.add_argument("--sparsities", default="0.2,0.35,0.5")
    parser.add_argument("--methods", default="random,wanda-sp,flap,bonsai")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from pruning.methods import METHODS

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = budget(args.reduced)
    if args.sweep:
        configs = sweep_grid(args.precision, args.variants)
    else:
        wanted = set(args.methods.split(",")) & set(METHODS)
        widths = {"uniform": True, "global": False}
        wanted_widths = {widths[w] for w in args.widths.split(",")}
        configs = [c for c in method_grid([float(s) for s in args.sparsities.split(",")], args.precision,
                                          args.compensations.split(","))
                   if c["method"] in wanted and (c["uniform"] in wanted_widths or c["method"] == "wanda-sp")]
    rows = []
    for config in configs:
        rows.append(run_one(config, common, args.shared))
        r = rows[-1]
        print(f"  {r['method']} s={r['sparsity']} uniform={r['uniform']} comp={r.get('compensate')} {r.get('options')}: "
              f"ppl {r['ppl']:.3f} ({r['ratio']:.3f}x) in {r['wall_s']:.1f}s", flush=True)
    print_table(rows)
    slug = device.replace(" ", "-").lower()
    out = args.out or REPO / "bench" / "results" / f"quality{'-sweep' if args.sweep else ''}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "budget": common, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    if any(not math.isfinite(r["ppl"]) for r in rows):
        raise SystemExit("non-finite perplexity")


if __name__ == "__main__":
    main()
