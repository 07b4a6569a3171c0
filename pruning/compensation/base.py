"""A job's compensation: what it changes once units are removed, how it is applied and exported.

A `Compensator` is fitted for a keep-vector, applied to the masked model while installed (forward hooks
of `pruning.compensation.corrections`, so int8 weights stay untouched and the report measures exactly
what is exported) and carried into the export as changed tensors. `make_compensator` builds the job's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from pruning.compensation.corrections import OutputCorrections
from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters.base import FamilyAdapter
from pruning.model.checkpoint import CheckpointReader
from pruning.model.units import UnitSpace

# least squares over C input channels needs well over C calibration tokens, or it fits their noise
LS_TOKENS_PER_CHANNEL = 8


@dataclass
class ExportChanges:
    """What compensation changes in the exported checkpoint: full-size tensors that replace or add to the
    original ones before slicing, and config fields."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]


class Compensator:
    """A job's compensation: fitted for a keep-vector, applied to the masked model while installed,
    exported as changed tensors. The base class compensates nothing. Each kind registers with
    `@register_compensator` under its `name`."""

    name: ClassVar[str] = "none"

    def __init__(
        self, probe: CalibrationProbe, adapter: FamilyAdapter, corrections: OutputCorrections
    ) -> None:
        self.probe, self.adapter, self.corrections = probe, adapter, corrections

    @classmethod
    def build(
        cls,
        probe: CalibrationProbe,
        adapter: FamilyAdapter,
        corrections: OutputCorrections,
        layers: list[nn.Module],
        ridge: float,
    ) -> Compensator:
        """The compensator for a job: its probe, family adapter, the hooks' corrections, the model's
        layers and the job's ridge (`compensation_ridge`), of which each kind takes what it uses."""
        return cls(probe, adapter, corrections)

    @property
    def applied(self) -> bool:
        """Whether the current fit changes anything (a bias shift finds no biased module on Mistral)."""
        return bool(self.corrections.shifts or self.corrections.refits)

    def fit(
        self,
        keep: torch.Tensor,
        sequences: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Fit for the model pruned to `keep` on `sequences` (default: the calibration set); the fit
        takes effect at once while installed. `progress` is told the fraction done as it goes."""

    def clear(self) -> None:
        """Undo the fit: the masked model as it is without compensation."""
        self.corrections.shifts.clear()
        self.corrections.refits.clear()

    def export_changes(self, checkpoint: CheckpointReader) -> ExportChanges:
        return ExportChanges({}, {})

    @contextmanager
    def installed(self) -> Iterator[Compensator]:
        """The corrections applied to the model's outputs for the duration."""
        with self.corrections.installed():
            yield self


CompensatorClass = TypeVar("CompensatorClass", bound=type[Compensator])

COMPENSATORS: dict[str, type[Compensator]] = {}


def register_compensator(cls: CompensatorClass) -> CompensatorClass:
    """Class decorator: the compensation `cls.name`, which `compensate` may name."""
    COMPENSATORS[cls.name] = cls
    return cls


register_compensator(Compensator)  # "none"


def choose_compensation(asked: str, method_default: str, space: UnitSpace, calibration_tokens: int) -> str:
    """`auto`: the least-squares refit when there are at least LS_TOKENS_PER_CHANNEL calibration tokens per
    input channel of the widest output projection (measured better there: docs/quality.md), else the
    method's own default (bias for flap, none for the others)."""
    if asked != "auto":
        return asked
    widest = max(group.channel_unit.numel() for group in space.groups)
    return "ls" if calibration_tokens >= LS_TOKENS_PER_CHANNEL * widest else method_default
