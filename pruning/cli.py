"""`fwdprune prune`: the engine from the command line, with progress bars and a summary table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pruning.cli_options import add_settings_options, settings_given
from pruning.errors import EXIT_USER_ERROR, FwdpruneError
from pruning.events import Event, ProgressEvent
from pruning.export.sizes import curve_table
from pruning.report import REPORT_NAME, PruneReport, SizesSummary
from pruning.spec import PruneSpec


def add_prune_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("prune", help="prune a model locally (no server)")
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id in the local cache")
    parser.add_argument("--data", required=True, type=Path, help="calibration .jsonl (text field) or .txt")
    parser.add_argument(
        "--eval-data",
        type=Path,
        help="held-out text for perplexity (default: the sequences of --data after the calibration ones)",
    )
    parser.add_argument(
        "--recovery-data", type=Path, help="text the recovery trains on (default: the calibration file's)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_prune, settings_source=add_settings_options(parser))


def spec_from_args(args: argparse.Namespace) -> PruneSpec:
    """The request a `prune` command line makes (raises ValidationError naming a bad setting)."""
    return PruneSpec(
        model=args.model,
        data=args.data,
        eval_data=args.eval_data,
        recovery_data=args.recovery_data,
        out_dir=args.out,
        device=args.device,
        **settings_given(args.settings_source, args),
    )


def run_prune(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except ValidationError as err:
        print(f"error: invalid settings\n{err}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        from pruning.engine.api import prune  # torch is imported only when pruning actually runs
    except ImportError as err:
        print(
            f"error: the pruning engine is not installed ({err.name}): pip install 'fwdprune[engine]'",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR

    progress = ProgressPrinter(enabled=not args.quiet)
    try:
        report = prune(spec, on_event=progress)
    except FwdpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        progress.close()
    if report is None:  # a rank other than 0 under torchrun: rank 0 prints the summary
        return 0
    # several sizes return their summary: the curve as a table (each size's report is in its folder)
    print(curve_table(report) if isinstance(report, SizesSummary) else summary_table(report))
    return 0


class ProgressPrinter:
    """Turns engine events into one progress bar for the whole job (stage, round, ETA) and a line for the
    plan and each warning."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if event["type"] == "stage":
            if event["stage"] == "done":
                self.close()
            self._write(f"[fwdprune] {event['stage']}")
        elif event["type"] == "plan" and "budget" in event:
            self._write(
                f"[fwdprune] budget {event['budget']}: expected to take {_duration(event['expected_s'])}"
            )
        elif event["type"] == "progress" and event["stage"] not in (None, "done"):
            self._progress(event)
        elif event["type"] == "warning":
            self._write(f"[fwdprune] warning: {event['message']}")

    def _progress(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=1000,
                unit="‰",
                file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{postfix}",
            )
        detail = ""
        if "round" in event and "rounds" in event:
            detail = f" {event['round']}/{event['rounds']}"
        elif "candidate" in event and "candidates" in event:
            detail = f" {event['candidate']}/{event['candidates']}"
        elif "step" in event and "steps" in event:
            detail = f" {event['step']}/{event['steps']}"
        self.bar.set_description_str(f"{event['stage']}{detail}", refresh=False)
        self.bar.set_postfix_str(_duration(event["eta_s"]), refresh=False)
        self.bar.update(int(event["fraction"] * 1000) - self.bar.n)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def summary_table(report: PruneReport) -> str:
    params, quality, loss = report.params, report.quality, report.calibration_loss
    rows = [
        ("", "before", "after"),
        ("parameters (total)", f"{params.total_before:,}", f"{params.total_after:,}"),
        ("parameters (prunable)", f"{params.prunable_before:,}", f"{params.prunable_after:,}"),
        (f"{report.quality_figure} ({quality.eval_source})", f"{quality.before:.4f}", f"{quality.after:.4f}"),
        (f"calibration loss ({loss.objective})", f"{loss.before:.4f}", f"{loss.after:.4f}"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    lines.append(
        f"sparsity: target {report.sparsity.target:.3f}, achieved {report.sparsity.achieved:.4f}"
        f" | method {report.method} | {report.precision} on {report.device}"
        f" | {report.total_s:.1f} s | {report.forward_tokens:,} forward tokens"
    )
    lines.append(
        "kept per layer (kv groups / heads / MLP channels): "
        + ", ".join(
            f"{layer.num_key_value_heads}/{layer.num_attention_heads}/{layer.intermediate_size}"
            for layer in report.layers
        )
    )
    lines.append(f"report: {Path(report.out_dir) / REPORT_NAME}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruning")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_prune_command(subparsers)
    args = parser.parse_args(argv)
    return int(args.handler(args))
