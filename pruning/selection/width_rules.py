"""The per-layer unit counts a job's output can state, in the selector's terms.

Where an export format limits widths (Nemotron-NAS: one KV-group count shared by the layers that keep
attention, MLP widths in steps of 256 channels), or the job keeps widths at multiples of a kernel tile or
a tensor-parallel degree, each unit kind gets a `KindRule`; `pruning.selection.greedy.select_within_rules`
removes units only in steps that keep every layer within it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitSpace


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


def any_width(space: UnitSpace) -> dict[UnitKind, KindRule]:
    """The hf layout: any per-layer count, a layer emptied whole included; a mixture of experts keeps at
    least the experts its router picks per token, or none."""
    rules = {
        kind: KindRule(tuple(range(space.group_of(0, kind).count + 1)), shared=False) for kind in space.kinds
    }
    if UnitKind.EXPERT in rules:
        rules[UnitKind.EXPERT] = expert_rule(space)
    return rules


def expert_rule(space: UnitSpace) -> KindRule:
    """The expert counts a layer may keep: none (its block removed whole), or from the router's top-k up
    to all of them (fewer than top-k could not fill the router's picks)."""
    experts = space.group_of(0, UnitKind.EXPERT).count
    return KindRule((0, *range(space.experts_per_token, experts + 1)), shared=False)


def mlp_units_per_step(space: UnitSpace, channels: int) -> int:
    """MLP units that make up one width step of `channels` channels (the unit size must tile it)."""
    if channels % space.mlp_block:
        raise ValueError(f"MLP units of {space.mlp_block} channels do not tile {channels}")
    return channels // space.mlp_block


def format_rules(
    space: UnitSpace, kv_counts: list[int], mlp_step: int | None, shared_kv_count: bool
) -> dict[UnitKind, KindRule]:
    """The per-layer unit counts a format states: attention, with `shared_kv_count`, at one KV-group
    count shared by every layer that keeps attention (`kv_counts`: those a config can state) or none;
    MLP, with `mlp_step`, at any multiple of that many channels up to the layer's width, chosen per
    layer, or none; any count otherwise."""
    rules = any_width(space)
    if shared_kv_count:
        rules[UnitKind.ATTN] = KindRule(tuple([0, *kv_counts]), shared=True)
    if mlp_step is not None:
        mlp_units = space.group_of(0, UnitKind.MLP).count
        step = mlp_units_per_step(space, mlp_step)
        rules[UnitKind.MLP] = KindRule(tuple(range(0, mlp_units + 1, step)), shared=False)
    return rules


def job_rules(
    space: UnitSpace,
    kv_counts: list[int],
    mlp_step: int | None,
    shared_kv_count: bool,
    mlp_multiple_of: int | None,
    kv_multiple_of: int | None,
) -> dict[UnitKind, KindRule] | None:
    """The per-layer counts a job's output can express: its export format's (`format_rules`), within
    the multiples of MLP channels and KV groups asked for; None where any widths do. `kv_counts`: the
    KV-group counts a config can state."""
    limited = mlp_step is not None or shared_kv_count
    rules = format_rules(space, kv_counts, mlp_step, shared_kv_count) if limited else None
    if mlp_multiple_of is None and kv_multiple_of is None:
        return rules
    if rules is None:  # the hf layout states any per-layer width, a layer emptied whole included
        rules = any_width(space)
    steps = {UnitKind.ATTN: kv_multiple_of or 1}
    if UnitKind.MLP in space.kinds:
        steps[UnitKind.MLP] = _mlp_units_per_multiple(mlp_multiple_of, space)
    return {
        kind: within_multiples(rule, steps.get(kind, 1), space.group_of(0, kind).count)
        for kind, rule in rules.items()
    }


def _mlp_units_per_multiple(channels: int | None, space: UnitSpace) -> int:
    """MLP units that make `channels` channels (the job's unit size divides it)."""
    if channels is None:
        return 1
    block = int(space.group_of(0, UnitKind.MLP).channel_unit.bincount().max())  # channels per unit
    return max(channels // block, 1)
