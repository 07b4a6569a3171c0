import pytest
import torch

from pruning.selection import select_global, select_uniform

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
KIND = torch.tensor(([0] * 4 + [1] * 4) * 2)
PARAMS = torch.where(KIND == 0, 4.0, 1.0).double()
SCORE = torch.tensor([5, 1, 3, 2, 9, 8, 7, 6, 1, 5, 4, 2, 9, 6, 7, 8], dtype=F64) / 10


def test_select_uniform_same_count_per_layer_lowest_first() -> None:
    # two layers, each 4 attention units (kind 0, 4 params) and 4 MLP units (kind 1, 1 param)
    alive = torch.ones(16, dtype=torch.bool)
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=16.0,
                            allowed_counts={0: [1, 2, 4], 1: [1, 2, 3, 4]})
    # attention: 4 -> 2 per layer (the next allowed count), each layer losing its two lowest
    assert remove[:4].tolist() == [False, True, False, True]
    assert remove[8:12].tolist() == [True, False, False, True]
    assert remove[4:8].tolist() == [False] * 4 and remove[12:].tolist() == [False] * 4
    assert float(PARAMS[remove].sum()) == 16.0


def test_select_uniform_step_size_follows_allowed_counts() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    # only attention may go; one unit's worth of budget still takes the whole 4 -> 2 step (16 params
    # overshoots 10 by 6, which is less than the 10 it would otherwise fall short)
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=10.0, allowed_counts={0: [1, 2, 4]})
    for lay in (0, 1):
        assert int(remove[(lay == LAYER) & (KIND == 0)].sum()) == 2
    assert int(remove[KIND == 1].sum()) == 0
    # a budget too small for any step removes nothing
    assert not bool(select_uniform(SCORE, PARAMS, alive, LAYER, KIND, 7.0, {0: [1, 2, 4]}).any())
    # after the 4 -> 2 step, the next is 2 -> 1
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=24.0, allowed_counts={0: [1, 2, 4]})
    assert [int(remove[(lay == LAYER) & (KIND == 0)].sum()) for lay in (0, 1)] == [3, 3]
    assert remove[:4].tolist() == [False, True, True, True]  # unit 0 (score .5) survives in layer 0
    assert remove[8:12].tolist() == [True, False, True, True]  # unit 9 (score .5) survives in layer 1


def test_select_uniform_counts_from_the_units_still_alive() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    alive[[1, 3, 8, 11]] = False  # two attention units already gone per layer: current count is 2
    remove = select_uniform(SCORE, PARAMS, alive, LAYER, KIND, budget=8.0, allowed_counts={0: [1, 2, 4]})
    assert not bool((remove & ~alive).any())
    assert remove.nonzero().flatten().tolist() == [2, 10]  # the lower of the two survivors per layer


def test_select_uniform_takes_the_cheaper_kind_first() -> None:
    alive = torch.ones(16, dtype=torch.bool)
    score = SCORE.clone()
    score[KIND == 1] = 0.0  # MLP units are worthless
    remove = select_uniform(score, PARAMS, alive, LAYER, KIND, budget=2.0,
                            allowed_counts={0: [1, 2, 4], 1: [1, 2, 3, 4]})
    assert int(remove[KIND == 0].sum()) == 0
    assert [int(remove[(lay == LAYER) & (KIND == 1)].sum()) for lay in (0, 1)] == [1, 1]
