"""Which units to remove, given importances: globally, or the same count in every layer.

Pure functions over flat unit tensors; the round loop and the model live elsewhere.
"""

from __future__ import annotations

import torch


def select_global(score: torch.Tensor, params: torch.Tensor, alive: torch.Tensor, budget: float) -> torch.Tensor:
    """Remove alive units in increasing order of `score` until `budget` parameters are removed.

    score: [U] importance per parameter; params: [U]; alive: [U] bool.
    Stops at whichever side of the budget is nearer, so the removed total is within one unit of it.
    Returns a [U] bool mask of the units to remove now.
    """
    remove = torch.zeros_like(alive)
    removed = 0.0
    for index in torch.argsort(score.masked_fill(~alive, float("inf")), stable=True).tolist():
        if not alive[index] or removed >= budget:
            break
        size = float(params[index])
        if removed + size > budget and removed + size - budget > budget - removed:
            break
        remove[index] = True
        removed += size
    return remove


def select_uniform(
    score: torch.Tensor,
    params: torch.Tensor,
    alive: torch.Tensor,
    layer: torch.Tensor,
    kind: torch.Tensor,
    budget: float,
    allowed_counts: dict[int, list[int]],
) -> torch.Tensor:
    """Remove the same number of units of each kind from every layer, cheapest step first.

    A step takes a kind from its current per-layer count down to the next count in
    `allowed_counts[kind]` (ascending lists; stock configs cannot express every head count), removing
    in each layer its lowest-scored units. Steps are taken greedily by summed importance per parameter,
    skipping a step that would overshoot `budget` by more than it falls short. Returns a [U] bool mask.
    """
    layers = layer.unique().tolist()
    # per kind, per layer: alive unit indices sorted by score (lowest first)
    order: dict[int, list[list[int]]] = {}
    for k in allowed_counts:
        order[k] = []
        for lay in layers:
            idx = (alive & (layer == lay) & (kind == k)).nonzero().flatten()
            order[k].append(idx[torch.argsort(score[idx], stable=True)].tolist())
    taken = dict.fromkeys(allowed_counts, 0)  # units removed per layer so far, per kind
    remove = torch.zeros_like(alive)
    removed = 0.0
    while removed < budget:
        steps: list[tuple[float, int, list[int]]] = []
        for k, counts in allowed_counts.items():
            current = len(order[k][0]) - taken[k]
            lower = [c for c in counts if c < current]
            if not lower:
                continue
            step = current - lower[-1]
            units = [i for per_layer in order[k] for i in per_layer[taken[k] : taken[k] + step]]
            cost = float((score[units] * params[units]).sum() / params[units].sum())
            steps.append((cost, k, units))
        # the cheapest step that does not overshoot the budget by more than it would fall short
        fitting = [s for s in sorted(steps, key=lambda s: s[0])
                   if removed + float(params[s[2]].sum()) - budget <= budget - removed]
        if not fitting:
            break
        _, k, units = fitting[0]
        remove[units] = True
        removed += float(params[units].sum())
        taken[k] += len(units) // len(layers)
    return remove
