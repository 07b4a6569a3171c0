"""Perturbative importance (Dery et al. 2024, "Everybody Prune Now"): sample sub-models that drop a
few units, measure their loss, and regress loss on which units were dropped.

All functions are pure: drop matrices, losses and priors in, probabilities and importances out.
"""

from __future__ import annotations

import torch


def drop_probabilities(prior_per_param: torch.Tensor, drop_fraction: float, bias: float) -> torch.Tensor:
    """Per-unit drop probability, higher for units with a low prior, averaging `drop_fraction`.

    prior_per_param: [A] prior importance per parameter of each candidate unit
    Weights are exp(-bias * z) on the unit's centred rank z in [-1, 1], so the spread between the least
    and most important unit is e^(2·bias) whatever the prior's scale. Capped below 0.5 so that an
    antithetic pair never drops the same unit twice.
    """
    count = prior_per_param.numel()
    if count == 1:
        return torch.full((1,), min(drop_fraction, 0.45), dtype=torch.float64)
    ranks = prior_per_param.argsort().argsort().double()  # 0 = least important
    centred = 2.0 * ranks / (count - 1) - 1.0  # [-1, 1]
    weights = torch.exp(-bias * centred)
    return (drop_fraction * weights / weights.mean()).clamp(max=0.45)


def sample_antithetic_drops(probs: torch.Tensor, pairs: int, generator: torch.Generator) -> torch.Tensor:
    """[2·pairs, A] 0/1 drop matrix. One uniform draw u per unit and pair: the first mask drops where
    u < p, its twin where u > 1 - p. With p < 0.5 the two drop disjoint sets, which cancels much of the
    shared noise when their losses are regressed together."""
    uniforms = torch.rand(pairs, probs.numel(), generator=generator, dtype=torch.float64)
    first = uniforms < probs
    twin = uniforms > 1.0 - probs
    return torch.stack([first, twin], dim=1).flatten(0, 1).double()


def fit_prior_scale(
    drops: torch.Tensor, losses: torch.Tensor, prior: torch.Tensor, kind: torch.Tensor
) -> torch.Tensor:
    """Least-squares scale per unit kind that turns the prior into loss units.

    drops: [S, A]; losses: [S]; prior: [A]; kind: [A] integer kind of each unit.
    Model: loss ≈ b + Σ_k c_k Σ_{i of kind k} drop_i·prior_i. Returns c (clamped ≥ 0) per unit, [A].
    """
    kinds = kind.unique()
    features = torch.stack([(drops[:, kind == k] * prior[kind == k]).sum(1) for k in kinds], 1)  # [S, K]
    features = features - features.mean(0)
    centred = losses - losses.mean()
    gram = features.T @ features + 1e-12 * torch.eye(len(kinds), dtype=features.dtype)
    coef = torch.linalg.solve(gram, features.T @ centred).clamp(min=0.0)  # [K]
    return coef[torch.searchsorted(kinds, kind)]


def fit_importance(
    drops: torch.Tensor, losses: torch.Tensor, prior_mean: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Ridge regression of loss on drop indicators, shrunk toward `prior_mean` instead of zero.

    drops: [S, A] 1 where the unit was dropped; losses: [S]; prior_mean: [A] expected loss increase.
    Solves (XᵀX + λI) β = Xᵀy + λ·prior_mean on centred X, y, with λ = ridge · mean(diag XᵀX), so a
    unit that was seldom dropped keeps close to its prior and a well-sampled one follows the data.
    Returns β: [A], the estimated loss increase from dropping each unit.
    """
    x = drops - drops.mean(0)
    y = losses - losses.mean()
    gram = x.T @ x  # [A, A]
    lam = ridge * float(gram.diagonal().mean().clamp(min=1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + lam * eye, x.T @ y + lam * prior_mean)


def regressed_importance(
    drops: torch.Tensor, losses: torch.Tensor, prior: torch.Tensor, kind: torch.Tensor, ridge: float
) -> torch.Tensor:
    """[A] each candidate's estimated loss increase from one round's sub-models: the prior [A] scaled per
    unit kind [A] into loss units (`fit_prior_scale`), then the ridge regression shrunk toward it."""
    scale = fit_prior_scale(drops, losses, prior, kind)
    return fit_importance(drops, losses, scale * prior, ridge)
