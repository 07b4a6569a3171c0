"""Which units of one output projection to remove when a least-squares refit follows: greedy structured
Optimal Brain Surgeon on the module's input Gram matrix (Hassibi & Stork; structured as in ZipLM and
SlimGPT). Pure tensor math, forward-only: the Gram matrix comes from calibration activations.

For an output projection W [out, C] with input X [n, C], removing the channels S of a unit and refitting
the rest by least squares raises ‖X Wᵀ − X W'ᵀ‖² by

    cost(S) = tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ),        H = XᵀX + λI

and the refit moves W_S's work onto the kept channels (W ← W − W_S (H⁻¹_SS)⁻¹ H⁻¹_S:), after which H⁻¹ of
the kept channels is the Schur complement (H⁻¹ ← H⁻¹ − H⁻¹_:S (H⁻¹_SS)⁻¹ H⁻¹_S:). A unit whose channels
another unit can stand in for costs little even if its output is large, which an activation-norm score
cannot see.
"""

from __future__ import annotations

import torch


def structured_obs_removals(
    gram: torch.Tensor,
    weight: torch.Tensor,
    channel_unit: torch.Tensor,
    count: int,
    damp: float = 0.01,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """[count] indices of the units to remove, cheapest first, each chosen after the refits of those
    before it.

    gram: [C, C] XᵀX of the module's input over the calibration tokens; weight: [out, C];
    channel_unit: [C] unit index of each channel (units 0 .. max); damp: λ relative to mean diag(XᵀX),
    which keeps H invertible when channels are dead or collinear; dtype: of the arithmetic (float32 on a
    GPU keeps a 7B down_proj's H⁻¹ at 0.5 GB).
    """
    weight = weight.to(dtype=dtype, copy=True)  # [out, C] refitted in place as units go
    units = int(channel_unit.max()) + 1
    # [units, b] each unit's channels; every unit of a module has the same number of them
    channels = torch.stack([(channel_unit == u).nonzero().flatten() for u in range(units)])
    h = gram.to(dtype=dtype, copy=True)  # [C, C] H = XᵀX + λI, built without a [C, C] identity
    h.diagonal().add_(damp * float(gram.diagonal().mean().clamp(min=1e-12)))
    hinv = torch.linalg.inv(h)  # [C, C]
    del h
    alive = torch.ones(units, dtype=torch.bool)
    removed: list[int] = []
    for _ in range(count):
        candidates = alive.nonzero().flatten()  # [A]
        s_all = channels[candidates]  # [A, b]
        blocks = hinv[s_all[:, :, None], s_all[:, None, :]]  # [A, b, b] H⁻¹_SS per unit
        w_s = weight[:, s_all].transpose(0, 1)  # [A, out, b]
        block_invs = torch.linalg.inv(blocks)  # [A, b, b] (H⁻¹_SS)⁻¹
        costs = (w_s @ block_invs * w_s).sum((1, 2))  # [A]
        best = int(costs.argmin())
        unit, s, block_inv = int(candidates[best]), s_all[best], block_invs[best]  # block_inv: [b, b]
        rows = hinv[s, :].clone()  # [b, C]
        weight -= weight[:, s] @ block_inv @ rows
        hinv.addmm_(hinv[:, s] @ block_inv, rows, alpha=-1.0)  # in place: no second [C, C]
        alive[unit] = False
        removed.append(unit)
    return torch.tensor(removed, dtype=torch.long)
