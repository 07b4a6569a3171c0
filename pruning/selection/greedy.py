"""Which units to remove, given importances: globally, the same count in every layer, or within the
per-layer counts an export format (or the job) can state. Pure functions over flat unit tensors:
score: [U] importance per parameter; params: [U]; alive: [U] bool; layer, kind: [U] integer labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pruning.model.adapters.base import UnitKind
from pruning.selection.width_rules import KindRule

# a step the greedy loop may take: the units it removes, and what to record once it is taken
Step = tuple[list[int], Callable[[], None]]


def select_global(
    score: torch.Tensor, params: torch.Tensor, alive: torch.Tensor, budget: float
) -> torch.Tensor:
    """Remove alive units in increasing order of `score` until `budget` parameters are removed.

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


def _by_score(
    score: torch.Tensor, alive: torch.Tensor, layer: torch.Tensor, kind: torch.Tensor, kinds: list[UnitKind]
) -> dict[UnitKind, list[list[int]]]:
    """Per kind, per layer (ascending): the alive unit indices, lowest score first."""
    order: dict[UnitKind, list[list[int]]] = {}
    for k in kinds:
        order[k] = []
        for lay in layer.unique().tolist():
            idx = (alive & (layer == lay) & (kind == k)).nonzero().flatten()
            order[k].append(idx[torch.argsort(score[idx], stable=True)].tolist())
    return order


def _take_cheapest_steps(
    score: torch.Tensor,
    params: torch.Tensor,
    remove: torch.Tensor,
    budget: float,
    steps: Callable[[], list[Step]],
) -> None:
    """Take, one at a time, the cheapest of the `steps()` on offer (by summed importance per parameter of
    the units it removes) that does not overshoot `budget` by more than it would fall short, marking its
    units in `remove` [U] bool (which may already hold some), until none fits."""
    removed = float(params[remove].sum())
    while removed < budget:
        costed = [
            (float((score[units] * params[units]).sum() / params[units].sum()), units, taken)
            for units, taken in steps()
        ]
        fitting = [
            step
            for step in sorted(costed, key=lambda step: step[0])
            if removed + float(params[step[1]].sum()) - budget <= budget - removed
        ]
        if not fitting:
            return
        _, units, taken = fitting[0]
        remove[units] = True
        removed += float(params[units].sum())
        taken()


def select_uniform(
    score: torch.Tensor,
    params: torch.Tensor,
    alive: torch.Tensor,
    layer: torch.Tensor,
    kind: torch.Tensor,
    budget: float,
    allowed_counts: dict[UnitKind, list[int]],
) -> torch.Tensor:
    """Remove the same number of units of each kind from every layer, cheapest step first.

    A step takes a kind from its current per-layer count down to the next count in
    `allowed_counts[kind]` (ascending lists; stock configs cannot express every head count), removing
    in each layer its lowest-scored units. Returns a [U] bool mask.
    """
    order = _by_score(score, alive, layer, kind, list(allowed_counts))
    taken = dict.fromkeys(allowed_counts, 0)  # units removed per layer so far, per kind

    def steps() -> list[Step]:
        offered: list[Step] = []
        for k, counts in allowed_counts.items():
            current = len(order[k][0]) - taken[k]
            lower = [c for c in counts if c < current]
            if lower:
                step = current - lower[-1]
                units = [i for per_layer in order[k] for i in per_layer[taken[k] : taken[k] + step]]
                offered.append((units, _advance(taken, k, step)))
        return offered

    remove = torch.zeros_like(alive)
    _take_cheapest_steps(score, params, remove, budget, steps)
    return remove


def _advance(taken: dict[UnitKind, int], k: UnitKind, step: int) -> Callable[[], None]:
    def record() -> None:
        taken[k] += step

    return record


def _steps_within(order: list[list[int]], taken: list[int], rule: KindRule) -> list[dict[int, int]]:
    """The steps one kind may take next under `rule`: each maps a layer position to how many more of
    its lowest-scored alive units go. `order`: per layer, alive units by score; `taken`: removed so far."""
    current = [len(units) - gone for units, gone in zip(order, taken, strict=True)]
    steps: list[dict[int, int]] = []
    if not rule.shared:
        for position, count in enumerate(current):
            lower = [c for c in rule.counts if c < count]
            if lower:
                steps.append({position: count - lower[-1]})
        return steps
    live = [position for position, count in enumerate(current) if count > 0]
    if not live:
        return steps
    lower = [c for c in rule.counts if c < max(current[p] for p in live)]
    if lower:  # every live layer down to the next shared count
        steps.append({p: current[p] - lower[-1] for p in live if current[p] > lower[-1]})
    if 0 in rule.counts:  # or one layer's block removed whole
        steps.extend({p: current[p]} for p in live)
    return steps


def select_within_rules(
    score: torch.Tensor,
    params: torch.Tensor,
    alive: torch.Tensor,
    layer: torch.Tensor,
    kind: torch.Tensor,
    budget: float,
    rules: dict[UnitKind, KindRule],
) -> torch.Tensor:
    """Remove units in steps that keep every layer's counts expressible by `rules` (per kind), cheapest
    step first: a step removes, in the layers it touches, their lowest-scored units. Returns a [U] bool
    mask of the units to remove now."""
    order = _by_score(score, alive, layer, kind, list(rules))
    taken = {k: [0] * len(order[k]) for k in rules}  # units removed per layer so far, per kind
    remove = torch.zeros_like(alive)
    for k, rule in rules.items():  # what no rule can keep goes first, whatever the budget
        for position, units in enumerate(order[k]):
            excess = units[: max(0, len(units) - rule.counts[-1])]
            remove[excess] = True
            taken[k][position] += len(excess)

    def steps() -> list[Step]:
        offered: list[Step] = []
        for k, rule in rules.items():
            for step in _steps_within(order[k], taken[k], rule):
                units = [i for p, n in step.items() for i in order[k][p][taken[k][p] : taken[k][p] + n]]
                offered.append((units, _advance_layers(taken[k], step)))
        return offered

    _take_cheapest_steps(score, params, remove, budget, steps)
    return remove


def _advance_layers(taken: list[int], step: dict[int, int]) -> Callable[[], None]:
    def record() -> None:
        for position, count in step.items():
            taken[position] += count

    return record
