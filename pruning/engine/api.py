"""`prune(spec)`: the job's stages in order (`pruning.engine.stages`), from a model on disk to a compact
one.

A job on several GPUs (`spec.gpus`) runs as one process (rank) per GPU. When each GPU holds the model,
every rank has a replica and bonsai's sub-models are shared across them (`pruning.runtime.distributed`),
rank 0 doing everything else; when one cannot hold it, rank 0 alone goes on with the model spread
across all the GPUs (`pruning.runtime.devices`), the others leaving at once.
"""

from __future__ import annotations

import time
from typing import Any, overload

from pruning.checkpoint_checks import check_checkpoint
from pruning.engine import stages
from pruning.engine.placement import job_gpus, place_model
from pruning.engine.run import Run
from pruning.errors import UsageError
from pruning.events import EventSink, silent
from pruning.model.data import MIN_TRAINING_SEQUENCES
from pruning.model.loading import resolve_device, resolve_model_dir
from pruning.report import JobResult, PruneReport, SizesSummary
from pruning.runtime.distributed import World, launched_world, start_ranks
from pruning.spec import PruneSpec


@overload
def prune(
    spec: None = None, on_event: EventSink | None = None, *, sparsity: float, **fields: Any
) -> PruneReport: ...


@overload
def prune(
    spec: None = None, on_event: EventSink | None = None, *, sparsity: list[float], **fields: Any
) -> SizesSummary: ...


@overload
def prune(spec: PruneSpec | None = None, on_event: EventSink | None = None, **fields: Any) -> JobResult: ...


def prune(spec: PruneSpec | None = None, on_event: EventSink | None = None, **fields: Any) -> JobResult:
    """Prune `spec.model` to `spec.sparsity` and write the compact checkpoint and report to `spec.out_dir`.
    With several sparsities, one checkpoint and report per size in `spec.out_dir`/sparsity-<fraction>/
    and the curve in `summary.json`, which is returned instead of a report.

    Accepts a PruneSpec or its fields as keywords: prune(model=..., data=..., sparsity=0.5, out_dir=...).
    `on_event` receives stage, plan, progress, warning and metric events (`pruning.events`). Returns the
    report (`pruning.report.PruneReport`), or for several sizes their summary (`SizesSummary`).

    With `spec.gpus` above one, starts a process per GPU itself. Under torchrun (WORLD_SIZE above one)
    each process is one rank, on the GPU of its LOCAL_RANK (gloo between CPU processes): rank 0 reports
    events and returns the report, the others return None once the scoring ends.
    """
    spec = spec or PruneSpec(**fields)
    model_dir = resolve_model_dir(spec.model)
    check_checkpoint(model_dir, spec)  # what its config.json and weights' headers rule out, before any work
    emit = on_event or silent
    launched = launched_world(resolve_device(spec.device).type)
    if launched is not None:
        return _rank(launched, emit if launched.leader else silent, _for_world(spec, launched))  # type: ignore[return-value]
    gpus = job_gpus(spec)
    if gpus > 1:
        return prune_replicated(spec, gpus, emit)
    result = _job(_prepared(spec, emit))
    assert result is not None, "a single process is rank 0"
    return result


def prune_replicated(spec: PruneSpec, ranks: int, on_event: EventSink | None = None) -> JobResult:
    """The job as `ranks` new processes, each with a replica of the model, rank 0's report returned and
    its events sent to `on_event`: on CUDA one GPU each (what `prune` does for `gpus`); on the CPU gloo
    processes that share its cores, which only tests and benchmarks want (a job asking for `gpus` on
    the CPU is refused)."""
    device_type = resolve_device(spec.device).type
    result: JobResult = start_ranks(_rank, (spec,), ranks, device_type, on_event or silent)
    return result


def _for_world(spec: PruneSpec, world: World) -> PruneSpec:
    """`spec` as run by a launcher's ranks: `gpus`, where given, must count them, and on GPUs."""
    if spec.gpus is not None and world.device.type != "cuda":
        raise UsageError("gpus asks for GPUs, and this job runs on the CPU: leave gpus unset there")
    if spec.gpus is not None and spec.gpus != world.size:
        raise UsageError(f"gpus is {spec.gpus} and the launcher started {world.size} processes")
    return spec


def _rank(world: World, emit: EventSink, spec: PruneSpec) -> JobResult | None:
    """One rank's part of a job: rank 0's is the whole job; the others' ends with the scoring, or at
    once where rank 0 runs alone (`pruning.engine.placement.place_model`)."""
    placed = place_model(spec, world)
    if world.rank >= placed.replicas:
        return None
    if placed.replicas < world.size:  # rank 0 alone: its GPU, or the model spread over every rank's
        world = World(device=world.device)
    return _job(_prepared(spec, emit, world, placed.max_memory))


def _prepared(
    spec: PruneSpec, emit: EventSink, world: World | None = None, max_memory: dict[int, int] | None = None
) -> Run:
    """`stages.prepare`, then a refusal of text too short for the recovery now rather than after the
    scoring: the recovery file is read as far as its first MIN_TRAINING_SEQUENCES sequences (the
    calibration file, the default, holds the job's calibration sequences, enough whenever they are)."""
    run = stages.prepare(spec, emit, world, max_memory)
    own_text = spec.recovery_data is not None or spec.num_samples < MIN_TRAINING_SEQUENCES
    if spec.recover != "none" and own_text and run.world.leader:
        stages.recovery_text(run, tokens=1)  # its first sequences; DataError when it has too few
    return run


def _job(run: Run) -> JobResult | None:
    """The stages after `prepare`; a rank other than 0 stops after scoring and returns None."""
    if run.spec.several_sizes:
        return _prune_sizes(run)
    with run.installed():  # unit masks and compensation on the model while units are chosen and measured
        result = stages.score(run)
        if not run.world.leader:
            return None
        stages.compensate(run, result.keep)
        stages.recover(run, result.keep)
        pruned = stages.evaluate(run, result.keep)
    stages.export(run, result.keep)
    report = stages.write_report(run, result, pruned)
    stages.draw_single_size(run, report)
    return report


def _prune_sizes(run: Run) -> JobResult | None:
    """Several sizes: one scoring, then each size ascending as a job at that size would end, each in its
    own folder; returns the summary (the size/quality curve) written at the top."""
    began = time.perf_counter()
    with run.installed():
        finishes = stages.score_sizes(run)
    if not run.world.leader:
        return None
    scoring_s = time.perf_counter() - began
    entries = [
        stages.finish_size(stages.at_size(run, sparsity), finish)
        for sparsity, finish in zip(run.spec.targets, finishes, strict=True)
    ]
    return stages.summarize_sizes(run, entries, scoring_s)
