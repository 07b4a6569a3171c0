"""bonsai's lifecycle: rounds, and how the budget is split between attention and MLP units."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import removed_fraction
from pruning import prune

SMALL = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu", sparsity=0.4)
OPTIONS = dict(rounds=3, samples_per_round=16, scoring_sequences=4)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_proportional_split_takes_the_same_fraction_of_each_kind(tiny_llama: Path, calibration_file: Path,
                                                                  tmp_path: Path, uniform: bool) -> None:
    report = prune(model=str(tiny_llama), data=calibration_file, out_dir=tmp_path / "o", uniform=uniform,
                   options={**OPTIONS, "kind_split": "proportional"}, **SMALL)
    attention_unit = max(u["params"] for u in report["units"] if u["kind"] == "attn") / sum(
        u["params"] for u in report["units"] if u["kind"] == "attn")
    assert len(report["method_details"]["rounds"]) == 3
    assert report["sparsity"]["achieved"] == pytest.approx(0.4, abs=report["sparsity"]["max_unit_fraction"])
    # KV groups are large units: attention lands within one of them of the target, MLP makes up the rest
    assert removed_fraction(report["units"], "attn") == pytest.approx(0.4, abs=attention_unit)
    assert removed_fraction(report["units"], "mlp") == pytest.approx(0.4, abs=attention_unit)


def test_split_search_keeps_the_split_with_the_lowest_held_out_loss(tiny_llama: Path, calibration_file: Path,
                                                                    tmp_path: Path) -> None:
    report = prune(model=str(tiny_llama), data=calibration_file, out_dir=tmp_path / "o", compensate="ls",
                   options={**OPTIONS, "kind_split": "search", "split_candidates": 3}, **SMALL)
    candidates = report["method_details"]["split_search"]
    # the rounds' own split, attention fractions 0 .. highest, then the activation prior's pick
    assert [c["ranking"] for c in candidates] == ["rounds"] + ["importance"] * 3 + ["prior, layer-uniform"]
    assert candidates[1]["attention_fraction"] == 0.0
    assert candidates[3]["attention_fraction"] > candidates[2]["attention_fraction"] > 0.0
    losses = [c["held_out_loss"] for c in candidates]
    assert len(set(losses)) > 1  # the splits really differ
    best = candidates[losses.index(min(losses))]
    assert removed_fraction(report["units"], "attn") == pytest.approx(best["attention_fraction"])
    assert report["sparsity"]["achieved"] == pytest.approx(0.4, abs=report["sparsity"]["max_unit_fraction"])
    assert report["compensation"] == "ls"
    assert report["method_details"]["split_search_s"] > 0


def test_split_search_with_uniform_widths_keeps_every_layer_alike(tiny_llama: Path, calibration_file: Path,
                                                                   tmp_path: Path) -> None:
    report = prune(model=str(tiny_llama), data=calibration_file, out_dir=tmp_path / "o", compensate="ls",
                   uniform=True, options={**OPTIONS, "kind_split": "search", "split_candidates": 3}, **SMALL)
    assert len({(layer["num_key_value_heads"], layer["intermediate_size"]) for layer in report["layers"]}) == 1
    candidates = report["method_details"]["split_search"]
    best = min(candidates, key=lambda c: c["held_out_loss"])
    assert removed_fraction(report["units"], "attn") == pytest.approx(best["attention_fraction"])
    assert len(candidates) == 5
