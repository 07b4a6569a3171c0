import pytest
import torch

from pruning.methods.bonsai.regression import (
    drop_probabilities,
    fit_importance,
    fit_prior_scale,
    sample_antithetic_drops,
)

F64 = torch.float64


def test_drop_probabilities_average_to_drop_fraction_and_decrease_with_prior() -> None:
    prior = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0], dtype=F64)
    probs = drop_probabilities(prior, 0.1, bias=1.0)
    assert probs.shape == (5,) and probs.dtype == F64
    assert float(probs.mean()) == pytest.approx(0.1, abs=1e-12)
    # strictly decreasing along increasing prior
    by_prior = probs[prior.argsort()]
    assert bool((by_prior[1:] < by_prior[:-1]).all())
    # least vs most important: e^(2·bias) apart whatever the prior's scale
    assert float(by_prior[0] / by_prior[-1]) == pytest.approx(torch.e**2, rel=1e-12)
    assert torch.allclose(drop_probabilities(prior * 1000, 0.1, bias=1.0), probs, rtol=0, atol=1e-15)


def test_drop_probabilities_without_bias_are_flat() -> None:
    probs = drop_probabilities(torch.tensor([5.0, 1.0, 3.0], dtype=F64), 0.2, bias=0.0)
    assert torch.allclose(probs, torch.full((3,), 0.2, dtype=F64), rtol=0, atol=1e-15)


def test_drop_probabilities_are_capped_at_045() -> None:
    probs = drop_probabilities(torch.arange(10.0, dtype=F64), 0.4, bias=3.0)
    assert float(probs.max()) == 0.45
    assert int((probs == 0.45).sum()) >= 1
    assert float(probs.mean()) < 0.4  # the cap binds, so the mean falls short
    single = drop_probabilities(torch.tensor([7.0], dtype=F64), 0.49, bias=2.0)
    assert single.tolist() == [0.45]
    assert drop_probabilities(torch.tensor([7.0], dtype=F64), 0.1, bias=2.0).tolist() == [0.1]


def test_antithetic_twins_never_drop_the_same_unit_and_hit_the_rate() -> None:
    probs = torch.tensor([0.05, 0.2, 0.4, 0.45], dtype=F64)
    drops = sample_antithetic_drops(probs, 5000, torch.Generator().manual_seed(0))
    assert drops.shape == (10000, 4) and drops.dtype == F64
    assert set(drops.unique().tolist()) == {0.0, 1.0}
    pairs = drops.view(5000, 2, 4)
    assert int((pairs[:, 0] * pairs[:, 1]).sum()) == 0  # twins are disjoint
    assert torch.allclose(pairs[:, 0].mean(0), probs, atol=0.02)
    assert torch.allclose(pairs[:, 1].mean(0), probs, atol=0.02)
    assert torch.allclose(drops.mean(0), probs, atol=0.012)


def test_antithetic_drops_are_reproducible_with_a_seeded_generator() -> None:
    probs = torch.full((6,), 0.3, dtype=F64)
    first = sample_antithetic_drops(probs, 8, torch.Generator().manual_seed(5))
    second = sample_antithetic_drops(probs, 8, torch.Generator().manual_seed(5))
    assert first.shape == (16, 6)
    assert torch.equal(first, second)


def test_fit_importance_recovers_known_coefficients() -> None:
    gen = torch.Generator().manual_seed(1)
    drops = (torch.rand(400, 6, generator=gen, dtype=F64) < 0.3).double()
    beta = torch.tensor([0.5, 0.0, 2.0, -0.3, 1.0, 0.1], dtype=F64)
    losses = 3.0 + drops @ beta  # the intercept must not leak into β
    fitted = fit_importance(drops, losses, torch.zeros(6, dtype=F64), ridge=1e-6)
    assert fitted.shape == (6,) and fitted.dtype == F64
    assert torch.allclose(fitted, beta, atol=1e-4)


def test_fit_importance_strong_ridge_pulls_to_the_prior() -> None:
    gen = torch.Generator().manual_seed(3)
    drops = (torch.rand(200, 3, generator=gen, dtype=F64) < 0.3).double()
    losses = drops @ torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    prior = torch.tensor([9.0, -4.0, 0.5], dtype=F64)
    fitted = fit_importance(drops, losses, prior, ridge=1e6)
    assert torch.allclose(fitted, prior, atol=1e-3)


def test_fit_importance_returns_prior_mean_for_never_dropped_units() -> None:
    drops = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    losses = torch.tensor([2.0, 1.5, 2.0, 1.0], dtype=F64)
    fitted = fit_importance(drops, losses, torch.tensor([0.0, 7.0, 0.0], dtype=F64), ridge=1e-6)
    assert float(fitted[1]) == pytest.approx(7.0, abs=1e-9)
    assert float(fitted[0]) == pytest.approx(1.0, abs=1e-3)
    assert float(fitted[2]) == pytest.approx(0.5, abs=1e-3)


def test_fit_prior_scale_recovers_per_kind_scale() -> None:
    gen = torch.Generator().manual_seed(2)
    drops = (torch.rand(300, 5, generator=gen, dtype=F64) < 0.3).double()
    prior = torch.tensor([1.0, 2.0, 10.0, 30.0, 3.0], dtype=F64)
    kind = torch.tensor([0, 0, 1, 1, 0])
    true_scale = torch.tensor([0.5, 0.5, 0.01, 0.01, 0.5], dtype=F64)
    losses = 1.0 + drops @ (prior * true_scale)
    scale = fit_prior_scale(drops, losses, prior, kind)
    assert scale.shape == (5,)
    assert torch.allclose(scale, true_scale, atol=1e-9)


def test_fit_prior_scale_clamps_negative_scales_to_zero() -> None:
    gen = torch.Generator().manual_seed(4)
    drops = (torch.rand(200, 4, generator=gen, dtype=F64) < 0.3).double()
    prior = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    kind = torch.tensor([0, 0, 1, 1])
    losses = 1.0 + drops @ (prior * torch.tensor([-0.2, -0.2, 0.3, 0.3], dtype=F64))
    scale = fit_prior_scale(drops, losses, prior, kind)
    assert scale[:2].tolist() == [0.0, 0.0]
    assert torch.allclose(scale[2:], torch.tensor([0.3, 0.3], dtype=F64), atol=1e-9)
