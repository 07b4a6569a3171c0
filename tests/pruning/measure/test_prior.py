import pytest
import torch

from pruning.measure.prior import column_norms, unit_activation_scores


def test_unit_activation_scores_sums_channel_products_per_unit() -> None:
    scores = unit_activation_scores(
        torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), 2
    )
    assert scores.dtype == torch.float64
    assert scores.shape == (2,)
    assert scores.tolist() == [3.0, 14.0]  # 1·1 + 2·1, 3·2 + 4·2


def test_unit_activation_scores_interleaved_units_and_unused_unit() -> None:
    # channels may belong to units in any order; a unit with no channel scores 0
    scores = unit_activation_scores(
        torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 1.0, 1.0, 0.5]), torch.tensor([2, 0, 2, 0]), 3
    )
    assert scores.tolist() == [4.0, 0.0, 13.0]


def test_unit_activation_scores_are_float64_even_from_half() -> None:
    big = torch.full((2,), 60000.0, dtype=torch.float16)  # the product overflows fp16
    scores = unit_activation_scores(big, big, torch.tensor([0, 0]), 1)
    assert scores.item() == pytest.approx(2 * 60000.0**2)


def test_column_norms() -> None:
    weight = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    norms = column_norms(weight)
    assert norms.dtype == torch.float64
    assert norms.tolist() == [5.0, 1.0, 1.0]
