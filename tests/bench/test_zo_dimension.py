"""The effective dimension of a linear map's least-squares fit, from its input's second moment."""

from __future__ import annotations

import pytest
import torch

from bench.zo_dimension import dimension_rows, input_moments


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 3, bias=False)])


class Blocks(torch.nn.Module):
    """model.layers.0: one map of a decoder block, as a causal LM names it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[0](x)


def test_d_eff_is_the_output_width_times_the_input_spread() -> None:
    model = Blocks()
    # inputs along the axes with energies 4, 1, 1, 1: tr(Σ)/λ_max = 7/4, three outputs
    x = torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    moments = input_moments(model, x[None])
    assert list(moments) == ["model.layers.0"]
    torch.testing.assert_close(moments["model.layers.0"], torch.diag(torch.tensor([4.0, 1, 1, 1])).double())
    (row,) = dimension_rows(model, moments)
    assert row["out"] == 3
    assert row["input_spread"] == pytest.approx(7 / 4)
    assert row["d_eff"] == pytest.approx(3 * 7 / 4)
