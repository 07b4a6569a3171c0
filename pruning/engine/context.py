"""What a job's settings mean for its method: the selection rules, the unit size and the context a method
is given."""

from __future__ import annotations

import math
from typing import Any

from pruning.compensation import LeastSquaresRefit
from pruning.engine.run import Run
from pruning.methods import MethodContext
from pruning.model.adapters import FamilyAdapter, UnitKind
from pruning.model.units import default_mlp_block
from pruning.selection import UnitSelector
from pruning.selection.layouts import NEMOTRON_FFN_MULTIPLE, job_rules
from pruning.spec import PruneSpec


def method_context(run: Run) -> MethodContext:
    """What the method is given: the job's selection rules, the probe, the budget and, if the job refits
    the output projections afterwards, that refit."""
    spec, space = run.spec, run.space
    allowed_counts = {
        UnitKind.ATTN: run.subject.adapter.uniform_kv_counts(run.subject.loaded.model.config),
        UnitKind.MLP: list(range(1, space.group_of(0, UnitKind.MLP).count)),
    }
    layout = job_rules(
        space,
        allowed_counts[UnitKind.ATTN],
        nemotron=spec.export_format == "nemotron-nas",
        mlp_multiple_of=spec.mlp_multiple_of,
        kv_multiple_of=spec.kv_multiple_of,
    )
    if layout is not None:  # uniform widths too must be ones the layout can state
        allowed_counts = {
            kind: [c for c in allowed_counts[kind] if c in rule.counts] for kind, rule in layout.items()
        }
    refit = run.compensator if isinstance(run.compensator, LeastSquaresRefit) else None
    return MethodContext(
        space=space,
        selector=UnitSelector(space, spec.uniform, allowed_counts, layout),
        probe=run.probe,
        target_params=max(spec.targets) * float(space.params.sum()),
        seed=spec.seed,
        refit=refit,
        progress=run.instruments.progress,
        world=run.world,
    )


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
