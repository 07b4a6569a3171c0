"""On a real pretrained model: bonsai must beat random pruning at the same sparsity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pruning import prune

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PYCODER = SHARED / "models" / "pycoder-28m"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not PYCODER.is_dir(), reason=f"needs {PYCODER} (../shared beside the checkout)"),
]


def test_bonsai_beats_random_at_20_percent(tmp_path: Path) -> None:
    common = dict(model=str(PYCODER), data=SHARED / "data" / "webcode-calib.jsonl",
                  eval_data=SHARED / "data" / "webcode-dev.jsonl", sparsity=0.2, precision="fp32",
                  device="cpu", seq_len=128, num_samples=16, eval_samples=8)
    bonsai = prune(**common, out_dir=tmp_path / "bonsai",
                   options=dict(rounds=2, samples_per_round=32, scoring_sequences=2, masks_per_forward=16))
    random = prune(**common, out_dir=tmp_path / "random", method="random")
    assert math.isfinite(bonsai["perplexity"]["after"])
    assert abs(bonsai["sparsity"]["achieved"] - 0.2) <= bonsai["sparsity"]["max_unit_fraction"]
    assert bonsai["perplexity"]["after"] < random["perplexity"]["after"]
    assert bonsai["perplexity"]["after"] > bonsai["perplexity"]["before"]
