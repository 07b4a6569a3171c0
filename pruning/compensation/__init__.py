"""Forward-only compensation of the output projections once units are removed: `none`, `bias` (FLAP's
bias shift) or `ls` (a least-squares refit toward the dense model), chosen by name."""

from __future__ import annotations

from torch import nn

from pruning.compensation.base import (
    COMPENSATORS,
    LS_TOKENS_PER_CHANNEL,
    Compensator,
    ExportChanges,
    choose_compensation,
    register_compensator,
)
from pruning.compensation.bias import BiasShift
from pruning.compensation.corrections import OutputCorrections
from pruning.compensation.least_squares import LeastSquaresRefit
from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters.base import FamilyAdapter

BUILT_IN = (Compensator, BiasShift, LeastSquaresRefit)  # each registered where it is defined


def make_compensator(
    name: str, probe: CalibrationProbe, adapter: FamilyAdapter, layers: list[nn.Module], ridge: float
) -> Compensator:
    """The compensator called `name` ("none", "bias" or "ls"), with its hooks' corrections."""
    return COMPENSATORS[name].build(probe, adapter, OutputCorrections(probe.masks), layers, ridge)


__all__ = [
    "COMPENSATORS",
    "LS_TOKENS_PER_CHANNEL",
    "BiasShift",
    "Compensator",
    "ExportChanges",
    "LeastSquaresRefit",
    "choose_compensation",
    "make_compensator",
    "register_compensator",
]
