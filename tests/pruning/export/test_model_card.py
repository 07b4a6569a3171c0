"""The model card beside every checkpoint: base model, license carried over, method, size, calibration
digest, quality before and after, and loading instructions that fit the checkpoint's layout."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pruning import prune
from pruning.export.formats import EXPORTERS
from pruning.export.model_card import CARD_NAME, FRONT_MATTER, base_model_id
from pruning.report import LayerWidths, PruneReport

BASE_CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# A tiny Llama\n"


@pytest.fixture(scope="module")
def licensed_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a model card of its own that names its license."""
    model = tmp_path_factory.mktemp("card") / "tiny-llama"
    shutil.copytree(tiny_llama, model)
    (model / CARD_NAME).write_text(BASE_CARD, encoding="utf-8")
    return model


def pruned(model: Path, data: Path, out: Path, uniform: bool) -> tuple[str, PruneReport]:
    report = prune(
        model=str(model),
        data=data,
        out_dir=out,
        sparsity=0.3,
        method="random",
        uniform=uniform,
        compensate="none",
        seq_len=32,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
    )
    return (out / CARD_NAME).read_text(encoding="utf-8"), report


def front_matter(card: str) -> dict[str, Any]:
    match = FRONT_MATTER.match(card)
    assert match is not None
    metadata: dict[str, Any] = yaml.safe_load(match.group(1))
    return metadata


@pytest.mark.parametrize("uniform", [True, False])
def test_every_checkpoint_carries_its_card(
    licensed_llama: Path, calibration_file: Path, tmp_path: Path, uniform: bool
) -> None:
    card, report = pruned(licensed_llama, calibration_file, tmp_path / "out", uniform)
    metadata = front_matter(card)
    assert metadata["base_model"] == "tiny-llama"
    assert metadata["license"] == "apache-2.0" and metadata["language"] == ["en"]
    assert {"pruned", "fwdprune", "random"} <= set(metadata["tags"])
    digest = hashlib.sha256(calibration_file.read_bytes()).hexdigest()
    assert (report.calibration_data.file, report.calibration_data.sha256) == ("calib.jsonl", digest)
    assert f"`calib.jsonl` (sha256 `{digest}`)" in card
    before, after = report.perplexity.before, report.perplexity.after
    assert f"| {before:.4g} | {after:.4g} | {after / before:.3f}× |" in card
    assert f"{report.params.total_after:,} parameters" in card
    assert ("trust_remote_code=True" in card) is not uniform
    assert "AutoModelForCausalLM.from_pretrained" in card
    # the card the checkpoint's folder holds is its own, not the base model's
    assert "# A tiny Llama" not in card
    assert (
        json.loads((tmp_path / "out" / "pruning_report.json").read_text())["calibration_data"]["sha256"]
        == digest
    )


def test_a_model_without_a_card_gets_the_other_license(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    card, _ = pruned(tiny_llama, calibration_file, tmp_path / "out", uniform=True)
    assert front_matter(card)["license"] == "other"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("/srv/models/pycoder-28m", "pycoder-28m"),
        ("/cache/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/abc123", "HuggingFaceTB/SmolLM2-135M"),
        ("org/name", "org/name"),
        ("./local/dir", "dir"),
    ],
)
def test_base_model_is_named_without_a_server_path(model: str, expected: str) -> None:
    assert base_model_id(model) == expected


def test_layout_follows_the_export() -> None:
    layer = LayerWidths(layer=0, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    narrower = layer.model_copy(update={"layer": 1, "intermediate_size": 32})
    hf, nemotron = EXPORTERS["hf"], EXPORTERS["nemotron-nas"]
    assert hf.card_layout(True, [layer, layer]) == "stock"
    assert hf.card_layout(False, [layer, narrower]) == "remote-code"
    # a uniform job whose layers still differ (a layer lost its MLP whole) needs the remote code
    assert hf.card_layout(True, [layer, narrower]) == "remote-code"
    assert EXPORTERS["gguf"].card_layout(True, [layer, layer]) == "stock"
    assert nemotron.card_layout(False, [layer]) == "nemotron-nas"
