"""Experts as units: a removed expert's router logit is -inf before the top-k, so tokens are routed among
the experts left, as they are in the exported model, whose router has only the kept experts' rows.

Routers here are those of transformers 5's Qwen3-MoE and Mixtral (`<Family>TopKRouter`): logits =
x·Wᵀ, a softmax over the experts, the top k, then (Mixtral always, Qwen3-MoE with `norm_topk_prob`)
renormalised to sum to one. The masked routing redoes that with the removed experts' logits at -inf,
which is the exported model's routing exactly: the softmax over the kept experts is the full softmax with
the others at zero. A token left with no expert (every expert of its replica removed) gets zero weights:
the block adds nothing, as a block removed whole.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RouterOutput = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]  # logits [N, E], weights [N, k], indices [N, k]


def masked_routing(
    router: nn.Module, hidden: torch.Tensor, allowed: torch.Tensor, like: RouterOutput
) -> RouterOutput:
    """The router's output for `hidden` [N, D] when each row may use only the experts `allowed` [N, E]
    (bool); `like` is its unmasked output, whose dtypes the result keeps."""
    weight: Any = router.weight
    logits = F.linear(hidden.reshape(-1, weight.shape[1]), weight)
    masked = logits.float().masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # a row with no expert left: all zero
    top, indices = torch.topk(probs, int(router.top_k), dim=-1)  # type: ignore[arg-type]
    if getattr(router, "norm_topk_prob", True):
        top = top / top.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(top.dtype).tiny)
    return logits.to(like[0].dtype), top.to(like[1].dtype), indices


def routed_weights(output: RouterOutput, experts: int) -> torch.Tensor:
    """[N, E] float32 weight each token gives each expert (zero where it is not among the token's top k)."""
    _, weights, indices = output
    dense = torch.zeros(indices.shape[0], experts, dtype=torch.float32, device=indices.device)
    return dense.scatter_add_(1, indices, weights.float())
