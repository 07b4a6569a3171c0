"""Least-squares refit of an output projection on the input channels it keeps. Pure tensor math."""

from __future__ import annotations

import torch


def ridge_reconstruction(
    gram_kept: torch.Tensor, cross_kept: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Refit an output projection on its kept input channels so it best reproduces the dense output.

    X: [n, C] the module's input in the dense model; X̃: [n, C] its input in the pruned model (upstream
    units removed and corrected), of which only the kept channels K survive the module's own mask.
    gram_kept: [K, K] X̃_Kᵀ X̃_K; cross_kept: [K, C] X̃_Kᵀ X; weight: [out, C]; kept: [C] bool.
    Minimises ‖X Wᵀ − X̃_K W_K'ᵀ‖² + λ‖W_K' − W_K‖² with λ = ridge · mean diag(X̃_Kᵀ X̃_K):
        W_K'ᵀ = (X̃_Kᵀ X̃_K + λI)⁻¹ (X̃_Kᵀ X Wᵀ + λ W_Kᵀ)
    When nothing upstream changed, X̃ = X and this moves the removed channels' work onto the kept ones.
    Returns the change [out, C] to add to `weight` (zero on removed channels), in float64.
    """
    gram_kept, cross_kept, weight = gram_kept.double(), cross_kept.double(), weight.double()
    index = kept.nonzero().flatten()
    delta = torch.zeros_like(weight)
    if index.numel() == 0:
        return delta
    lam = ridge * float(gram_kept.diagonal().mean().clamp(min=1e-12))
    rhs = cross_kept @ weight.T + lam * weight[:, index].T  # [K, out]
    eye = torch.eye(index.numel(), dtype=gram_kept.dtype)
    refit = torch.linalg.solve(gram_kept + lam * eye, rhs).T  # [out, K]
    delta[:, index] = refit - weight[:, index]
    return delta
