"""Several sizes from one job: where each size's checkpoint goes, the size/quality curve's table for the
command line, and two pictures of the choice (`curve.png`, `layers.png`).

Works from the sizes' typed entries alone (`pruning.report`, no torch); matplotlib is optional (the
`plots` extra): without it the pictures are skipped with a warning, never the job.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pruning import events
from pruning.events import EventSink
from pruning.report import SUMMARY_NAME, SizeEntry, SizesSummary

CURVE_NAME = "curve.png"
LAYERS_NAME = "layers.png"


def size_dir_name(sparsity: float) -> str:
    """The folder of one size under the job's output directory: `sparsity-0.35`."""
    return f"sparsity-{sparsity:g}"


def curve_table(summary: SizesSummary) -> str:
    """The size/quality curve as a table, one row per size."""
    figure = summary.quality_figure
    header = ("sparsity", "achieved", "parameters", f"{figure} before", f"{figure} after", "s", "folder")
    rows = [header]
    rows += [
        (
            f"{size.sparsity:g}",
            f"{size.achieved:.4f}",
            f"{size.params_after:,}",
            f"{size.change(figure).before:.4f}",
            f"{size.change(figure).after:.4f}",
            f"{size.seconds:.1f}",
            size.dir,
        )
        for size in summary.sizes
    ]
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(
        f"scoring (shared) {summary.scoring_s:.1f} s | total {summary.total_s:.1f} s"
        f" | {summary.forward_tokens:,} forward tokens"
        f" | summary: {Path(summary.out_dir) / SUMMARY_NAME}"
    )
    return "\n".join(lines)


def write_pictures(entries: list[SizeEntry], figure: str, out_dir: Path, emit: EventSink) -> list[Path]:
    """`curve.png` (quality against parameters kept, a point per size) and `layers.png` (kept KV groups
    and MLP channels per layer, a line per size) in `out_dir`; none, with a warning event, without
    matplotlib or when drawing fails (a picture is never worth the job)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a worker; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        message = "matplotlib is not installed: no curve.png or layers.png (pip install 'fwdprune[plots]')"
        emit(events.warning(message))
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # font cache and layout chatter
            return [_draw_curve(plt, entries, figure, out_dir), _draw_layers(plt, entries, out_dir)]
    except Exception as err:  # noqa: BLE001 - whatever broke, the checkpoints are written
        emit(events.warning(f"the pictures could not be drawn: {err}"))
        return []


def _draw_curve(plt: Any, entries: list[SizeEntry], figure: str, out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    params = [size.params_after for size in entries]
    after = [size.change(figure).after for size in entries]
    ax.plot(params, after, marker="o")
    for size, x, y in zip(entries, params, after, strict=True):
        ax.annotate(f"{size.sparsity:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax.axhline(entries[0].change(figure).before, linestyle="--", color="grey", label="dense")
    ax.set_xlabel("parameters kept")
    ax.set_ylabel(figure.replace("_", " "))
    ax.set_title("quality by size (labels: sparsity asked)")
    ax.legend()
    fig.tight_layout()
    path = out_dir / CURVE_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_layers(plt: Any, entries: list[SizeEntry], out_dir: Path) -> Path:
    fig, (kv, mlp) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    styles = ["-", "--", ":", "-."]  # sizes often keep the same count in a layer: the lines overlap
    for index, size in enumerate(entries):
        layers = [layer.layer for layer in size.layers]
        style = {"label": f"sparsity {size.sparsity:g}", "marker": ".", "linestyle": styles[index % 4]}
        kv.plot(layers, [layer.num_key_value_heads for layer in size.layers], **style)
        mlp.plot(layers, [layer.intermediate_size for layer in size.layers], **style)
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
