"""Host memory of the export: the anonymous memory (heap) slicing a checkpoint adds, against its shard size.

    python -m bench.export_memory                       # a synthetic bf16 Llama, 400 MB in ~100 MB shards
    python -m bench.export_memory --model DIR           # any supported checkpoint, e.g. bench.gpu's 7B shape

Half of every layer's units are removed at random (which units does not change the memory). RSS also
counts the pages of the memory-mapped shards, which the kernel can drop at will, so the figure that says
whether the export holds one shard or the whole model is the growth of anonymous memory (RssAnon, Linux).
Prints a table and writes bench/results/export-memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def build_synthetic(out_dir: Path, hidden: int, intermediate: int, layers: int, shard: str) -> Path:
    """A random bf16 Llama with GQA saved as sharded safetensors (no tokenizer: the export needs none)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).bfloat16()
    model.save_pretrained(out_dir, max_shard_size=shard)
    return out_dir


def measure(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pruning.checkpoint_checks import read_model_type
    from pruning.export.hf import export_pruned
    from pruning.measure.monitor import StageMonitor
    from pruning.model.adapters import adapter_for
    from pruning.model.units import build_unit_space

    adapter = adapter_for(read_model_type(model_dir))
    with torch.device("meta"):  # the unit space needs the modules' shapes, not their weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    space = build_unit_space(model, adapter, None)
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(0)) > 0.5
    monitor = StageMonitor(torch.device("cpu"))
    with monitor.stage("export"):
        export_pruned(model_dir, out_dir, adapter, space, keep, False)
    summary = monitor.summary()
    shards = sorted(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    growth = summary["host_anon_growth_bytes"]["export"]
    return {
        "model": str(model_dir),
        "shards": len(shards),
        "checkpoint_bytes": sum(shards),
        "largest_shard_bytes": shards[-1],
        "export_s": summary["stage_s"]["export"],
        "anon_growth_bytes": growth,
        "anon_growth_per_largest_shard": round(growth / shards[-1], 3),
        "peak_rss_bytes": summary["peak_host_rss_bytes"]["export"],
        "pruned_bytes": sum(p.stat().st_size for p in out_dir.glob("*.safetensors")),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="checkpoint to export (default: build a synthetic one)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shard", default="100MB")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the child that builds the model
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export-memory.json")
    args = parser.parse_args()
    if args.build_only:
        build_synthetic(args.build_only, args.hidden, args.intermediate, args.layers, args.shard)
        return
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        model_dir = args.model
        if model_dir is None:  # built in a child: memory freed here would hide the export's growth
            model_dir = Path(work) / "model"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.export_memory",
                    "--build-only",
                    str(model_dir),
                    "--hidden",
                    str(args.hidden),
                    "--intermediate",
                    str(args.intermediate),
                    "--layers",
                    str(args.layers),
                    "--shard",
                    args.shard,
                ],
                check=True,
                cwd=REPO,
            )
        build_s = time.perf_counter() - started
        row = {**measure(model_dir, Path(work) / "pruned"), "build_s": round(build_s, 1)}
    mb = 2**20
    print(
        f"{'shards':>6} {'checkpoint MB':>13} {'largest shard MB':>16} {'heap growth MB':>14} {'/ shard':>7} "
        f"{'peak RSS MB':>11} {'export s':>8}"
    )
    print(
        f"{row['shards']:>6} {row['checkpoint_bytes'] / mb:>13.0f} {row['largest_shard_bytes'] / mb:>16.0f} "
        f"{row['anon_growth_bytes'] / mb:>14.0f} {row['anon_growth_per_largest_shard']:>7.2f} "
        f"{row['peak_rss_bytes'] / mb:>11.0f} {row['export_s']:>8.1f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
