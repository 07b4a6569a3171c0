"""The split search judged with one-shot refits from shared dense Grams, then its finalists with the
job's own refit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pruning import prune

SMALL: dict[str, Any] = dict(
    seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu", sparsity=0.4
)
OPTIONS: dict[str, Any] = dict(rounds=3, samples_per_round=16, scoring_sequences=4, split_candidates=3)


@pytest.mark.parametrize("finalists", [1, 2])
def test_every_candidate_is_judged_once_cheaply_and_the_finalists_again(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, finalists: int
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        compensate="ls",
        options={**OPTIONS, "split_finalists": finalists},
        **SMALL,
    )
    candidates = report.method_details["split_search"]
    rankings = [c["ranking"] for c in candidates]
    assert rankings[:5] == ["rounds"] + ["importance"] * 3 + ["prior, layer-uniform"]
    first_best = min(candidates[:5], key=lambda c: c["one_shot_loss"])
    assert rankings[5:] == [f"refit-aware, {first_best['ranking']}"]
    assert all("one_shot_loss" in c for c in candidates)
    judged_again = [c for c in candidates if "held_out_loss" in c]
    if finalists == 1:  # the one-shot refit's pick stands
        assert judged_again == []
        chosen = min(candidates, key=lambda c: c["one_shot_loss"])
    else:  # the two best distinct ones by the one-shot refit, judged again with the job's
        assert len(judged_again) == 2
        by_one_shot = sorted(c["one_shot_loss"] for c in candidates)
        assert {c["one_shot_loss"] for c in judged_again} <= set(by_one_shot[:3])
        chosen = min(judged_again, key=lambda c: c["held_out_loss"])
    assert report.removed_fraction("attn") == pytest.approx(chosen["attention_fraction"])
    assert report.sparsity.achieved == pytest.approx(0.4, abs=report.sparsity.max_unit_fraction)
