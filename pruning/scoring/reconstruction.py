"""Least-squares refit of an output projection on the input channels it keeps. Pure tensor math."""

from __future__ import annotations

import torch


def ridge_reconstruction(gram: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor, ridge: float) -> torch.Tensor:
    """Refit an output projection on its kept input channels so it best reproduces its full output.

    gram: [C, C] Σ xᵀx over calibration tokens (all channels, before masking); weight: [out, C];
    kept: [C] bool. Minimises ‖X Wᵀ − X_K W_Kᵀ'‖² + λ‖W_K' − W_K‖² with λ = ridge · mean diag(G_KK):
        W_K'ᵀ = (G_KK + λI)⁻¹ (G_K: Wᵀ + λ W_Kᵀ)
    Returns the change [out, C] to add to `weight` (zero on removed channels), in float64.
    """
    gram, weight = gram.double(), weight.double()
    index = kept.nonzero().flatten()
    delta = torch.zeros_like(weight)
    if index.numel() == 0:
        return delta
    g_kk = gram[index][:, index]  # [K, K]
    lam = ridge * float(g_kk.diagonal().mean().clamp(min=1e-12))
    rhs = gram[index] @ weight.T + lam * weight[:, index].T  # [K, out]
    refit = torch.linalg.solve(g_kk + lam * torch.eye(index.numel(), dtype=gram.dtype), rhs).T  # [out, K]
    delta[:, index] = refit - weight[:, index]
    return delta
