import torch

from pruning.methods.flap import fluctuation_scores, standardise


def test_fluctuation_scores_weight_variance_by_squared_column_norm() -> None:
    scores = fluctuation_scores(
        torch.tensor([1.0, 0.5, 2.0]), torch.tensor([2.0, 2.0, 1.0]), torch.tensor([0, 0, 1]), 2
    )
    assert scores.tolist() == [1.0 * 4 + 0.5 * 4, 2.0 * 1]


def test_standardise_zero_mean_unit_std() -> None:
    z = standardise(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.allclose(z, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert standardise(torch.tensor([5.0])).tolist() == [0.0]
