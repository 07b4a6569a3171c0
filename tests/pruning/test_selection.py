import torch

from pruning.selection import select_global, select_uniform


def test_select_global_lowest_per_param_first_within_one_unit() -> None:
    score = torch.tensor([0.3, 0.1, 0.2, 0.9], dtype=torch.float64)
    params = torch.tensor([10.0, 10.0, 30.0, 10.0], dtype=torch.float64)
    alive = torch.ones(4, dtype=torch.bool)
    remove = select_global(score, params, alive, budget=35.0)
    assert remove.tolist() == [False, True, True, False]  # 40 removed: nearer to 35 than 10
    remove = select_global(score, params, alive, budget=20.0)
    assert remove.tolist() == [False, True, False, False]  # 10 (off by 10) beats 40 (off by 20)


def test_select_global_skips_dead_units() -> None:
    score = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    params = torch.ones(3, dtype=torch.float64)
    remove = select_global(score, params, torch.tensor([False, True, True]), budget=1.0)
    assert remove.tolist() == [False, True, False]


def test_select_uniform_same_count_per_layer_and_allowed_steps() -> None:
    # two layers, each 4 attention units (kind 0) and 4 MLP units (kind 1)
    layer = torch.tensor([0] * 8 + [1] * 8)
    kind = torch.tensor(([0] * 4 + [1] * 4) * 2)
    params = torch.where(kind == 0, 4.0, 1.0).double()
    score = torch.tensor([5, 1, 3, 2, 9, 8, 7, 6, 1, 5, 4, 2, 9, 6, 7, 8], dtype=torch.float64) / 10
    alive = torch.ones(16, dtype=torch.bool)
    allowed = {0: [1, 2, 4], 1: [1, 2, 3, 4]}
    remove = select_uniform(score, params, alive, layer, kind, budget=16.0, allowed_counts=allowed)
    # attention goes 4 -> 2 per layer (the allowed step), removing each layer's two lowest
    assert remove[:4].tolist() == [False, True, False, True]
    assert remove[8:12].tolist() == [True, False, False, True]
    for lay in (0, 1):
        for k in (0, 1):
            assert int(remove[(layer == lay) & (kind == k)].sum()) == int(remove[(layer == 0) & (kind == k)].sum())
    assert float(params[remove].sum()) == 16.0
