"""Several sizes from one job: where each size's checkpoint goes, the size/quality curve (`summary.json`),
its table for the command line, and two pictures of the choice (`curve.png`, `layers.png`).

Works from the sizes' reports alone (no torch); matplotlib is optional (the `plots` extra): without it
the pictures are skipped with a warning, never the job.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUMMARY_NAME = "summary.json"
CURVE_NAME = "curve.png"
LAYERS_NAME = "layers.png"
QUALITY_FIGURES = ("perplexity", "embedding_cosine")  # causal LMs, encoders


def size_dir_name(sparsity: float) -> str:
    """The folder of one size under the job's output directory: `sparsity-0.35`."""
    return f"sparsity-{sparsity:g}"


def quality_figure(report: dict[str, Any]) -> str:
    """The report's quality figure: perplexity, or embedding cosine for encoders."""
    return next(name for name in QUALITY_FIGURES if name in report)


def size_entry(report: dict[str, Any], seconds: float, forward_tokens: int) -> dict[str, Any]:
    """One point of the curve from a size's report; `seconds` and `forward_tokens` are the work that size
    alone took (its selection, compensation, evaluation and export: the scoring is shared)."""
    figure = quality_figure(report)
    return {
        "sparsity": report["sparsity"]["target"],
        "achieved": report["sparsity"]["achieved"],
        "params_after": report["params"]["total_after"],
        "prunable_params_after": report["params"]["prunable_after"],
        figure: {"before": report[figure]["before"], "after": report[figure]["after"]},
        "seconds": round(seconds, 3),
        "forward_tokens": forward_tokens,
        "dir": Path(report["out_dir"]).name,
        "layers": report["layers"],
    }


def build_summary(
    entries: list[dict[str, Any]], reports: list[dict[str, Any]], scoring_s: float, total_s: float
) -> dict[str, Any]:
    """The job's summary: what the sizes share (model, method, params before, the scoring's seconds) and
    one entry per size, ascending."""
    first = reports[0]
    return {
        "model": first["model"],
        "method": first["method"],
        "out_dir": str(Path(first["out_dir"]).parent),
        "quality_figure": quality_figure(first),
        "params_before": first["params"]["total_before"],
        "scoring_s": round(scoring_s, 3),
        "total_s": round(total_s, 3),
        "forward_tokens": reports[-1]["forward_tokens"],  # the job's, counted through its last size
        "sizes": entries,
    }


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")


def curve_table(summary: dict[str, Any]) -> str:
    """The size/quality curve as a table, one row per size."""
    figure = summary["quality_figure"]
    header = ("sparsity", "achieved", "parameters", f"{figure} before", f"{figure} after", "s", "folder")
    rows = [header]
    rows += [
        (
            f"{size['sparsity']:g}",
            f"{size['achieved']:.4f}",
            f"{size['params_after']:,}",
            f"{size[figure]['before']:.4f}",
            f"{size[figure]['after']:.4f}",
            f"{size['seconds']:.1f}",
            size["dir"],
        )
        for size in summary["sizes"]
    ]
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(
        f"scoring (shared) {summary['scoring_s']:.1f} s | total {summary['total_s']:.1f} s"
        f" | {summary['forward_tokens']:,} forward tokens"
        f" | summary: {Path(summary['out_dir']) / SUMMARY_NAME}"
    )
    return "\n".join(lines)


def write_pictures(
    entries: list[dict[str, Any]], figure: str, out_dir: Path, emit: Callable[[dict[str, Any]], None]
) -> list[Path]:
    """`curve.png` (quality against parameters kept, a point per size) and `layers.png` (kept KV groups
    and MLP channels per layer, a line per size) in `out_dir`; none, with a warning event, without
    matplotlib or when drawing fails (a picture is never worth the job)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a worker; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        message = "matplotlib is not installed: no curve.png or layers.png (pip install 'fwdprune[plots]')"
        emit({"type": "warning", "message": message})
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # font cache and layout chatter
            return [_draw_curve(plt, entries, figure, out_dir), _draw_layers(plt, entries, out_dir)]
    except Exception as err:  # noqa: BLE001 - whatever broke, the checkpoints are written
        emit({"type": "warning", "message": f"the pictures could not be drawn: {err}"})
        return []


def _draw_curve(plt: Any, entries: list[dict[str, Any]], figure: str, out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    params = [size["params_after"] for size in entries]
    after = [size[figure]["after"] for size in entries]
    ax.plot(params, after, marker="o")
    for size, x, y in zip(entries, params, after, strict=True):
        ax.annotate(f"{size['sparsity']:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax.axhline(entries[0][figure]["before"], linestyle="--", color="grey", label="dense")
    ax.set_xlabel("parameters kept")
    ax.set_ylabel(figure.replace("_", " "))
    ax.set_title("quality by size (labels: sparsity asked)")
    ax.legend()
    fig.tight_layout()
    path = out_dir / CURVE_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_layers(plt: Any, entries: list[dict[str, Any]], out_dir: Path) -> Path:
    fig, (kv, mlp) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    styles = ["-", "--", ":", "-."]  # sizes often keep the same count in a layer: the lines overlap
    for index, size in enumerate(entries):
        layers = [layer["layer"] for layer in size["layers"]]
        style = {"label": f"sparsity {size['sparsity']:g}", "marker": ".", "linestyle": styles[index % 4]}
        kv.plot(layers, [layer["num_key_value_heads"] for layer in size["layers"]], **style)
        mlp.plot(layers, [layer["intermediate_size"] for layer in size["layers"]], **style)
    kv.yaxis.get_major_locator().set_params(integer=True)
    kv.set_ylabel("KV groups (heads) kept")
    mlp.set_ylabel("MLP channels kept")
    mlp.set_xlabel("layer")
    kv.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / LAYERS_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
