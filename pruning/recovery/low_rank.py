"""Low-rank adapters (LoRA, Hu et al. 2021) applied with forward hooks, as the masks and corrections are.

Each target linear map W [out, in] gains ΔW = s · B A (A [r, in], B [out, r], s = α / r) without its
module being replaced: a forward hook adds s · (x Aᵀ) Bᵀ to the module's output. Because a hook sees the
input after the unit masks' pre-hooks, an adapter on an output projection reads only the kept channels,
as the exported weights will; and because hooks leave the base weights alone, an int8 model is trained
through as it is scored. B starts at zero, so the adapted model starts as the pruned one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.model.masking import UnitMasks


class LowRankAdapters(nn.Module):
    """A rank-`rank` adapter for each of `targets` (name -> linear module), standing down while the
    masks are suspended (the dense teacher is the same weights with nothing pruned or added)."""

    def __init__(self, targets: dict[str, nn.Module], masks: UnitMasks, rank: int, alpha: float) -> None:
        super().__init__()
        self.targets, self.masks, self.scale = targets, masks, alpha / rank
        self.a = nn.ParameterDict()  # name -> [r, in]
        self.b = nn.ParameterDict()  # name -> [out, r]
        for name, module in targets.items():
            weight: torch.Tensor = module.weight  # type: ignore[assignment]
            out_features, in_features = weight.shape
            key = _key(name)
            self.a[key] = nn.Parameter(torch.empty(rank, in_features))
            self.b[key] = nn.Parameter(torch.zeros(out_features, rank))
            # as LoRA's reference implementation: A uniform with fan-in scaling, B zero
            nn.init.kaiming_uniform_(self.a[key], a=math.sqrt(5))

    def delta(self, name: str) -> torch.Tensor:
        """[out, in] float32 change to the target's weight: s · B A."""
        key = _key(name)
        return (self.scale * self.b[key] @ self.a[key]).detach()

    def _hook(self, name: str) -> Any:
        key = _key(name)

        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.masks.dense:
                return output
            x = args[0]  # [..., in], masked where the module carries units
            a, b = self.a[key], self.b[key]
            low = x.to(a.dtype) @ a.T  # [..., r]
            return output + (self.scale * low @ b.T).to(output.dtype)

        return add

    @contextmanager
    def installed(self) -> Iterator[LowRankAdapters]:
        handles: list[RemovableHandle] = []
        try:
            for name, module in self.targets.items():
                handles.append(module.register_forward_hook(self._hook(name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _key(name: str) -> str:
    """A module name as a ParameterDict key (which may not contain dots)."""
    return name.replace(".", "__")
