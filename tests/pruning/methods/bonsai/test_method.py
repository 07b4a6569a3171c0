"""bonsai's lifecycle: rounds, and how the budget is split between attention and MLP units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pruning import prune
from pruning.methods.bonsai.method import Bonsai
from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.bonsai.rounds import sub_models_per_round
from pruning.methods.bonsai.split_search import (
    attention_fractions,
    held_out_split,
    removed_attention_fraction,
)
from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitGroup, UnitSpace
from pruning.spec import PruneSpec

SMALL: dict[str, Any] = dict(
    seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu", sparsity=0.4
)
OPTIONS: dict[str, Any] = dict(rounds=3, samples_per_round=16, scoring_sequences=4)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_proportional_split_takes_the_same_fraction_of_each_kind(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, uniform: bool
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        uniform=uniform,
        options={**OPTIONS, "kind_split": "proportional"},
        **SMALL,
    )
    attention_unit = max(u.params for u in report.units if u.kind == "attn") / sum(
        u.params for u in report.units if u.kind == "attn"
    )
    assert len(report.method_details["rounds"]) == 3
    assert report.sparsity.achieved == pytest.approx(0.4, abs=report.sparsity.max_unit_fraction)
    # KV groups are large units: attention lands within one of them of the target, MLP makes up the rest
    assert report.removed_fraction("attn") == pytest.approx(0.4, abs=attention_unit)
    assert report.removed_fraction("mlp") == pytest.approx(0.4, abs=attention_unit)


def test_split_search_keeps_the_split_with_the_lowest_held_out_loss(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        compensate="ls",
        options={**OPTIONS, "kind_split": "search", "split_candidates": 3},
        **SMALL,
    )
    candidates = report.method_details["split_search"]
    # the rounds' own split, attention fractions 0 .. highest, the activation prior's pick, then (ls
    # follows) the best of those with the same units per module chosen for the refit
    rankings = [c["ranking"] for c in candidates]
    assert rankings[:5] == ["rounds"] + ["importance"] * 3 + ["prior, layer-uniform"]
    first_best = min(candidates[:5], key=lambda c: c["held_out_loss"])
    assert rankings[5:] == [f"refit-aware, {first_best['ranking']}"]
    assert candidates[5]["attention_fraction"] == first_best["attention_fraction"]
    assert candidates[1]["attention_fraction"] == 0.0
    assert candidates[3]["attention_fraction"] > candidates[2]["attention_fraction"] > 0.0
    losses = [c["held_out_loss"] for c in candidates]
    assert len(set(losses)) > 1  # the splits really differ
    best = candidates[losses.index(min(losses))]
    assert report.removed_fraction("attn") == pytest.approx(best["attention_fraction"])
    assert report.sparsity.achieved == pytest.approx(0.4, abs=report.sparsity.max_unit_fraction)
    assert report.compensation == "ls"
    assert report.method_details["split_search_s"] > 0


def test_split_search_with_uniform_widths_keeps_every_layer_alike(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        compensate="ls",
        uniform=True,
        options={**OPTIONS, "kind_split": "search", "split_candidates": 3},
        **SMALL,
    )
    assert len({(layer.num_key_value_heads, layer.intermediate_size) for layer in report.layers}) == 1
    candidates = report.method_details["split_search"]
    best = min(candidates, key=lambda c: c["held_out_loss"])
    assert report.removed_fraction("attn") == pytest.approx(best["attention_fraction"])
    assert len(candidates) == 6


@pytest.mark.parametrize(("compensate", "refit_aware"), [("none", True), ("ls", False)])
def test_split_search_has_no_refit_aware_candidate_without_a_refit_or_when_off(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, compensate: str, refit_aware: bool
) -> None:
    options = {**OPTIONS, "kind_split": "search", "split_candidates": 3, "refit_aware": refit_aware}
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        compensate=compensate,
        options=options,
        **SMALL,
    )
    rankings = [c["ranking"] for c in report.method_details["split_search"]]
    assert rankings == ["rounds"] + ["importance"] * 3 + ["prior, layer-uniform"]


def two_kind_space() -> UnitSpace:
    """One layer: 2 attention units of 100 weights each, 4 MLP units of 50 (600 weights in all)."""

    def group(kind: UnitKind, params: list[float]) -> UnitGroup:
        count = len(params)
        return UnitGroup(0, kind, nn.Linear(count, 1), torch.arange(count), torch.tensor(params))

    return UnitSpace(
        [group(UnitKind.ATTN, [100.0, 100.0]), group(UnitKind.MLP, [50.0] * 4)],
        num_layers=1,
        head_dim=1,
        group_size=[1],
        mlp_block=1,
    )


def test_held_out_split_holds_out_the_last_quarter() -> None:
    calibration = torch.arange(8).unsqueeze(1)  # [8, 1]: sequence i holds token i
    fit, held_out = held_out_split(calibration)
    assert fit.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert held_out.flatten().tolist() == [6, 7]


def test_held_out_split_fits_on_the_first_sequences_asked_for_and_holds_out_the_same_quarter() -> None:
    calibration = torch.arange(8).unsqueeze(1)
    fit, held_out = held_out_split(calibration, fit_sequences=2)
    assert fit.flatten().tolist() == [0, 1]
    assert held_out.flatten().tolist() == [6, 7]
    fit, _ = held_out_split(calibration, fit_sequences=100)  # more than there are: the three quarters
    assert fit.flatten().tolist() == [0, 1, 2, 3, 4, 5]


def test_planned_search_counts_the_refits_on_the_fit_sequences_asked_for() -> None:
    from pruning.compensation.least_squares import LS_FIT_FORWARDS

    def search(**options: int) -> float:
        method = Bonsai(BonsaiOptions(split_candidates=0, **options))
        return method.planned_work(64, 256, refit=True)["search"]

    # three candidates (rounds, prior, refit-aware), each refitted on 48 sequences or on 16
    assert search() - search(split_fit_sequences=16) == pytest.approx(
        3 * LS_FIT_FORWARDS * 32 * 256 + 32 * 256
    )


def test_held_out_split_with_too_few_sequences_uses_all_for_both() -> None:
    calibration = torch.arange(3).unsqueeze(1)
    fit, held_out = held_out_split(calibration)
    assert fit.flatten().tolist() == held_out.flatten().tolist() == [0, 1, 2]


def test_attention_fractions_stop_short_of_what_the_budget_allows() -> None:
    space = two_kind_space()
    # 100 of 200 attention weights affordable: up to 0.5 * 0.95
    assert attention_fractions(space, 100.0, 3) == pytest.approx([0.0, 0.2375, 0.475])
    # a budget above all attention: up to 0.95 of it, never all
    assert attention_fractions(space, 300.0, 2) == pytest.approx([0.0, 0.95])


def test_removed_attention_fraction_counts_attention_weights_only() -> None:
    space = two_kind_space()
    keep = torch.tensor([False, True, False, False, True, True])  # one head, two MLP units gone
    assert removed_attention_fraction(space, keep) == 0.5
    assert removed_attention_fraction(space, torch.ones(6, dtype=torch.bool)) == 0.0


def test_the_standard_and_thorough_budgets_grow_with_the_model() -> None:
    job = PruneSpec(model="m", data=Path("d.jsonl"), out_dir=Path("o"), sparsity=0.3)

    def options(budget: str, spec: PruneSpec = job) -> BonsaiOptions:
        chosen = spec.method_options(budget)
        assert isinstance(chosen, BonsaiOptions)
        return chosen

    # SmolLM2-135M has 1,530 units: the standard budget scores half as many sub-models a round
    assert sub_models_per_round(options("standard"), 1530) == 766
    assert sub_models_per_round(options("standard"), 600) == 512  # never fewer than its count
    assert sub_models_per_round(options("thorough"), 1530) == 1530
    assert sub_models_per_round(options("fast"), 1530) == options("fast").samples_per_round
    assert sub_models_per_round(options("standard"), 10**6) == 16384
    # an explicit count is the count: the budget's scaling gives way to it
    explicit = job.model_copy(update={"options": {"samples_per_round": 64}})
    assert sub_models_per_round(options("standard", explicit), 1530) == 64
