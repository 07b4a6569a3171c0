import torch

from pruning.compensation.bias import compensation_bias


def test_compensation_bias_is_removed_columns_times_their_mean() -> None:
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mean = torch.tensor([10.0, 20.0, 30.0])
    removed = torch.tensor([True, False, True])
    assert compensation_bias(weight, mean, removed).tolist() == [1 * 10 + 3 * 30, 4 * 10 + 6 * 30]
