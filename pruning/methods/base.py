"""What a method is given and what it returns.

A method only decides which units to keep. It measures the model through the calibration probe, removes
units by the job's selection rules and, where the job refits the output projections afterwards, may
judge its candidates with that refit; loading, hooks, compensation, evaluation and export are done for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pruning.compensation import LeastSquaresRefit
from pruning.probe import CalibrationProbe
from pruning.selection import UnitSelector
from pruning.spec import MethodOptions
from pruning.units import UnitSpace

ProgressSink = Callable[[dict[str, Any]], None]  # receives {"fraction": ..., "eta_s": ..., ...}


@dataclass
class MethodResult:
    keep: torch.Tensor  # [U] bool, the units that stay
    importance: torch.Tensor  # [U] float64, the method's estimate for each unit (loss units or its own)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodContext:
    """The problem a method solves and the instruments it may use; no behaviour of its own."""

    space: UnitSpace
    selector: UnitSelector  # the job's selection rules (widths, counts a config allows)
    probe: CalibrationProbe  # forward passes over the calibration set, and their statistics
    target_params: float  # prunable parameters to remove in total
    seed: int
    refit: LeastSquaresRefit | None = None  # the refit the job applies after selection, if any
    progress: ProgressSink = lambda event: None


class PruningMethod:
    """One scoring method. Subclasses implement `run`; the registry maps names to subclasses."""

    name: ClassVar[str]
    default_compensation: ClassVar[str] = "none"  # what compensate="auto" means for this method

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    def run(self, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError


class Eta:
    """Seconds left, from the average time per finished step."""

    def __init__(self, total_steps: int) -> None:
        self.total, self.done, self.start = total_steps, 0, time.perf_counter()

    def step(self) -> float:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        return elapsed / self.done * (self.total - self.done)
