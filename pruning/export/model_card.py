"""The model card: `README.md` beside every pruned checkpoint, for people and for the Hugging Face Hub.

It says what the checkpoint is (the base model, its license carried over, the method and the size), what
it was calibrated on (the file's name and sha256, so the card names the exact data), how good it is
(the report's quality figures before and after), and how to load it, which its export format says
(`Exporter.card_layout`, `how_to_load`, `card_sections`): a stock config, per-layer widths through
remote code, or the Nemotron-NAS layout that serving engines load natively. Built from the report alone
(a pure function of it) and the base model's own card.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pruning.export.formats import Exporter, exporter_for
from pruning.report import PruneReport

CARD_NAME = "README.md"
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
HUB_CACHE_DIR = re.compile(r"models--([^/]+?)--([^/]+)")  # huggingface_hub's cache: models--org--name
QUALITY_NAMES = {
    "perplexity": "perplexity (lower is better)",
    "embedding_cosine": "embedding cosine to dense",
}


def base_card_metadata(model_dir: Path) -> dict[str, Any]:
    """The base model card's YAML front matter (license, language, ...); empty without one."""
    card = model_dir / CARD_NAME
    if not card.is_file():
        return {}
    match = FRONT_MATTER.match(card.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        return {}
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def base_model_id(model: str) -> str:
    """The base model's name for the card: its Hub id where the job named one or loaded it from the Hub's
    cache, else its directory's name (a server path is never shown)."""
    cached = HUB_CACHE_DIR.search(model)
    if cached is not None:
        return f"{cached.group(1)}/{cached.group(2)}"
    if not model.startswith(("/", ".", "~")) and model.count("/") == 1:
        return model
    return Path(model).name


def layout(report: PruneReport) -> str:
    """How the checkpoint states its widths, in its export format's words (`stock`, `remote-code`,
    `nemotron-nas`)."""
    return _exporter(report).card_layout(report.uniform, report.layers)


def _exporter(report: PruneReport) -> Exporter:
    return exporter_for(report.settings.get("export_format", "hf"))


def quality_table(report: PruneReport) -> str:
    rows = ["| figure | dense | pruned | ratio |", "| --- | --- | --- | --- |"]
    figure = report.quality
    label = QUALITY_NAMES[report.quality_figure]
    rows.append(
        f"| {label} | {figure.before:.4g} | {figure.after:.4g} | {figure.after / figure.before:.3f}× |"
    )
    # "held-out": the calibration file's tail, kept out of calibration; otherwise the eval file's name
    source = figure.eval_source
    text = "calibration text held out from the fit" if source == "held-out" else f"`{source}`"
    return "\n".join(rows) + f"\n\nMeasured on {figure.eval_tokens:,} tokens of {text}."


def license_line(base: dict[str, Any]) -> str:
    if "license" in base:
        return f"{base['license']}, carried over from the base model's card"
    return "`other`: the base model's card states none; check the base model's terms"


def model_card(report: PruneReport, base: dict[str, Any], auto_class: str) -> str:
    """The card's Markdown, with Hub metadata: the report of the job, and the base card's metadata."""
    base_name = base_model_id(report.model)
    params, sparsity, calibration = report.params, report.sparsity, report.calibration_data
    metadata: dict[str, Any] = {
        "base_model": base_name,
        "license": base.get("license", "other"),
        "library_name": "transformers",
        "tags": ["pruned", "structured-pruning", "fwdprune", report.method],
    }
    metadata["tags"] += _exporter(report).card_tags
    for key in ("language", "license_name", "license_link", "pipeline_tag"):
        if key in base:
            metadata[key] = base[key]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {base_name}, {sparsity.achieved:.1%} of its prunable parameters removed",
        "",
        f"Structured pruning of `{base_name}` with fwdprune: whole attention KV groups (with their query "
        "heads) and MLP channels removed, chosen with forward passes only.",
        "",
        f"- Method: `{report.method}`, budget `{report.budget.name}`, compensation "
        f"`{report.compensation}`, scored at `{report.precision}`",
        f"- Size: {params.total_after:,} parameters ({params.total_before:,} before); target sparsity "
        f"{sparsity.target}, achieved {sparsity.achieved:.4f} of the prunable parameters",
        f"- Layout: {layout(report)}",
        f"- Calibration data: `{calibration.file}` (sha256 `{calibration.sha256}`), "
        f"{report.settings['num_samples']} sequences of {report.settings['seq_len']} tokens",
        f"- License: {license_line(base)}",
        "",
        "## Quality",
        "",
        quality_table(report),
        "",
        "## How to load",
        "",
        _exporter(report).how_to_load(layout(report), auto_class),
        *_exporter(report).card_sections(report),
        "Every setting, the kept units per layer and each unit's importance are in `pruning_report.json`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(report: PruneReport, out_dir: Path, model_dir: Path, auto_class: str) -> None:
    base = base_card_metadata(model_dir)
    (Path(out_dir) / CARD_NAME).write_text(model_card(report, base, auto_class), encoding="utf-8")
