"""Adding a model family or an export format takes what docs/contributing.md's checklist names and nothing
else: here a family and a format are defined inside the test, registered with the calls the checklist
gives, and run end to end through `prune`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pruning import prune
from pruning.export.exporter import EXPORTERS, ExportJob, WidthRule, register_exporter
from pruning.export.formats.hf import HfExporter
from pruning.families import FAMILIES, Family, register_family
from pruning.report import PruneReport
from pruning.spec import PruneSettings
from tests.tiny import make_tiny_causal_lm

REPO = Path(__file__).resolve().parents[2]
CHECKLIST = REPO / "docs" / "contributing.md"
MODEL_TYPE = "tinyfam"
FORMAT = "hf+widths"


class TinyFamConfig(LlamaConfig):
    """A family transformers knows only through the registration below: Llama's layers, its own name."""

    model_type = MODEL_TYPE


class TinyFamForCausalLM(LlamaForCausalLM):
    config_class = TinyFamConfig


@pytest.fixture
def new_family(tmp_path: Path) -> Iterator[Path]:
    """A checkpoint of a model_type fwdprune has never heard of, read with Llama's adapter."""
    AutoConfig.register(MODEL_TYPE, TinyFamConfig, exist_ok=True)
    AutoModelForCausalLM.register(TinyFamConfig, TinyFamForCausalLM, exist_ok=True)
    model = make_tiny_causal_lm(tmp_path / MODEL_TYPE, "llama")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type=MODEL_TYPE, architectures=["TinyFamForCausalLM"])
    (model / "config.json").write_text(json.dumps(config))
    register_family(Family(MODEL_TYPE, adapter="llama", pruned_class="FwdPrunedLlamaForCausalLM"))
    try:
        yield model
    finally:
        del FAMILIES[MODEL_TYPE]


@pytest.fixture
def new_format() -> Iterator[str]:
    """The hf checkpoint with `widths.json` beside it, at uniform widths only."""

    @register_exporter
    class WidthsBeside(HfExporter):
        name = FORMAT
        description = "the hf checkpoint and widths.json beside it (uniform widths)"
        card_tags = ("widths",)

        def refuse_settings(self, settings: PruneSettings) -> None:
            if not settings.uniform:
                raise ValueError(f"export_format {FORMAT} writes uniform widths only; set uniform")

        def width_rule(self, model_type: str) -> WidthRule:
            return WidthRule(uniform=True)

        def write(self, job: ExportJob) -> None:
            super().write(job)
            shapes = job.space.kept_shapes(job.keep)
            widths = [[shape.num_heads, shape.num_kv_heads, shape.intermediate] for shape in shapes]
            (job.out_dir / "widths.json").write_text(json.dumps(widths))

        def card_sections(self, report: PruneReport) -> list[str]:
            return ["## Widths", "", "`widths.json` holds each layer's heads, KV heads and MLP width.", ""]

    try:
        yield WidthsBeside.name
    finally:
        del EXPORTERS[FORMAT]


def test_a_new_family_and_a_new_format_prune_end_to_end(
    new_family: Path, new_format: str, calibration_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="uniform widths only"):
        PruneSettings(sparsity=0.3, export_format=new_format)
    out = tmp_path / "out"
    report = prune(
        model=str(new_family),
        data=calibration_file,
        out_dir=out,
        sparsity=0.3,
        method="random",
        uniform=True,
        export_format=new_format,
        seq_len=32,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
    )
    layers = [[la.num_attention_heads, la.num_key_value_heads, la.intermediate_size] for la in report.layers]
    assert json.loads((out / "widths.json").read_text()) == layers
    assert json.loads((out / "config.json").read_text())["model_type"] == MODEL_TYPE
    card = (out / "README.md").read_text()
    assert "- widths" in card and "## Widths" in card and "- Layout: stock" in card
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert isinstance(pruned, TinyFamForCausalLM)
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randint(1, 320, (1, 12))).logits).all()


def checklist(title: str) -> str:
    """The section of docs/contributing.md headed `title`, up to the next heading of its level."""
    text = CHECKLIST.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match is not None, f"docs/contributing.md has no section '## {title}'"
    return match.group(1)


@pytest.mark.parametrize(
    ("title", "calls"),
    [
        ("Add a model family", ["register_family", "register_adapter"]),
        ("Add an export format", ["register_exporter"]),
        ("Add a pruning method", ["register_method", "register_options"]),
    ],
)
def test_the_checklist_names_the_registration_and_files_that_exist(title: str, calls: list[str]) -> None:
    """What this test registers is what the checklist says to write; every file it names exists (a
    path with `<name>` in it is a file the contributor creates, its folder must exist)."""
    section = checklist(title)
    for call in calls:
        assert re.search(rf"`@?{call}\b", section), call
    for path in re.findall(r"`((?:pruning|tests|docs|service)/[^`\s]+)`", section):
        where = REPO / path.split("<", 1)[0]
        assert where.exists() or where.parent.exists(), path
