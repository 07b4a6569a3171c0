"""Forward-only compensation of the output projections once units are removed: `none`, `bias` (FLAP's
bias shift) or `ls` (a least-squares refit toward the dense model), chosen by name."""

from __future__ import annotations

from torch import nn

from pruning.compensation.base import LS_TOKENS_PER_CHANNEL, Compensator, ExportChanges, choose_compensation
from pruning.compensation.bias import BiasShift
from pruning.compensation.corrections import OutputCorrections
from pruning.compensation.least_squares import LeastSquaresRefit
from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters.base import FamilyAdapter

COMPENSATORS: dict[str, type[Compensator]] = {"none": Compensator, "bias": BiasShift}


def make_compensator(
    name: str, probe: CalibrationProbe, adapter: FamilyAdapter, layers: list[nn.Module], ridge: float
) -> Compensator:
    """The compensator called `name` ("none", "bias" or "ls"), with its hooks' corrections."""
    corrections = OutputCorrections(probe.masks)
    if name == "ls":
        return LeastSquaresRefit(probe, adapter, corrections, layers, ridge)
    return COMPENSATORS[name](probe, adapter, corrections)


__all__ = [
    "LS_TOKENS_PER_CHANNEL",
    "BiasShift",
    "Compensator",
    "ExportChanges",
    "LeastSquaresRefit",
    "choose_compensation",
    "make_compensator",
]
