"""What a method is given and what it returns.

A method only decides which units to keep. It measures the model through the calibration probe, removes
units by the job's selection rules and, where the job refits the output projections afterwards, may
judge its candidates with that refit; loading, hooks, compensation, evaluation and export are done for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import torch

from pruning.compensation import LeastSquaresRefit
from pruning.measure.probe import CalibrationProbe
from pruning.methods.options import MethodOptions
from pruning.model.units import UnitSpace
from pruning.runtime.distributed import World
from pruning.runtime.progress import JobProgress
from pruning.selection import UnitSelector


@dataclass
class MethodResult:
    keep: torch.Tensor  # [U] bool, the units that stay
    importance: torch.Tensor  # [U] float64, the method's estimate for each unit (loss units or its own)
    details: dict[str, Any] = field(default_factory=dict)


FinishSize = Callable[[], MethodResult]  # one size's result, finished when called


def _bound(run: Callable[[MethodContext], MethodResult], ctx: MethodContext) -> FinishSize:
    return lambda: run(ctx)


@dataclass(frozen=True)
class MethodContext:
    """The problem a method solves and the instruments it may use; no behaviour of its own."""

    space: UnitSpace
    selector: UnitSelector  # the job's selection rules (widths, counts a config allows)
    probe: CalibrationProbe  # forward passes over the calibration set, and their statistics
    target_params: float  # prunable parameters to remove in total
    seed: int
    refit: LeastSquaresRefit | None = None  # the refit the job applies after selection, if any
    # where the method reports how far it is; under a time limit (its deadline) it also sizes the work
    progress: JobProgress = field(default_factory=lambda: JobProgress(lambda event: None))
    # the ranks sharing the scoring, each with a replica of the model (one: this process alone; only
    # bonsai's jobs run on several)
    world: World = field(default_factory=World)


class PruningMethod:
    """One scoring method. Subclasses implement `run` and register with `@register_method`
    (`pruning.methods.registry`); the class variables below say what the engine may do with them."""

    name: ClassVar[str]
    default_compensation: ClassVar[str] = "none"  # what compensate="auto" means for this method
    # its scoring splits across ranks, each with a replica of the model (bonsai's sub-models): a job on
    # several GPUs gives it one replica per GPU where each holds the model
    replicated_scoring: ClassVar[bool] = False
    # it sizes its scoring to the job's time limit as it goes, so the plan gives the scoring what the
    # limit leaves (time_limit) or at most that (max_time)
    paced_by_deadline: ClassVar[bool] = False

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    def run(self, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError

    def run_sizes(self, ctx: MethodContext, params_to_remove: list[float]) -> list[FinishSize]:
        """Several sizes from one scoring: `params_to_remove`, ascending, are each size's prunable
        parameters to remove. Does the work the sizes share now and returns, per size, what finishes its
        result (the work that size alone needs, run when its turn comes). By default each size is a run
        of its own."""
        return [_bound(self.run, replace(ctx, target_params=params)) for params in params_to_remove]

    def planned_work(
        self, sequences: int, seq_len: int, refit: bool, replicas: int = 1, units: int = 0
    ) -> dict[str, float]:
        """Forward-token equivalents of the method's work by stage (`scoring`, `search`) for `sequences`
        calibration sequences of `seq_len` tokens, `refit` telling whether a least-squares refit follows,
        as one replica's time: the work the method shares across `replicas` counts once per replica;
        `units`: the model's prunable units.
        By default one pass over the calibration set (the statistics most methods gather)."""
        return {"scoring": float(sequences * seq_len)}


MethodClass = TypeVar("MethodClass", bound=type[PruningMethod])

METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: MethodClass) -> MethodClass:
    """Class decorator: the method `cls.name`, made with its options (`pruning.methods.options`, where
    its name must be registered too, torch-free, for the entry points to offer it)."""
    METHODS[cls.name] = cls
    return cls
