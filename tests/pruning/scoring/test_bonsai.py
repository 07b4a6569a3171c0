import torch

from pruning.scoring.bonsai import (
    drop_probabilities,
    fit_importance,
    fit_prior_scale,
    sample_antithetic_drops,
)


def test_drop_probabilities_average_and_order() -> None:
    prior = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0], dtype=torch.float64)
    probs = drop_probabilities(prior, 0.1, bias=1.0)
    assert probs.shape == (5,)
    assert abs(float(probs.mean()) - 0.1) < 1e-12
    # lowest prior is the most likely to be dropped, highest the least
    assert probs.argmax().item() == 1 and probs.argmin().item() == 0
    assert torch.allclose(drop_probabilities(prior, 0.1, bias=0.0), torch.full((5,), 0.1, dtype=torch.float64))


def test_drop_probabilities_are_capped_below_half() -> None:
    probs = drop_probabilities(torch.arange(10.0), 0.4, bias=3.0)
    assert float(probs.max()) == 0.45


def test_antithetic_twins_are_disjoint_and_hit_the_rate() -> None:
    probs = torch.tensor([0.05, 0.2, 0.4], dtype=torch.float64)
    drops = sample_antithetic_drops(probs, 5000, torch.Generator().manual_seed(0))
    assert drops.shape == (10000, 3)
    pairs = drops.view(5000, 2, 3)
    assert int((pairs[:, 0] * pairs[:, 1]).sum()) == 0
    assert torch.allclose(drops.mean(0), probs, atol=0.015)


def test_fit_importance_recovers_coefficients() -> None:
    gen = torch.Generator().manual_seed(1)
    drops = (torch.rand(400, 6, generator=gen, dtype=torch.float64) < 0.3).double()
    beta = torch.tensor([0.5, 0.0, 2.0, -0.3, 1.0, 0.1], dtype=torch.float64)
    losses = 3.0 + drops @ beta
    fitted = fit_importance(drops, losses, torch.zeros(6, dtype=torch.float64), ridge=1e-6)
    assert torch.allclose(fitted, beta, atol=1e-4)


def test_fit_importance_keeps_prior_for_never_dropped_units() -> None:
    drops = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    fitted = fit_importance(drops, losses, torch.tensor([0.0, 7.0], dtype=torch.float64), ridge=1e-3)
    assert abs(float(fitted[1]) - 7.0) < 1e-9
    assert abs(float(fitted[0]) - 1.0) < 1e-2


def test_fit_prior_scale_per_kind() -> None:
    gen = torch.Generator().manual_seed(2)
    drops = (torch.rand(300, 4, generator=gen, dtype=torch.float64) < 0.3).double()
    prior = torch.tensor([1.0, 2.0, 10.0, 30.0], dtype=torch.float64)
    kind = torch.tensor([0, 0, 1, 1])
    losses = 1.0 + drops @ (prior * torch.tensor([0.5, 0.5, 0.01, 0.01], dtype=torch.float64))
    scale = fit_prior_scale(drops, losses, prior, kind)
    assert torch.allclose(scale, torch.tensor([0.5, 0.5, 0.01, 0.01], dtype=torch.float64), atol=1e-9)
