"""`fwdprune prune`: the engine from the command line, with progress bars and a summary table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pruning.spec import METHOD_OPTIONS, PruneSpec


def add_prune_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("prune", help="prune a model locally (no server)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id in the local cache")
    parser.add_argument("--data", required=True, type=Path, help="calibration .jsonl (text field) or .txt")
    parser.add_argument("--sparsity", required=True, type=float, help="fraction of prunable weights to remove")
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    parser.add_argument("--method", default="bonsai", choices=sorted(METHOD_OPTIONS))
    parser.add_argument("--precision", default="auto", choices=["auto", "int8", "bf16", "fp16", "fp32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--uniform", action="store_true", help="equal widths in every layer (stock config)")
    parser.add_argument("--eval-data", type=Path, help="held-out text for perplexity")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--num-samples", type=int, default=64, help="calibration sequences")
    parser.add_argument("--eval-samples", type=int, default=16, help="held-out sequences")
    parser.add_argument("--mlp-block", type=int, help="MLP channels per unit (default by model size)")
    parser.add_argument("--objective", choices=["lm", "distill"],
                        help="lm: next-token loss (causal LMs); distill: distance to the dense model")
    parser.add_argument("--compensate", default="auto", choices=["auto", "none", "bias", "ls"],
                        help="bias: removed channels' mean output into the output bias (llama, qwen3, bert); "
                             "ls: least-squares refit of the output projections on the kept channels; "
                             "auto: ls when there are >= 8 calibration tokens per channel, else the method's own")
    parser.add_argument("--compensation-ridge", type=float, default=0.1,
                        help="ls: pull toward the original weights (relative to mean activation energy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. -o rounds=8 -o samples_per_round=512")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_prune)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run_prune(args: argparse.Namespace) -> int:
    try:
        spec = PruneSpec(
            model=args.model, data=args.data, sparsity=args.sparsity, out_dir=args.out, method=args.method,
            precision=args.precision, device=args.device, uniform=args.uniform, eval_data=args.eval_data,
            seq_len=args.seq_len, num_samples=args.num_samples, eval_samples=args.eval_samples,
            mlp_block=args.mlp_block, objective=args.objective, compensate=args.compensate,
            compensation_ridge=args.compensation_ridge, seed=args.seed,
            options=_parse_options(args.option),
        )
    except ValidationError as err:
        print(f"error: invalid settings\n{err}", file=sys.stderr)
        return 2
    from pruning.api import prune  # torch is imported only when pruning actually runs
    from pruning.errors import DataError, ModelNotFoundError, UnsupportedModelError, UsageError

    progress = ProgressPrinter(enabled=not args.quiet)
    try:
        report = prune(spec, on_event=progress)
    except (DataError, ModelNotFoundError, UnsupportedModelError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    print(summary_table(report))
    return 0


class ProgressPrinter:
    """Turns engine events into a stage line and a tqdm bar for the scoring rounds."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event["type"] == "stage":
            self.close()
            print(f"[fwdprune] {event['stage']}", file=sys.stderr)
        elif event["type"] == "progress":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=1000, desc="scoring", unit="‰", file=sys.stderr)
            self.bar.set_postfix_str(f"round {event['round']}/{event['rounds']}")
            self.bar.update(int(event["fraction"] * 1000) - self.bar.n)
        elif event["type"] == "warning":
            print(f"[fwdprune] warning: {event['message']}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_table(report: dict[str, Any]) -> str:
    params = report["params"]
    quality = [(name, report[name]) for name in ("perplexity", "embedding_cosine") if name in report]
    rows = [
        ("", "before", "after"),
        ("parameters (total)", f"{params['total_before']:,}", f"{params['total_after']:,}"),
        ("parameters (prunable)", f"{params['prunable_before']:,}", f"{params['prunable_after']:,}"),
        *[(f"{name} ({q['eval_source']})", f"{q['before']:.4f}", f"{q['after']:.4f}") for name, q in quality],
        (f"calibration loss ({report['calibration_loss']['objective']})", f"{report['calibration_loss']['before']:.4f}",
         f"{report['calibration_loss']['after']:.4f}"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    lines.append(f"sparsity: target {report['sparsity']['target']:.3f}, achieved {report['sparsity']['achieved']:.4f}"
                 f" | method {report['method']} | {report['precision']} on {report['device']}"
                 f" | {report['total_s']:.1f} s | {report['forward_tokens']:,} forward tokens")
    lines.append("kept per layer (kv groups / heads / MLP channels): " + ", ".join(
        f"{layer['num_key_value_heads']}/{layer['num_attention_heads']}/{layer['intermediate_size']}"
        for layer in report["layers"]))
    lines.append(f"report: {Path(report['out_dir']) / 'pruning_report.json'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruning")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_prune_command(subparsers)
    args = parser.parse_args(argv)
    return int(args.handler(args))
