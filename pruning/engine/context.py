"""What a job's settings mean for its method: the selection rules, the unit size and the context a method
is given."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pruning.compensation import LeastSquaresRefit
from pruning.engine.run import Run
from pruning.errors import UsageError
from pruning.methods import MethodContext
from pruning.model.adapters import FamilyAdapter, UnitKind
from pruning.model.units import UnitSpace, default_mlp_block
from pruning.selection import UnitSelector
from pruning.selection.layouts import NEMOTRON_FFN_MULTIPLE, any_width, job_rules
from pruning.spec import PruneSpec


def method_context(run: Run) -> MethodContext:
    """What the method is given: the job's selection rules, the probe, the budget and, if the job refits
    the output projections afterwards, that refit."""
    spec, space = run.spec, run.space
    allowed_counts = uniform_counts(
        space, run.subject.adapter.uniform_kv_counts(run.subject.loaded.model.config)
    )
    layout = job_rules(
        space,
        allowed_counts[UnitKind.ATTN],
        nemotron=spec.export_format == "nemotron-nas",
        mlp_multiple_of=spec.mlp_multiple_of,
        kv_multiple_of=spec.kv_multiple_of,
    )
    if layout is None and UnitKind.EXPERT in space.kinds:  # experts always keep top-k or none
        layout = any_width(space)
    if layout is not None:  # uniform widths too must be ones the layout can state
        allowed_counts = {
            kind: [c for c in allowed_counts[kind] if c in rule.counts] for kind, rule in layout.items()
        }
    refit = run.compensator if isinstance(run.compensator, LeastSquaresRefit) else None
    return MethodContext(
        space=space,
        selector=UnitSelector(
            space, spec.uniform, allowed_counts, layout, removable_units(space, spec.unit_kinds)
        ),
        probe=run.probe,
        target_params=max(spec.targets) * float(space.params.sum()),
        seed=spec.seed,
        refit=refit,
        progress=run.instruments.progress,
        world=run.world,
    )


def removable_units(space: UnitSpace, kinds: Sequence[str] | None) -> torch.Tensor | None:
    """[U] bool, the units of the kinds the job may remove (None: every kind)."""
    if kinds is None:
        return None
    labels = {kind.label: kind for kind in space.kinds}
    if not set(kinds) & set(labels):
        raise UsageError(f"unit_kinds {kinds} names no kind of unit this model has ({', '.join(labels)})")
    return torch.isin(space.kind, torch.tensor([int(labels[k]) for k in kinds if k in labels]))


def uniform_counts(space: UnitSpace, kv_counts: list[int]) -> dict[UnitKind, list[int]]:
    """Per kind, the counts every layer may keep under uniform widths (`kv_counts`: the KV-group counts a
    stock config states); experts from the router's top-k up (a stock config has no layer without)."""
    counts = {UnitKind.ATTN: kv_counts}
    if UnitKind.MLP in space.kinds:
        counts[UnitKind.MLP] = list(range(1, space.group_of(0, UnitKind.MLP).count))
    if UnitKind.EXPERT in space.kinds:
        counts[UnitKind.EXPERT] = list(
            range(space.experts_per_token, space.group_of(0, UnitKind.EXPERT).count)
        )
    return counts


def mlp_block(spec: PruneSpec, adapter: FamilyAdapter, config: Any) -> int | None:
    """MLP channels per unit: as asked, else by model size (None: `pruning.model.units` picks); uniform
    widths need a divisor of the width, the nemotron-nas layout one of the 256-channel steps its widths
    come in."""
    intermediate = adapter.layer_shapes(config)[0].intermediate
    block = spec.mlp_block or default_mlp_block(intermediate)
    if spec.mlp_multiple_of is not None:  # whole units must make up every multiple
        block = math.gcd(block, spec.mlp_multiple_of)
    if spec.export_format == "nemotron-nas":
        return math.gcd(block, NEMOTRON_FFN_MULTIPLE)
    if not spec.uniform:
        return block if spec.mlp_multiple_of is not None else spec.mlp_block
    return math.gcd(block, intermediate)
