"""On a real pretrained model (pycoder-28m in ../shared): bonsai must beat random at the same sparsity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PYCODER = SHARED / "models" / "pycoder-28m"
CALIB = SHARED / "data" / "webcode-calib.jsonl"
DEV = SHARED / "data" / "webcode-dev.jsonl"

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def shared_files() -> None:
    missing = [str(p) for p in (PYCODER / "config.json", CALIB, DEV) if not p.is_file()]
    if missing:
        pytest.skip(f"needs ../shared beside the checkout; missing: {', '.join(missing)}")


def test_bonsai_beats_random_at_20_percent(shared_files: None, tmp_path: Path) -> None:
    from pruning import prune

    common: dict[str, Any] = dict(
        model=str(PYCODER),
        data=CALIB,
        eval_data=DEV,
        sparsity=0.2,
        precision="fp32",
        device="cpu",
        seq_len=128,
        num_samples=16,
        eval_samples=8,
    )
    bonsai = prune(
        **common,
        out_dir=tmp_path / "bonsai",
        options=dict(rounds=2, samples_per_round=32, scoring_sequences=2, masks_per_forward=16),
    )
    random = prune(**common, out_dir=tmp_path / "random", method="random")
    for report in (bonsai, random):
        ppl = report.perplexity
        assert math.isfinite(ppl.before) and math.isfinite(ppl.after)
        assert ppl.eval_source == "webcode-dev.jsonl" and ppl.eval_tokens == 8 * 128
        assert abs(report.sparsity.achieved - 0.2) <= report.sparsity.max_unit_fraction
    assert bonsai.perplexity.before == random.perplexity.before
    assert bonsai.perplexity.after > bonsai.perplexity.before
    assert bonsai.perplexity.after < random.perplexity.after
