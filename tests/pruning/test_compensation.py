"""Least-squares compensation: what the report measures (hooks on the masked model) is what is exported."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pruning import load_pruned, prune
from pruning.data import load_calibration

SMALL = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_ls_refit_exported_exactly(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path,
                                   family: str, uniform: bool) -> None:
    report = prune(model=str(tiny_models[family]), data=calibration_file, sparsity=0.4, out_dir=tmp_path / "o",
                   method="wanda-sp" if uniform else "flap", uniform=uniform, compensate="ls", **SMALL)
    assert report["compensation"] == "ls"
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report["perplexity"]["after"], rel=1e-5)
    assert "compensate" in report["stage_s"]


def test_auto_compensation_needs_enough_tokens_per_channel(tiny_models: dict[str, Path]) -> None:
    from pruning.adapters import adapter_for
    from pruning.api import LS_TOKENS_PER_CHANNEL, choose_compensation
    from pruning.loading import load_model
    from pruning.units import build_unit_space

    loaded = load_model(tiny_models["llama"], "fp32", torch.device("cpu"))
    space = build_unit_space(loaded.model, adapter_for("llama"), None)
    widest = 96  # the tiny model's intermediate size, wider than its 64 attention channels
    enough = LS_TOKENS_PER_CHANNEL * widest
    assert choose_compensation("auto", "none", space, enough) == "ls"
    assert choose_compensation("auto", "none", space, enough - 1) == "none"
    assert choose_compensation("auto", "bias", space, enough - 1) == "bias"
    assert choose_compensation("none", "bias", space, 10 * enough) == "none"
