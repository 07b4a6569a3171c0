"""Which units to remove, given importances: globally, the same count in every layer, or within the
per-layer counts an export layout can express.

`select_global`, `select_uniform` and `select_layout` are pure functions over flat unit tensors;
`UnitSelector` holds a job's selection rules (widths, the counts a stock config or an export layout
allows) over its unit space. The round loop and the model live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pruning.adapters.base import UnitKind
from pruning.units import UnitSpace


def select_global(
    score: torch.Tensor, params: torch.Tensor, alive: torch.Tensor, budget: float
) -> torch.Tensor:
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
    allowed_counts: dict[UnitKind, list[int]],
) -> torch.Tensor:
    """Remove the same number of units of each kind from every layer, cheapest step first.

    A step takes a kind from its current per-layer count down to the next count in
    `allowed_counts[kind]` (ascending lists; stock configs cannot express every head count), removing
    in each layer its lowest-scored units. Steps are taken greedily by summed importance per parameter,
    skipping a step that would overshoot `budget` by more than it falls short. Returns a [U] bool mask.
    """
    layers = layer.unique().tolist()
    # per kind, per layer: alive unit indices sorted by score (lowest first)
    order: dict[UnitKind, list[list[int]]] = {}
    for k in allowed_counts:
        order[k] = []
        for lay in layers:
            idx = (alive & (layer == lay) & (kind == k)).nonzero().flatten()
            order[k].append(idx[torch.argsort(score[idx], stable=True)].tolist())
    taken = dict.fromkeys(allowed_counts, 0)  # units removed per layer so far, per kind
    remove = torch.zeros_like(alive)
    removed = 0.0
    while removed < budget:
        steps: list[tuple[float, UnitKind, list[int]]] = []
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
        fitting = [
            s
            for s in sorted(steps, key=lambda s: s[0])
            if removed + float(params[s[2]].sum()) - budget <= budget - removed
        ]
        if not fitting:
            break
        _, k, units = fitting[0]
        remove[units] = True
        removed += float(params[units].sum())
        taken[k] += len(units) // len(layers)
    return remove


@dataclass(frozen=True)
class KindRule:
    """The per-layer unit counts of one kind that an export layout can express.

    `counts`: ascending counts a layer may keep (0 among them where the layout can drop the block whole);
    a layer wider than the last one (the layout cannot state its original width) is cut to it first.
    `shared`: every layer that keeps any unit of the kind keeps the same count, so a step below that
    count moves all those layers together, while a single layer may only drop to 0.
    """

    counts: tuple[int, ...]
    shared: bool


def within_multiples(rule: KindRule, multiple: int, full: int) -> KindRule:
    """`rule` keeping only counts that are multiples of `multiple` (0 included), and the layer's full
    count, which is the original width whatever it is."""
    counts = tuple(c for c in rule.counts if c % multiple == 0 or c == full)
    return KindRule(counts, rule.shared)


def _layout_steps(order: list[list[int]], taken: list[int], rule: KindRule) -> list[dict[int, int]]:
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


def select_layout(
    score: torch.Tensor,
    params: torch.Tensor,
    alive: torch.Tensor,
    layer: torch.Tensor,
    kind: torch.Tensor,
    budget: float,
    rules: dict[UnitKind, KindRule],
) -> torch.Tensor:
    """Remove units in steps that keep every layer's counts expressible by `rules` (per kind), cheapest
    step first: a step removes, in the layers it touches, their lowest-scored units. Steps are taken
    greedily by summed importance per parameter, skipping one that would overshoot `budget` by more than
    it falls short (as `select_uniform`). Returns a [U] bool mask of the units to remove now."""
    layers = layer.unique().tolist()
    # per kind, per layer: alive unit indices sorted by score (lowest first)
    order: dict[UnitKind, list[list[int]]] = {}
    for k in rules:
        order[k] = []
        for lay in layers:
            idx = (alive & (layer == lay) & (kind == k)).nonzero().flatten()
            order[k].append(idx[torch.argsort(score[idx], stable=True)].tolist())
    taken = {k: [0] * len(layers) for k in rules}  # units removed per layer so far, per kind
    remove = torch.zeros_like(alive)
    removed = 0.0
    for k, rule in rules.items():  # what no layout can keep goes first, whatever the budget
        for position, units in enumerate(order[k]):
            excess = order[k][position][: max(0, len(units) - rule.counts[-1])]
            remove[excess] = True
            removed += float(params[excess].sum())
            taken[k][position] += len(excess)
    while removed < budget:
        steps: list[tuple[float, UnitKind, dict[int, int], list[int]]] = []
        for k, rule in rules.items():
            for step in _layout_steps(order[k], taken[k], rule):
                units = [i for p, n in step.items() for i in order[k][p][taken[k][p] : taken[k][p] + n]]
                cost = float((score[units] * params[units]).sum() / params[units].sum())
                steps.append((cost, k, step, units))
        # the cheapest step that does not overshoot the budget by more than it would fall short
        fitting = [
            s
            for s in sorted(steps, key=lambda s: s[0])
            if removed + float(params[s[3]].sum()) - budget <= budget - removed
        ]
        if not fitting:
            break
        _, k, step, units = fitting[0]
        remove[units] = True
        removed += float(params[units].sum())
        for position, count in step.items():
            taken[k][position] += count
    return remove


@dataclass(frozen=True)
class UnitSelector:
    """A job's selection rules: which units to remove for a budget, by lowest score per parameter.

    `uniform`: the same number of units of each kind from every layer, at counts in `allowed_counts`
    (per kind, ascending: a stock config cannot express every head count); otherwise one global ranking,
    or, where the export layout limits per-layer widths, steps that keep every layer within `layout`.
    """

    space: UnitSpace
    uniform: bool
    allowed_counts: dict[UnitKind, list[int]]
    layout: dict[UnitKind, KindRule] | None = None  # per kind: the counts a layer may keep; None: any

    def select(
        self, score_per_param: torch.Tensor, alive: torch.Tensor, budget: float, uniform: bool | None = None
    ) -> torch.Tensor:
        """Units to remove now: [U] bool, about `budget` parameters, by lowest score per parameter.
        `uniform` overrides the job's widths for this call."""
        space = self.space
        if self.uniform if uniform is None else uniform:
            return select_uniform(
                score_per_param, space.params, alive, space.layer, space.kind, budget, self.allowed_counts
            )
        if self.layout is not None:
            return select_layout(
                score_per_param, space.params, alive, space.layer, space.kind, budget, self.layout
            )
        return select_global(score_per_param, space.params, alive, budget)

    def select_per_kind(
        self,
        score_per_param: torch.Tensor,
        alive: torch.Tensor,
        budget: float,
        uniform: bool | None = None,
        attention_ratio: float = 1.0,
    ) -> torch.Tensor:
        """Attention loses `attention_ratio` times the overall fraction of parameters removed (1: each
        kind the same fraction), MLP makes up the rest of `budget`; units ranked within their kind
        (widths as `select`). The attention target is cumulative over calls, so a round too small for
        one whole head step leaves it to a later round instead of skipping it for good. Attention goes
        first: heads are large units, so MLP makes up the difference."""
        params = self.space.params
        attention, mlp = self.space.kind == UnitKind.ATTN, self.space.kind == UnitKind.MLP
        removed_before = float(params[~alive].sum())
        fraction = (removed_before + budget) / float(params.sum())  # overall, once this call is done
        attention_target = min(attention_ratio * fraction, 1.0) * float(params[attention].sum()) - float(
            params[~alive & attention].sum()
        )
        remove = self.select(score_per_param, alive & attention, max(attention_target, 0.0), uniform)
        left = budget - float(params[remove].sum())
        return remove | self.select(score_per_param, alive & mlp, max(left, 0.0), uniform)
