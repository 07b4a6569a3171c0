"""What a job's stages share: the request, the model under pruning with its data, the method and the
compensation chosen for it, and the instruments every stage reports through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pruning import events
from pruning.compensation import Compensator
from pruning.events import EventSink
from pruning.measure.monitor import StageMonitor
from pruning.measure.probe import CalibrationProbe
from pruning.methods.base import PruningMethod
from pruning.model.adapters import FamilyAdapter
from pruning.model.data import CalibrationSet
from pruning.model.loading import LoadedModel
from pruning.model.units import UnitSpace
from pruning.recovery.recover import Recovered, fused_in
from pruning.runtime.distributed import World
from pruning.runtime.progress import JobProgress
from pruning.spec import PruneSpec

# calibration sequences the report's calibration loss is measured on, at most: 4,096 tokens at 256 give
# a mean loss to about a percent
LOSS_SEQUENCES = 16


@dataclass
class Quality:
    """Quality of a model on the job's data: the objective's figures on the evaluation text (perplexity,
    or embedding cosine for encoders) and its mean loss on the calibration text."""

    figures: dict[str, float]
    calibration_loss: float


@dataclass
class Instruments:
    """Where a job announces its stages and events (`emit`), times them and samples their memory
    (`monitor`), and tracks its progress against its plan (`progress`)."""

    emit: EventSink
    monitor: StageMonitor
    progress: JobProgress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.emit(events.stage(name))
        self.progress.enter(name)
        with self.monitor.stage(name):
            yield

    def warn(self, message: str) -> None:
        self.emit(events.warning(message))


@dataclass
class Subject:
    """The model under pruning: its checkpoint, family adapter, loaded weights, calibration and evaluation
    text, and the probe (unit masks, objective, output weights) every measurement goes through."""

    model_dir: Path
    adapter: FamilyAdapter
    loaded: LoadedModel
    data: CalibrationSet
    probe: CalibrationProbe

    @property
    def space(self) -> UnitSpace:
        return self.probe.space


@dataclass
class Run:
    """A job in progress: what was asked, on what, by which method, and how it went so far."""

    spec: PruneSpec
    budget: str  # the named budget the job runs at (`auto` resolved)
    subject: Subject
    method: PruningMethod
    compensator: Compensator
    instruments: Instruments
    dense: Quality  # the dense model's quality (rank 0's; NaN on the others)
    planned_s: float = 0.0  # the whole job's expected duration once the dense model was measured
    world: World = field(default_factory=World)  # the ranks scoring with a replica each; rank 0 does the rest
    recovered: Recovered | None = None  # what the recovery did and kept, when the job asked for one

    @property
    def space(self) -> UnitSpace:
        return self.subject.space

    @property
    def probe(self) -> CalibrationProbe:
        return self.subject.probe

    @property
    def emit(self) -> EventSink:
        return self.instruments.emit

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The unit masks and the compensation's corrections hooked onto the model for the duration."""
        with self.probe.masks.installed(), self.compensator.installed():
            yield

    @contextmanager
    def recovery_installed(self) -> Iterator[None]:
        """The recovery's merged changes on the model for the duration, if it kept any: hooked in, and
        fused into their maps where they can be (float maps compute their kept part in one matmul)."""
        if self.recovered is None or self.recovered.deltas is None:
            yield
            return
        with fused_in(self.recovered.deltas):
            yield


def measure(probe: CalibrationProbe, data: CalibrationSet, keep: torch.Tensor) -> Quality:
    """The model pruned to `keep` (with whatever corrections are installed) on the job's data."""
    return Quality(probe.quality(keep, data.evaluation), probe.mean_loss(keep, loss_sequences(data)))


def loss_sequences(data: CalibrationSet) -> torch.Tensor:
    """The calibration sequences the report's calibration loss is measured on: as many as the evaluation
    has, at most LOSS_SEQUENCES (a diagnostic beside the quality figure; on a CPU each of the two
    evaluations would otherwise spend half its time on it)."""
    return data.calibration[: min(data.evaluation.shape[0], LOSS_SEQUENCES)]
