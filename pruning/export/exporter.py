"""What an export format is: the contract each one keeps, and the registry that names them.

A format registers itself with `@register_exporter` on its `Exporter` subclass (the built-in ones in
`pruning.export.formats`). The contract is torch-free: the API process validates settings and refuses
checkpoints through it at submit, without the engine; only `write` needs torch, and imports its writing
code when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pruning.errors import UsageError

if TYPE_CHECKING:
    import torch

    from pruning.model.adapters.base import FamilyAdapter
    from pruning.model.units import UnitSpace
    from pruning.report import LayerWidths, PruneReport
    from pruning.spec import PruneSettings, PruneSpec


@dataclass(frozen=True)
class WidthRule:
    """The per-layer widths a format can state, which the selection keeps to (`pruning.selection.width_rules`)
    or the job must ask for (`uniform`)."""

    mlp_multiple: int | None = None  # MLP widths in steps of this many channels, or none
    shared_kv_count: bool = False  # one KV-group count in every layer that keeps attention, or none
    uniform: bool = False  # the same widths in every layer only


@dataclass(frozen=True)
class ExportJob:
    """What a format writes: the checkpoint cut to the kept units, with the compensation's (and the
    recovery's) tensors and config changes, into `out_dir`."""

    model_dir: Path
    out_dir: Path
    adapter: FamilyAdapter
    space: UnitSpace
    keep: torch.Tensor  # [U] bool
    tensors: dict[str, torch.Tensor]  # full-size tensors replacing or adding to the checkpoint's
    config_updates: dict[str, Any]
    spec: PruneSpec


class Exporter:
    """One export format. Subclasses set `name` and `description` and implement `write` and the card's
    part; the refusals and the width rule default to none."""

    name: ClassVar[str]
    description: ClassVar[str]  # the export_format setting's help for this format
    # whether compensate=auto may pick a bias shift (a format that cannot carry one everywhere says no)
    carries_bias_shift: ClassVar[bool] = True
    card_tags: ClassVar[tuple[str, ...]] = ()  # the model card's Hub tags beside fwdprune's own

    def refuse_settings(self, settings: PruneSettings) -> None:
        """Raise ValueError for settings the format cannot carry, whatever the model (settings
        validation)."""

    def refuse(self, model_type: str, settings: PruneSettings, config: dict[str, Any] | None = None) -> None:
        """Refuse, before any work, a checkpoint of `model_type` the format cannot write; given its
        `config`, also one whose config lacks what the format writes (FwdpruneError)."""

    def width_rule(self, model_type: str) -> WidthRule:
        """The widths the format states for a model of `model_type`: any, by default."""
        return WidthRule()

    def write(self, job: ExportJob) -> None:
        raise NotImplementedError

    def card_layout(self, uniform: bool, layers: list[LayerWidths]) -> str:
        """How the written checkpoint states its widths, as the model card names it."""
        raise NotImplementedError

    def how_to_load(self, layout: str, auto_class: str) -> str:
        """The card's loading instructions for a checkpoint of `layout` (`card_layout`), as Markdown."""
        raise NotImplementedError

    def card_sections(self, report: PruneReport) -> list[str]:
        """Lines the card adds after how to load it (what else the format wrote beside the weights)."""
        return []


ExporterClass = TypeVar("ExporterClass", bound=type[Exporter])

EXPORTERS: dict[str, Exporter] = {}


def register_exporter(cls: ExporterClass) -> ExporterClass:
    """Class decorator: make the format `cls.name` available to every entry point (`export_format`)."""
    EXPORTERS[cls.name] = cls()
    return cls


def exporter_for(name: str) -> Exporter:
    """The registered format called `name`."""
    if name not in EXPORTERS:
        raise UsageError(f"unknown export_format {name!r}; available: {', '.join(EXPORTERS)}")
    return EXPORTERS[name]
