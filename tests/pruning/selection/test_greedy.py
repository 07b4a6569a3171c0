"""Selection rules: the pure global/uniform selections, and the job's UnitSelector on a real unit space."""

from __future__ import annotations

import pytest
import torch

from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitSpace
from pruning.selection import UnitSelector
from pruning.selection.greedy import select_global, select_uniform
from tests.tiny import TinyModel

ATTN, MLP = UnitKind.ATTN, UnitKind.MLP

F64 = torch.float64


def test_select_global_removes_lowest_score_first_nearest_side_of_budget() -> None:
    score = torch.tensor([0.3, 0.1, 0.2, 0.9], dtype=F64)
    params = torch.tensor([10.0, 10.0, 30.0, 10.0], dtype=F64)
    alive = torch.ones(4, dtype=torch.bool)
    remove = select_global(score, params, alive, budget=35.0)
    assert remove.dtype == torch.bool
    assert remove.tolist() == [False, True, True, False]  # 40 removed: 5 over beats 25 under
    remove = select_global(score, params, alive, budget=20.0)
    assert remove.tolist() == [False, True, False, False]  # 10 (short by 10) beats 40 (over by 20)
    assert select_global(score, params, alive, budget=0.0).tolist() == [False] * 4
    assert select_global(score, params, alive, budget=1e9).tolist() == [True] * 4


def test_select_global_skips_dead_units() -> None:
    score = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    params = torch.ones(3, dtype=F64)
    remove = select_global(score, params, torch.tensor([False, True, True]), budget=1.0)
    assert remove.tolist() == [False, True, False]
    remove = select_global(score, params, torch.tensor([False, True, True]), budget=10.0)
    assert remove.tolist() == [False, True, True]


@pytest.mark.parametrize("seed", range(5))
def test_select_global_is_a_prefix_by_score_within_one_unit_of_budget(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(50, generator=gen, dtype=F64)
    params = torch.randint(1, 20, (50,), generator=gen).double()
    alive = torch.rand(50, generator=gen) > 0.2
    budget = 0.4 * float(params[alive].sum())
    remove = select_global(score, params, alive, budget)
    assert not bool((remove & ~alive).any())
    assert abs(float(params[remove].sum()) - budget) <= float(params[alive].max())
    # everything removed scores no higher than any alive unit that stays
    assert float(score[remove].max()) <= float(score[alive & ~remove].min())


LAYER = torch.tensor([0] * 8 + [1] * 8)
KIND = torch.tensor(([ATTN] * 4 + [MLP] * 4) * 2)
PARAMS = torch.where(KIND == ATTN, 4.0, 1.0).double()
SCORE = torch.tensor([5, 1, 3, 2, 9, 8, 7, 6, 1, 5, 4, 2, 9, 6, 7, 8], dtype=F64) / 10


def test_select_uniform_same_count_per_layer_lowest_first() -> None:
    # two layers, each 4 attention units (4 params each) and 4 MLP units (1 param each)
    alive = torch.ones(16, dtype=torch.bool)
    remove = select_uniform(
        SCORE, PARAMS, alive, LAYER, KIND, budget=16.0, allowed_counts={ATTN: [1, 2, 4], MLP: [1, 2, 3, 4]}
    )
    # attention: 4 -> 2 per layer (the next allowed count), each layer losing its two lowest
    assert remove[:4].tolist() == [False, True, False, True]
    assert remove[8:12].tolist() == [True, False, False, True]
    assert remove[4:8].tolist() == [False] * 4 and remove[12:].tolist() == [False] * 4
    assert float(PARAMS[remove].sum()) == 16.0


def test_select_uniform_step_size_follows_allowed_counts() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    # only attention may go; one unit's worth of budget still takes the whole 4 -> 2 step (16 params
    # overshoots 10 by 6, which is less than the 10 it would otherwise fall short)
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=10.0, allowed_counts={ATTN: [1, 2, 4]})
    for lay in (0, 1):
        assert int(remove[(lay == LAYER) & (KIND == ATTN)].sum()) == 2
    assert int(remove[KIND == MLP].sum()) == 0
    # a budget too small for any step removes nothing
    assert not bool(select_uniform(SCORE, PARAMS, alive, LAYER, KIND, 7.0, {ATTN: [1, 2, 4]}).any())
    # after the 4 -> 2 step, the next is 2 -> 1
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=24.0, allowed_counts={ATTN: [1, 2, 4]})
    assert [int(remove[(lay == LAYER) & (KIND == ATTN)].sum()) for lay in (0, 1)] == [3, 3]
    assert remove[:4].tolist() == [False, True, True, True]  # unit 0 (score .5) survives in layer 0
    assert remove[8:12].tolist() == [True, False, True, True]  # unit 9 (score .5) survives in layer 1


def test_select_uniform_counts_from_the_units_still_alive() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    alive[[1, 3, 8, 11]] = False  # two attention units already gone per layer: current count is 2
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=8.0, allowed_counts={ATTN: [1, 2, 4]})
    assert not bool((remove & ~alive).any())
    assert remove.nonzero().flatten().tolist() == [2, 10]  # the lower of the two survivors per layer


def test_select_uniform_takes_the_cheaper_kind_first() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    score = SCORE.clone()
    score[KIND == MLP] = 0.0  # MLP units are worthless
    remove = select_uniform(
        score, PARAMS, alive, LAYER, KIND, budget=2.0, allowed_counts={ATTN: [1, 2, 4], MLP: [1, 2, 3, 4]}
    )
    assert int(remove[KIND == ATTN].sum()) == 0
    assert [int(remove[(lay == LAYER) & (KIND == MLP)].sum()) for lay in (0, 1)] == [1, 1]


def _selector(space: UnitSpace, uniform: bool) -> UnitSelector:
    return UnitSelector(space, uniform, {ATTN: [1], MLP: list(range(1, space.group_of(0, MLP).count))})


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_select_per_kind_takes_the_same_fraction_of_each_kind(llama_fp32: TinyModel, uniform: bool) -> None:
    space = llama_fp32.space
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alive = torch.ones(space.size, dtype=torch.bool)
    budget = 0.5 * float(space.params.sum())
    remove = _selector(space, uniform).select_per_kind(score, alive, budget)
    attn, mlp = space.kind == ATTN, space.kind == MLP
    removed_attn = float(space.params[remove & attn].sum()) / float(space.params[attn].sum())
    removed_mlp = float(space.params[remove & mlp].sum()) / float(space.params[mlp].sum())
    assert removed_attn == pytest.approx(0.5)  # 1 of 2 KV groups in each layer, or half of all of them
    assert removed_mlp == pytest.approx(
        0.5, abs=float(space.params[mlp].max()) / float(space.params[mlp].sum())
    )
    if not uniform:  # one ranking per kind across layers: every removed unit scores below every kept one
        for kind in (attn, mlp):
            assert float(score[remove & kind].max()) < float(score[~remove & kind].min())


def test_attention_ratio_sets_attention_s_share_and_mlp_makes_up_the_budget(llama_fp32: TinyModel) -> None:
    space = llama_fp32.space
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alive = torch.ones(space.size, dtype=torch.bool)
    total = float(space.params.sum())
    attn, mlp = space.kind == ATTN, space.kind == MLP
    selector = _selector(space, uniform=False)
    for ratio, attention in [
        (0.0, 0.0),
        (2.0, 0.5),
    ]:  # 25% overall: no attention, then twice the overall fraction
        remove = selector.select_per_kind(score, alive, 0.25 * total, attention_ratio=ratio)
        assert float(space.params[remove & attn].sum()) / float(space.params[attn].sum()) == pytest.approx(
            attention
        )
        assert float(space.params[remove].sum()) == pytest.approx(
            0.25 * total, abs=float(space.params[mlp].max())
        )
