"""The per-layer unit counts an output layout can state, in the selector's terms.

A layout that limits widths (the Nemotron-NAS export, or widths kept at multiples of a kernel tile or a
tensor-parallel degree) is a `KindRule` per unit kind; `pruning.selection.greedy.select_layout` removes
units only in steps that keep every layer within it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitSpace

# Nemotron-NAS states MLP widths through `ffn_mult`, which the loaders round up to a multiple of this
# (vLLM, SGLang, TensorRT-LLM and llama.cpp alike); the remote code shipped with the export agrees
NEMOTRON_FFN_MULTIPLE = 256


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


def nemotron_mlp_units_per_step(space: UnitSpace) -> int:
    """MLP units that make up one width step Nemotron-NAS can state (NEMOTRON_FFN_MULTIPLE channels)."""
    if NEMOTRON_FFN_MULTIPLE % space.mlp_block:
        raise ValueError(f"MLP units of {space.mlp_block} channels do not tile {NEMOTRON_FFN_MULTIPLE}")
    return NEMOTRON_FFN_MULTIPLE // space.mlp_block


def nemotron_rules(space: UnitSpace, kv_counts: list[int]) -> dict[UnitKind, KindRule]:
    """The per-layer unit counts Nemotron-NAS expresses: attention at one KV-group count shared by every
    layer that keeps attention (`kv_counts`: those a config can state) or none; MLP at any multiple of
    256 channels up to the layer's width, chosen per layer, or none."""
    mlp_units = space.group_of(0, UnitKind.MLP).count
    step = nemotron_mlp_units_per_step(space)
    return {
        UnitKind.ATTN: KindRule(tuple([0, *kv_counts]), shared=True),
        UnitKind.MLP: KindRule(tuple(range(0, mlp_units + 1, step)), shared=False),
    }


def job_rules(
    space: UnitSpace,
    kv_counts: list[int],
    nemotron: bool,
    mlp_multiple_of: int | None,
    kv_multiple_of: int | None,
) -> dict[UnitKind, KindRule] | None:
    """The per-layer counts a job's output can express: Nemotron-NAS's (`nemotron`), within the
    multiples of MLP channels and KV groups asked for; None where any widths do. `kv_counts`: the
    KV-group counts a config can state."""
    rules = nemotron_rules(space, kv_counts) if nemotron else None
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
