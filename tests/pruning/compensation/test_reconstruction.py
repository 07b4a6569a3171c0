import torch

from pruning.compensation.reconstruction import ridge_reconstruction


def _moments(
    pruned: torch.Tensor, dense: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x_kept = pruned[:, kept]
    return x_kept.T @ x_kept, x_kept.T @ dense


def test_refit_recovers_output_when_removed_channel_is_a_copy() -> None:
    # channel 2 always equals channel 0, so removing it loses nothing: its weight moves onto channel 0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    x[:, 2] = x[:, 0]
    weight = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    kept = torch.tensor([True, True, False])
    delta = ridge_reconstruction(*_moments(x, x, kept), weight, kept, ridge=1e-9)
    assert delta.shape == (2, 3)
    assert torch.all(delta[:, 2] == 0)
    assert torch.allclose(
        delta[:, :2], torch.tensor([[3.0, 0.0], [2.0, 0.0]], dtype=torch.float64), atol=1e-6
    )
    refit = (weight + delta)[:, :2]
    assert torch.allclose(x[:, :2] @ refit.T, x @ weight.T, atol=1e-6)


def test_refit_undoes_upstream_drift_toward_the_dense_output() -> None:
    # upstream pruning halved channel 0 and shifted channel 1 by a copy of channel 0; nothing is removed
    # here, so the exact inverse exists and the refit must restore the dense output
    gen = torch.Generator().manual_seed(1)
    dense = torch.randn(400, 2, generator=gen, dtype=torch.float64)
    pruned = torch.stack([0.5 * dense[:, 0], dense[:, 1] + dense[:, 0]], 1)
    weight = torch.tensor([[2.0, -1.0], [1.0, 3.0]], dtype=torch.float64)
    kept = torch.ones(2, dtype=torch.bool)
    delta = ridge_reconstruction(*_moments(pruned, dense, kept), weight, kept, ridge=1e-12)
    assert torch.allclose(pruned @ (weight + delta).T, dense @ weight.T, atol=1e-6)
    # the exact answer: W' = W · A⁻¹ where pruned = dense · Aᵀ
    a = torch.tensor([[0.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(weight + delta, weight @ torch.linalg.inv(a), atol=1e-6)


def test_strong_ridge_keeps_weights_and_all_removed_gives_zero() -> None:
    weight = torch.ones(2, 3, dtype=torch.float64)
    kept = torch.tensor([True, False, True])
    eye = torch.eye(3, dtype=torch.float64)
    delta = ridge_reconstruction(eye[kept][:, kept], eye[kept], weight, kept, ridge=1e9)
    assert delta.abs().max() < 1e-6
    none = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(
        ridge_reconstruction(eye[none][:, none], eye[none], weight, none, 1.0),
        torch.zeros(2, 3, dtype=torch.float64),
    )
