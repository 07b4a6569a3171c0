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
