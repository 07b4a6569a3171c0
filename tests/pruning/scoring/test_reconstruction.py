import torch

from pruning.scoring.reconstruction import ridge_reconstruction


def test_refit_recovers_output_when_removed_channel_is_a_copy() -> None:
    # channel 2 always equals channel 0, so removing it loses nothing: its weight moves onto channel 0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    x[:, 2] = x[:, 0]
    weight = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    kept = torch.tensor([True, True, False])
    delta = ridge_reconstruction(x.T @ x, weight, kept, ridge=1e-9)
    assert delta.shape == (2, 3)
    assert torch.all(delta[:, 2] == 0)
    assert torch.allclose(delta[:, :2], torch.tensor([[3.0, 0.0], [2.0, 0.0]], dtype=torch.float64), atol=1e-6)
    refit = (weight + delta)[:, :2]
    assert torch.allclose(x[:, :2] @ refit.T, x @ weight.T, atol=1e-6)


def test_strong_ridge_keeps_weights_and_all_removed_gives_zero() -> None:
    gram = torch.eye(3, dtype=torch.float64)
    weight = torch.ones(2, 3, dtype=torch.float64)
    delta = ridge_reconstruction(gram, weight, torch.tensor([True, False, True]), ridge=1e9)
    assert delta.abs().max() < 1e-6
    assert torch.equal(ridge_reconstruction(gram, weight, torch.zeros(3, dtype=torch.bool), 1.0),
                       torch.zeros(2, 3, dtype=torch.float64))
