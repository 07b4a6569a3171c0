import torch

from pruning.scoring.prior import column_norms, unit_activation_scores


def test_unit_activation_scores_sums_channel_products_per_unit() -> None:
    scores = unit_activation_scores(
        torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), 2
    )
    assert scores.dtype == torch.float64
    assert scores.tolist() == [3.0, 14.0]


def test_column_norms() -> None:
    weight = torch.tensor([[3.0, 0.0], [4.0, 1.0]])
    assert column_norms(weight).tolist() == [5.0, 1.0]
