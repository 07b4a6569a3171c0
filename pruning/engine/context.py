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
from pruning.export.formats import WidthRule, exporter_for
from pruning.methods.base import MethodContext
from pruning.model.adapters import FamilyAdapter, UnitKind
from pruning.model.units import UnitSpace, default_mlp_block
from pruning.selection import UnitSelector
from pruning.selection.width_rules import any_width, job_rules
from pruning.spec import PruneSpec


def method_context(run: Run) -> MethodContext:
    """What the method is given: the job's selection rules, the probe, the budget and, if the job refits
    the output projections afterwards, that refit."""
    spec, space = run.spec, run.space
    allowed_counts = uniform_counts(
        space, run.subject.adapter.uniform_kv_counts(run.subject.loaded.model.config)
    )
    widths = export_widths(spec, run.subject.loaded.model.config)
    rules = job_rules(
        space,
        allowed_counts[UnitKind.ATTN],
        mlp_step=widths.mlp_multiple,
        shared_kv_count=widths.shared_kv_count,
        mlp_multiple_of=spec.mlp_multiple_of,
        kv_multiple_of=spec.kv_multiple_of,
    )
    if rules is None and UnitKind.EXPERT in space.kinds:  # experts always keep top-k or none
        rules = any_width(space)
    if rules is not None:  # uniform widths too must be ones the output can state
        allowed_counts = {
            kind: [c for c in allowed_counts[kind] if c in rule.counts] for kind, rule in rules.items()
        }
    refit = run.compensator if isinstance(run.compensator, LeastSquaresRefit) else None
    return MethodContext(
        space=space,
        selector=UnitSelector(
            space, spec.uniform, allowed_counts, rules, removable_units(space, spec.unit_kinds)
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


def export_widths(spec: PruneSpec, config: Any) -> WidthRule:
    """The widths the job's export format states for this model (`config`: its transformers config)."""
    return exporter_for(spec.export_format).width_rule(config.model_type)


def mlp_block(spec: PruneSpec, adapter: FamilyAdapter, config: Any) -> int | None:
    """MLP channels per unit: as asked, else by model size (None: `pruning.model.units` picks); uniform
    widths need a divisor of the width, a format that states MLP widths in steps (nemotron-nas's 256
    channels) one of those steps."""
    intermediate = adapter.layer_shapes(config)[0].intermediate
    block = spec.mlp_block or default_mlp_block(intermediate)
    if spec.mlp_multiple_of is not None:  # whole units must make up every multiple
        block = math.gcd(block, spec.mlp_multiple_of)
    mlp_step = export_widths(spec, config).mlp_multiple
    if mlp_step is not None:
        return math.gcd(block, mlp_step)
    if not spec.uniform:
        return block if spec.mlp_multiple_of is not None else spec.mlp_block
    return math.gcd(block, intermediate)
