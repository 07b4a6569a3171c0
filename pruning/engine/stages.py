"""The stages of a pruning job over one run state: prepare → score → compensate → evaluate → export.

`pruning.engine.api` calls them in that order. Each stage announces itself to the caller's event sink,
is timed by the run's monitor and reports its progress against the job's plan
(`pruning.runtime.progress`); what a stage decides is left to its parts (a method scores, a compensator
fits, the export slices), so a stage reads as the steps it takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

# the built-in formats' writing code, imported with the engine rather than at the first export: its
# imports (every family's transformers model class, through the remote code) belong to the process's
# start, not to a job's stages, whose load time the plan sizes the export by
import pruning.export.gguf.writer  # noqa: F401
import pruning.export.hf  # noqa: F401
import pruning.export.nemotron  # noqa: F401
from pruning import events
from pruning.checkpoint_checks import check_checkpoint
from pruning.checkpoint_config import read_config
from pruning.compensation import choose_compensation, make_compensator
from pruning.compensation.corrections import stored_name
from pruning.engine.context import method_context, mlp_block
from pruning.engine.plan import plan_job
from pruning.engine.reporting import build_report
from pruning.engine.run import Instruments, Quality, Run, Subject, loss_sequences, measure
from pruning.errors import UnsupportedModelError, UsageError
from pruning.events import EventSink
from pruning.export.formats import ExportJob, exporter_for
from pruning.export.model_card import write_model_card
from pruning.export.sizes import size_dir_name, write_pictures
from pruning.measure.monitor import StageMonitor
from pruning.measure.objectives import make_objective
from pruning.measure.probe import CalibrationProbe, OutputWeights
from pruning.methods.base import FinishSize, MethodResult
from pruning.methods.registry import make_method
from pruning.model.adapters import adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.data import load_calibration, load_training_text
from pruning.model.loading import (
    LoadedModel,
    cpu_computes_bf16,
    load_model,
    resolve_device,
    resolve_model_dir,
    scoring_autocast,
)
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from pruning.recovery.recover import RecoverySettings, recover_model
from pruning.report import PruneReport, SizeEntry, SizesSummary
from pruning.runtime.distributed import World
from pruning.runtime.progress import JobProgress
from pruning.spec import PruneSpec, resolve_budget

TOKENS_PER_BATCH = 8192  # tokens per forward pass when no sub-models are replicated
TOKENS_PER_STEP = 1024  # tokens per recovery step


def prepare(
    spec: PruneSpec, emit: EventSink, world: World | None = None, max_memory: dict[int, int] | None = None
) -> Run:
    """Find and load the model, read the data, lay out its units, measure the dense model and plan.
    `world`: this process's rank, its device the model's (default: one process on `spec.device`); a
    rank other than 0 only scores sub-models, so it measures and plans nothing. `max_memory`: the model
    spread across those GPUs (`pruning.engine.placement.place_model`)."""
    model_dir = resolve_model_dir(spec.model)
    # refuse unsupported families, sizes no model has and exports the config rules out, before loading
    model_type = check_checkpoint(model_dir, spec)
    adapter = adapter_for(model_type)
    _refuse_unsafe_input(model_dir, Path(spec.out_dir))
    world = world or World(device=resolve_device(spec.device))
    budget = resolve_budget(spec.budget, world.device.type)
    gpus = [torch.device("cuda", index) for index in max_memory] if max_memory is not None else None
    instruments = Instruments(emit, StageMonitor(world.device, gpus), JobProgress(emit))
    if spec.time_bound_s is not None:
        instruments.progress.deadline = instruments.progress.start + spec.time_bound_s
        instruments.progress.fill_to_deadline = spec.time_limit is not None
    torch.manual_seed(spec.seed)

    with instruments.stage("load"):
        loaded = load_model(model_dir, spec.precision, world.device, adapter.auto_class(), max_memory)
        _warm_up(loaded)
        if loaded.precision == "bf16-mixed" and loaded.device.type == "cpu" and not cpu_computes_bf16():
            instruments.warn("this CPU emulates bf16: bf16-mixed runs slower here than fp32 would")
    with instruments.stage("data"):
        data = load_calibration(
            loaded.tokenizer,
            spec.data,
            spec.seq_len,
            spec.num_samples,
            spec.eval_samples,
            spec.eval_data,
            wrap=not adapter.causal_lm,
        )
    space = build_unit_space(loaded.model, adapter, mlp_block(spec, adapter, loaded.model.config))
    masks = UnitMasks(space)
    objective = make_objective(
        spec.objective, loaded.model, adapter, world.device, masks, scoring_autocast(loaded.precision)
    )
    instruments.monitor.counter = objective.counter
    objective.counter.listener = instruments.progress.tokens
    probe = CalibrationProbe(
        objective,
        masks,
        OutputWeights(CheckpointReader(model_dir)),
        data.calibration,
        batch_size=max(1, TOKENS_PER_BATCH // spec.seq_len),
    )
    subject = Subject(model_dir, adapter, loaded, data, probe)
    dense = _measure_dense(subject, instruments, world)

    method = make_method(spec.method, spec.method_options(budget))
    # a format that cannot hold every bias shift (validated for an explicit ask): auto falls back to none
    carried = exporter_for(spec.export_format).carries_bias_shift
    fallback = method.default_compensation if carried else "none"
    compensation = choose_compensation(spec.compensate, fallback, space, int(data.calibration.numel()))
    compensator = make_compensator(
        compensation, probe, adapter, adapter.layers(loaded.model), spec.compensation_ridge
    )
    run = Run(spec, budget, subject, method, compensator, instruments, dense, world=world)
    if world.leader:
        run.planned_s = plan_job(run)
    return run


def _measure_dense(subject: Subject, instruments: Instruments, world: World) -> Quality:
    """The dense model's quality, on rank 0 (the others only score sub-models)."""
    dense = Quality({}, float("nan"))
    if world.leader:
        with instruments.stage("evaluate_dense"):
            data = subject.data
            instruments.progress.expect_tokens(data.evaluation.numel() + loss_sequences(data).numel())
            dense = measure(subject.probe, data, torch.ones(subject.space.size, dtype=torch.bool))
    for name, value in dense.figures.items():
        instruments.emit(events.metric(f"{name}_before", value))
    return dense


def score(run: Run) -> MethodResult:
    """The method chooses the units to keep (hooks installed). On every rank: the ranks other than 0
    stop after it."""
    ctx = method_context(run)
    with run.instruments.stage("scoring"):
        result = run.method.run(ctx)
    _collect_peaks(run)
    return result


def score_sizes(run: Run) -> list[FinishSize]:
    """Several sizes: the method's shared scoring (hooks installed); per size, what finishes its result
    (rank 0's to call: the ranks other than 0 stop after the shared scoring)."""
    ctx = method_context(run)
    total = float(run.space.params.sum())
    with run.instruments.stage("scoring"):
        finishes = run.method.run_sizes(ctx, [sparsity * total for sparsity in run.spec.targets])
    _collect_peaks(run)
    return finishes


def _collect_peaks(run: Run) -> None:
    """Rank 0 learns the other ranks' GPU peaks for its report; they stop after scoring. Collective."""
    if run.world.size == 1:
        return
    monitor = run.instruments.monitor
    peaks = run.world.gather(monitor.peak_bytes_per_device)
    monitor.other_ranks_peak_bytes = [peak for rank in peaks[1:] for peak in rank]


def compensate(run: Run, keep: torch.Tensor) -> None:
    """Fit the job's compensation to the chosen units (hooks installed, so it applies at once)."""
    if run.compensator.name != "none":
        with run.instruments.stage("compensate"):
            run.compensator.fit(keep, progress=run.instruments.progress.advance)
    if run.compensator.name == "bias" and not run.subject.adapter.bias_kinds():
        run.instruments.warn(
            f"{run.subject.adapter.name} checkpoints cannot carry output "
            "biases in their stock config; exported without bias compensation"
        )


def recover(run: Run, keep: torch.Tensor) -> None:
    """Train low-rank adapters toward the dense model, and keep them merged into weight changes if the
    held-out loss improved (hooks installed); the job's `recover` setting says how, or not at all."""
    spec, subject = run.spec, run.subject
    if spec.recover == "none":
        return
    progress = run.instruments.progress
    settings = RecoverySettings(
        method=spec.recover,
        tokens=spec.recovery_tokens(run.budget),
        rank=spec.recover_rank,
        lr=spec.recover_lr,
        lm_weight=spec.recover_lm_weight,
        batch_sequences=max(1, TOKENS_PER_STEP // spec.seq_len),
        seed=spec.seed,
    )
    with run.instruments.stage("recover"):
        run.recovered = recover_model(
            subject.loaded,
            subject.adapter,
            run.probe,
            keep,
            settings,
            recovery_text(run, settings.tokens),
            subject.data.evaluation,
            stored_weight=_weights_as_compensated(run),
            on_step=lambda done, steps: progress.advance(done / steps, step=done, steps=steps),
            stop=recovery_stop(run),
        )
    record = run.recovered.record
    if record.rolled_back:
        run.instruments.warn(
            f"recovery made the held-out loss worse ({record.judge_loss_before:.4f} -> "
            f"{record.judge_loss_after:.4f}): rolled back, the checkpoint is the compensated one"
        )


def _weights_as_compensated(run: Run) -> Callable[[str], torch.Tensor]:
    """name -> the weight of that module as the export would write it without recovery: the checkpoint's,
    or the compensation's refit of it."""
    checkpoint = run.probe.weights.checkpoint
    refitted = run.compensator.export_changes(checkpoint).tensors

    def stored_weight(name: str) -> torch.Tensor:
        stored = stored_name(checkpoint, f"{name}.weight")
        return refitted[stored] if stored in refitted else checkpoint.get(stored)

    return stored_weight


def recovery_stop(run: Run) -> Callable[[], bool]:
    """Whether the recovery must stop training now: its own time is up (`recover_time`), or the job's
    deadline leaves no more than the stages after it need."""
    progress, began = run.instruments.progress, time.perf_counter()
    limit = run.spec.recover_time

    def stop() -> bool:
        if limit is not None and time.perf_counter() - began >= limit:
            return True
        left = progress.time_left_before("recover")
        return left is not None and left <= 0.0

    return stop


def recovery_text(run: Run, tokens: int) -> torch.Tensor:
    """[n, seq_len] sequences the recovery trains on (and is judged on): the recovery file's, else the
    calibration file's without the sequences the job evaluates on."""
    spec, data = run.spec, run.subject.data
    path, held_out = spec.recovery_data, None
    if path is None:
        path = spec.data
        if spec.eval_data is None:  # the evaluation follows the calibration sequences in the same file
            start = data.calibration.shape[0]
            held_out = range(start, start + data.evaluation.shape[0])
    sequences = max(2, -(-tokens // spec.seq_len))
    return load_training_text(run.subject.loaded.tokenizer, path, spec.seq_len, sequences, held_out)


def evaluate(run: Run, keep: torch.Tensor) -> Quality:
    """The pruned, compensated (and recovered) model measured as the dense one was (hooks installed)."""
    data = run.subject.data
    with run.instruments.stage("evaluate_pruned"), run.recovery_installed():
        run.instruments.progress.expect_tokens(data.evaluation.numel() + loss_sequences(data).numel())
        pruned = measure(run.probe, data, keep)
    for name, value in pruned.figures.items():
        run.emit(events.metric(f"{name}_after", value))
    return pruned


def export(run: Run, keep: torch.Tensor) -> None:
    """Write the compact checkpoint, compensation included, to the output directory."""
    subject, out_dir = run.subject, Path(run.spec.out_dir)
    checkpoint = run.probe.weights.checkpoint
    changes = run.compensator.export_changes(checkpoint)
    if run.recovered is not None and run.recovered.deltas is not None:  # on top of the compensation's
        run.recovered.deltas.apply_to(changes.tensors, lambda name: _stored(checkpoint, name))
    job = ExportJob(
        subject.model_dir,
        out_dir,
        subject.adapter,
        run.space,
        keep,
        changes.tensors,
        changes.config,
        run.spec,
    )
    with run.instruments.stage("export"):
        exporter_for(run.spec.export_format).write(job)


def write_report(run: Run, result: MethodResult, pruned: Quality, final: bool = True) -> PruneReport:
    """Write the report and the model card beside the checkpoint and return the report; `final`: the job
    ends with it (not a size of several, which `summarize_sizes` ends)."""
    if final:
        run.instruments.progress.finish()
    report = build_report(run, result, pruned)
    report.write(Path(run.spec.out_dir))
    auto_class = run.subject.adapter.auto_class().__name__
    write_model_card(report, Path(run.spec.out_dir), run.subject.model_dir, auto_class)
    if final:
        run.emit(events.stage("done"))
    return report


def draw_single_size(run: Run, report: PruneReport) -> None:
    """The pictures of a single size (one point, one line), beside its report."""
    entry = SizeEntry.of(report, report.total_s, report.forward_tokens)
    write_pictures([entry], report.quality_figure, Path(run.spec.out_dir), run.emit)


def at_size(run: Run, sparsity: float) -> Run:
    """The run as a job at one of its sizes: that sparsity, its own folder, no compensation yet."""
    out_dir = Path(run.spec.out_dir) / size_dir_name(sparsity)
    run.compensator.clear()  # the previous size's fit must not carry over, nor its recovery
    sized = run.spec.model_copy(update={"sparsity": sparsity, "out_dir": out_dir})
    return replace(run, spec=sized, recovered=None)


def finish_size(run: Run, finish: FinishSize) -> SizeEntry:
    """One size of several, as a job at that size would end (`run` from `at_size`): its selection,
    compensation, evaluation, export and report. Returns its point of the curve."""
    began, tokens = time.perf_counter(), run.probe.objective.counter.tokens
    with run.installed():
        with run.instruments.monitor.stage("scoring"):  # the size's own selection (bonsai's split search)
            result = finish()
        compensate(run, result.keep)
        recover(run, result.keep)
        pruned = evaluate(run, result.keep)
    export(run, result.keep)
    report = write_report(run, result, pruned, final=False)
    return SizeEntry.of(report, time.perf_counter() - began, run.probe.objective.counter.tokens - tokens)


def summarize_sizes(run: Run, entries: list[SizeEntry], scoring_s: float) -> SizesSummary:
    """`summary.json` and the pictures at the top of the output directory, once every size is written."""
    out_dir = Path(run.spec.out_dir)
    last = PruneReport.read(out_dir / entries[-1].dir / "pruning_report.json")
    summary = SizesSummary(
        model=last.model,
        method=last.method,
        out_dir=str(out_dir),
        quality_figure=last.quality_figure,
        params_before=last.params.total_before,
        scoring_s=round(scoring_s, 3),
        total_s=round(time.perf_counter() - run.instruments.progress.start, 3),
        forward_tokens=last.forward_tokens,  # the job's, counted through its last size
        sizes=entries,
    )
    summary.write(out_dir)
    write_pictures(entries, summary.quality_figure, out_dir, run.emit)
    run.instruments.progress.finish()
    run.emit(events.stage("done"))
    return summary


def _stored(checkpoint: CheckpointReader, name: str) -> tuple[str, torch.Tensor]:
    stored = stored_name(checkpoint, name)
    return stored, checkpoint.get(stored)


def _warm_up(loaded: LoadedModel) -> None:
    """One short forward pass, so that one-time start-up costs (kernel selection, lazy initialisation) do
    not count toward the rate the job is planned by."""
    with torch.inference_mode():
        loaded.model(input_ids=torch.zeros(1, 8, dtype=torch.long, device=loaded.device))


def _refuse_unsafe_input(model_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError("the output directory must not be the input model's: the export would overwrite it")
    if "fwdprune_layers" in read_config(model_dir):
        raise UnsupportedModelError(
            "this checkpoint has per-layer widths from an earlier global pruning; re-pruning it is not "
            "supported: prune the original model, or an earlier --uniform output"
        )
