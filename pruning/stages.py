"""The stages of a pruning job over one run state: prepare → score → compensate → evaluate → export.

`pruning.api.prune` calls them in that order. Each stage announces itself to the caller's event sink, is
timed by the run's monitor and reports its progress against the job's plan (`pruning.progress`); what a
stage decides is left to its parts (a method scores, a compensator fits, the export slices), so a stage
reads as the steps it takes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pruning.adapters import FamilyAdapter, UnitKind, adapter_for
from pruning.checkpoint import CheckpointReader
from pruning.compensation import (
    Compensator,
    LeastSquaresRefit,
    choose_compensation,
    make_compensator,
)
from pruning.data import CalibrationSet, load_calibration
from pruning.devices import Layout, plan_layout, scoring_bytes
from pruning.distributed import World
from pruning.errors import UnsupportedModelError, UsageError
from pruning.evaluation import make_objective
from pruning.export import export_pruned
from pruning.export_nemotron import (
    FFN_WIDTH_MULTIPLE,
    export_nemotron,
    refuse_inexpressible_model,
    selection_rules,
)
from pruning.loading import LoadedModel, load_model, resolve_device, resolve_model_dir, resolve_precision
from pruning.masking import UnitMasks
from pruning.methods import MethodContext, MethodResult, PruningMethod, SizeResult, make_method
from pruning.model_card import write_model_card
from pruning.monitor import StageMonitor
from pruning.probe import CalibrationProbe, OutputWeights
from pruning.progress import LS_FIT_FORWARDS, EventSink, JobProgress
from pruning.report import build_report, write_report
from pruning.selection import KindRule, UnitSelector, within_multiples
from pruning.sizes import (
    build_summary,
    quality_figure,
    size_dir_name,
    size_entry,
    write_pictures,
    write_summary,
)
from pruning.spec import PruneSpec, read_model_type, resolve_budget
from pruning.units import UnitSpace, build_unit_space, default_mlp_block

TOKENS_PER_BATCH = 8192  # tokens per forward pass when no sub-models are replicated
# a weight matrix of a decoder (or encoder) layer: what the quantized precisions store in one byte
LAYER_MATRIX = re.compile(r"\.layers?\.\d+\..*\.weight$")


@dataclass
class Quality:
    """Quality of a model on the job's data: the objective's figures on the evaluation text (perplexity,
    or embedding cosine for encoders) and its mean loss on the calibration text."""

    figures: dict[str, float]
    calibration_loss: float


@dataclass
class Clock:
    """Where a job announces, times and tracks its stages."""

    emit: EventSink
    monitor: StageMonitor
    progress: JobProgress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.emit({"type": "stage", "stage": name})
        self.progress.enter(name)
        with self.monitor.stage(name):
            yield


@dataclass
class Run:
    """What the stages share: the request, the model and its unit space, and the instruments."""

    spec: PruneSpec
    clock: Clock
    budget: str  # the named budget the job runs at (`auto` resolved)
    model_dir: Path
    adapter: FamilyAdapter
    loaded: LoadedModel
    data: CalibrationSet
    probe: CalibrationProbe  # holds the unit masks, the objective and the output weights
    method: PruningMethod
    compensator: Compensator
    dense: Quality
    planned_s: float = 0.0  # the whole job's expected duration once the dense model was measured
    world: World = field(default_factory=World)  # the ranks scoring with a replica each; rank 0 does the rest

    @property
    def space(self) -> UnitSpace:
        return self.probe.space

    @property
    def emit(self) -> EventSink:
        return self.clock.emit

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The unit masks and the compensation's corrections hooked onto the model for the duration."""
        with self.probe.masks.installed(), self.compensator.installed():
            yield


def job_gpus(spec: PruneSpec) -> int:
    """The GPUs `spec.gpus` asks for (1 where unset: one device, a GPU or the CPU); refuses them for a
    job on the CPU, and more than are visible."""
    if spec.gpus is None:
        return 1
    if resolve_device(spec.device).type != "cuda":
        raise UsageError("gpus asks for GPUs, and this job runs on the CPU: leave gpus unset there")
    visible = torch.cuda.device_count()
    if spec.gpus > visible:
        raise UsageError(f"gpus is {spec.gpus} and {visible} CUDA devices are visible")
    return spec.gpus


def layout(spec: PruneSpec, world: World) -> Layout:
    """How the world's devices hold the model (`pruning.devices`): a replica on each rank for bonsai
    when every GPU holds one; else rank 0 alone, with the model spread across every rank's GPU, or, for
    another method (a pass or two, nothing to share), on its own. Each rank reports its GPU's free
    memory and all decide alike. Collective."""
    if world.size == 1:
        return Layout()
    shares = spec.method == "bonsai"
    if world.device.type != "cuda":  # gloo processes on the CPU: replicas, memory unchecked
        return Layout(replicas=world.size if shares else 1)
    free = world.gather(torch.cuda.mem_get_info(world.device)[0])
    model_dir = resolve_model_dir(spec.model)
    precision = resolve_precision(spec.precision, world.device)
    planned = plan_layout(world.size, scoring_bytes(*checkpoint_param_split(model_dir), precision), free)
    return planned if shares or planned.replicas == 1 else Layout()


def checkpoint_param_split(model_dir: Path) -> tuple[int, int]:
    """(parameters in the layers' weight matrices, all others), from the checkpoint's headers."""
    reader = CheckpointReader(model_dir)
    matrices = others = 0
    for name in reader.weight_map:
        shape, _ = reader.header(name)
        if len(shape) == 2 and LAYER_MATRIX.search(name):
            matrices += math.prod(shape)
        else:
            others += math.prod(shape)
    return matrices, others


def prepare(
    spec: PruneSpec, emit: EventSink, world: World | None = None, max_memory: dict[int, int] | None = None
) -> Run:
    """Find and load the model, read the data, lay out its units, measure the dense model and plan.
    `world`: this process's rank, its device the model's (default: one process on `spec.device`); a
    rank other than 0 only scores sub-models, so it measures and plans nothing. `max_memory`: the model
    spread across those GPUs (`layout`)."""
    model_dir = resolve_model_dir(spec.model)
    adapter = adapter_for(read_model_type(model_dir))  # refuse unsupported families before loading
    _refuse_unsafe_input(model_dir, Path(spec.out_dir))
    if spec.export_format == "nemotron-nas":
        refuse_inexpressible_model(json.loads((model_dir / "config.json").read_text()))
    world = world or World(device=resolve_device(spec.device))
    device = world.device
    budget = resolve_budget(spec.budget, device.type)
    gpus = [torch.device("cuda", index) for index in max_memory] if max_memory is not None else None
    clock = Clock(emit, StageMonitor(device, gpus), JobProgress(emit))
    if spec.time_limit is not None:
        clock.progress.deadline = clock.progress.start + spec.time_limit
    torch.manual_seed(spec.seed)

    with clock.stage("load"):
        loaded = load_model(model_dir, spec.precision, device, adapter.auto_class(), max_memory)
        _warm_up(loaded)
    with clock.stage("data"):
        data = load_calibration(
            loaded.tokenizer,
            spec.data,
            spec.seq_len,
            spec.num_samples,
            spec.eval_samples,
            spec.eval_data,
            wrap=not adapter.causal_lm,
        )
    space = build_unit_space(loaded.model, adapter, _mlp_block(spec, adapter, loaded.model.config))
    masks = UnitMasks(space)
    objective = make_objective(spec.objective, loaded.model, adapter, device, masks)
    clock.monitor.counter = objective.counter
    objective.counter.listener = clock.progress.tokens
    probe = CalibrationProbe(
        objective,
        masks,
        OutputWeights(CheckpointReader(model_dir)),
        data.calibration,
        batch_size=max(1, TOKENS_PER_BATCH // spec.seq_len),
    )

    dense = Quality({}, math.nan)
    if world.leader:
        with clock.stage("evaluate_dense"):
            clock.progress.expect_tokens(data.evaluation.numel() + _loss_sequences(data).numel())
            dense = _measure(probe, data, torch.ones(space.size, dtype=torch.bool))
    for name, value in dense.figures.items():
        emit({"type": "metric", "name": f"{name}_before", "value": value})

    method = make_method(spec.method, spec.method_options(budget))
    # nemotron-nas cannot hold a bias shift (validated for an explicit ask): auto falls back to none
    fallback = "none" if spec.export_format == "nemotron-nas" else method.default_compensation
    compensation = choose_compensation(spec.compensate, fallback, space, int(data.calibration.numel()))
    compensator = make_compensator(
        compensation, probe, adapter, adapter.layers(loaded.model), spec.compensation_ridge
    )
    run = Run(
        spec, clock, budget, model_dir, adapter, loaded, data, probe, method, compensator, dense, world=world
    )
    if world.leader:
        run.planned_s = _plan(run)
    return run


def _plan(run: Run) -> float:
    """Announce how long each remaining stage should take, from the rate the dense evaluation ran at;
    returns the whole job's expected seconds."""
    monitor, progress, spec = run.clock.monitor, run.clock.progress, run.spec
    tokens_per_s = monitor.forward_tokens["evaluate_dense"] / max(monitor.stage_s["evaluate_dense"], 1e-9)
    sequences = int(run.data.calibration.shape[0])
    calibration_tokens = float(run.data.calibration.numel())
    work = run.method.planned_work(
        sequences, spec.seq_len, refit=run.compensator.name == "ls", replicas=run.world.size
    )
    fitting = {"ls": LS_FIT_FORWARDS, "bias": 1.0}.get(run.compensator.name, 0.0) * calibration_tokens
    seconds = {stage: tokens / tokens_per_s for stage, tokens in {**work, "compensate": fitting}.items()}
    seconds["evaluate_pruned"] = monitor.stage_s["evaluate_dense"]
    seconds["export"] = monitor.stage_s["load"]  # reads the same shards, writes less
    for stage in {"search", "compensate", "evaluate_pruned", "export"} & set(seconds):  # per size
        seconds[stage] *= len(spec.targets)
    if progress.deadline is not None and run.spec.method == "bonsai":
        # the rounds take what the limit leaves; they are sized as they go
        others = sum(v for k, v in seconds.items() if k != "scoring") + sum(monitor.stage_s.values())
        seconds["scoring"] = max((spec.time_limit or 0.0) - others, 0.0)
    progress.set_plan(seconds, budget=run.budget, time_limit_s=spec.time_limit)
    if spec.time_limit is not None and progress.expected_s() > 1.1 * spec.time_limit:
        run.emit(
            {
                "type": "warning",
                "message": f"this job is expected to take {progress.expected_s():.0f} s, "
                f"more than its time limit of {spec.time_limit:.0f} s",
            }
        )
    return progress.expected_s()


def method_context(run: Run) -> MethodContext:
    """What the method is given: the job's selection rules, the probe, the budget and, if the job refits
    the output projections afterwards, that refit."""
    spec, space = run.spec, run.space
    allowed_counts = {
        UnitKind.ATTN: run.adapter.uniform_kv_counts(run.loaded.model.config),
        UnitKind.MLP: list(range(1, space.group_of(0, UnitKind.MLP).count)),
    }
    layout = _layout_rules(run, allowed_counts[UnitKind.ATTN])
    if layout is not None:  # uniform widths too must be ones the layout can state
        allowed_counts = {
            kind: [c for c in allowed_counts[kind] if c in rule.counts] for kind, rule in layout.items()
        }
    refit = run.compensator if isinstance(run.compensator, LeastSquaresRefit) else None
    return MethodContext(
        space=space,
        selector=UnitSelector(space, spec.uniform, allowed_counts, layout),
        probe=run.probe,
        target_params=max(spec.targets) * float(space.params.sum()),
        seed=spec.seed,
        refit=refit,
        progress=run.clock.progress,
        world=run.world,
    )


def _layout_rules(run: Run, kv_counts: list[int]) -> dict[UnitKind, KindRule] | None:
    """The per-layer counts the export format can express, within the multiples asked for; None where
    any widths do."""
    spec, space = run.spec, run.space
    rules = selection_rules(space, kv_counts) if spec.export_format == "nemotron-nas" else None
    if spec.mlp_multiple_of is None and spec.kv_multiple_of is None:
        return rules
    if rules is None:  # the hf layout states any per-layer width, a layer emptied whole included
        rules = {
            kind: KindRule(tuple(range(space.group_of(0, kind).count + 1)), shared=False)
            for kind in (UnitKind.ATTN, UnitKind.MLP)
        }
    steps = {
        UnitKind.ATTN: spec.kv_multiple_of or 1,
        UnitKind.MLP: _mlp_units_per_multiple(spec.mlp_multiple_of, space),
    }
    return {
        kind: within_multiples(rule, steps[kind], space.group_of(0, kind).count)
        for kind, rule in rules.items()
    }


def _mlp_units_per_multiple(channels: int | None, space: UnitSpace) -> int:
    """MLP units that make `channels` channels (the unit size divides it: `_mlp_block`)."""
    if channels is None:
        return 1
    block = int(space.group_of(0, UnitKind.MLP).channel_unit.bincount().max())  # channels per unit
    return max(channels // block, 1)


def score(run: Run) -> MethodResult:
    """The method chooses the units to keep (hooks installed). On every rank: the ranks other than 0
    stop after it."""
    ctx = method_context(run)
    with run.clock.stage("scoring"):
        result = run.method.run(ctx)
    _collect_peaks(run)
    return result


def score_sizes(run: Run) -> list[SizeResult]:
    """Several sizes: the method's shared scoring (hooks installed); per size, what finishes its result
    (rank 0's to call: the ranks other than 0 stop after the shared scoring)."""
    ctx = method_context(run)
    total = float(run.space.params.sum())
    with run.clock.stage("scoring"):
        finishes = run.method.run_targets(ctx, [target * total for target in run.spec.targets])
    _collect_peaks(run)
    return finishes


def _collect_peaks(run: Run) -> None:
    """Rank 0 learns the other ranks' GPU peaks for its report; they stop after scoring. Collective."""
    if run.world.size == 1:
        return
    peaks = run.world.gather(run.clock.monitor.peak_bytes_per_device)
    run.clock.monitor.other_ranks_peak_bytes = [peak for rank in peaks[1:] for peak in rank]


def for_size(run: Run, sparsity: float) -> Run:
    """The run as a job at one of its sizes: that sparsity, its own folder, no compensation yet."""
    out_dir = Path(run.spec.out_dir) / size_dir_name(sparsity)
    run.compensator.clear()  # the previous size's fit must not carry over
    return replace(run, spec=run.spec.model_copy(update={"sparsity": sparsity, "out_dir": out_dir}))


def one_size(run: Run, finish: SizeResult) -> dict[str, Any]:
    """One size of several, as a job at that size would end (`run` from `for_size`): its selection,
    compensation, evaluation, export and report. Returns its point of the curve."""
    began, tokens = time.perf_counter(), run.probe.objective.counter.tokens
    with run.installed():
        with run.clock.monitor.stage("scoring"):  # the size's own selection (bonsai's split search)
            result = finish()
        compensate(run, result.keep)
        pruned = evaluate(run, result.keep)
    export(run, result.keep)
    built = report(run, result, pruned, final=False)
    return size_entry(built, time.perf_counter() - began, run.probe.objective.counter.tokens - tokens)


def summarize_sizes(run: Run, entries: list[dict[str, Any]], scoring_s: float) -> dict[str, Any]:
    """`summary.json` and the pictures at the top of the output directory, once every size is written;
    returns the summary."""
    out_dir = Path(run.spec.out_dir)
    reports = [json.loads((out_dir / e["dir"] / "pruning_report.json").read_text()) for e in entries]
    total_s = time.perf_counter() - run.clock.progress.start
    summary = build_summary(entries, reports, scoring_s, total_s)
    write_summary(summary, out_dir)
    write_pictures(entries, summary["quality_figure"], out_dir, run.emit)
    run.clock.progress.finish()
    run.emit({"type": "stage", "stage": "done"})
    return summary


def picture_single(run: Run, built: dict[str, Any]) -> None:
    """The pictures for a single size (one point, one line), beside its report."""
    entry = size_entry(built, float(built["total_s"]), int(built["forward_tokens"]))
    write_pictures([entry], quality_figure(built), Path(run.spec.out_dir), run.emit)


def compensate(run: Run, keep: torch.Tensor) -> None:
    """Fit the job's compensation to the chosen units (hooks installed, so it applies at once)."""
    if run.compensator.name != "none":
        with run.clock.stage("compensate"):
            run.compensator.fit(keep, progress=run.clock.progress.advance)
    if run.compensator.name == "bias" and not run.adapter.bias_kinds():
        run.emit(
            {
                "type": "warning",
                "message": f"{run.adapter.name} checkpoints cannot carry output "
                "biases in their stock config; exported without bias compensation",
            }
        )


def evaluate(run: Run, keep: torch.Tensor) -> Quality:
    """The pruned, compensated model measured as the dense one was (hooks installed)."""
    with run.clock.stage("evaluate_pruned"):
        run.clock.progress.expect_tokens(run.data.evaluation.numel() + _loss_sequences(run.data).numel())
        pruned = _measure(run.probe, run.data, keep)
    for name, value in pruned.figures.items():
        run.emit({"type": "metric", "name": f"{name}_after", "value": value})
    return pruned


def export(run: Run, keep: torch.Tensor) -> None:
    """Write the compact checkpoint, compensation included, to the output directory."""
    changes = run.compensator.export_changes(run.probe.weights.checkpoint)
    with run.clock.stage("export"):
        if run.spec.export_format == "nemotron-nas":
            export_nemotron(
                run.model_dir,
                Path(run.spec.out_dir),
                run.adapter,
                run.space,
                keep,
                changes.tensors,
                changes.config,
            )
            return
        export_pruned(
            run.model_dir,
            Path(run.spec.out_dir),
            run.adapter,
            run.space,
            keep,
            run.spec.uniform,
            changes.tensors,
            changes.config,
        )


def report(run: Run, result: MethodResult, pruned: Quality, final: bool = True) -> dict[str, Any]:
    """Write the report beside the checkpoint and return it; `final`: the job ends with it (not a size
    of several, which `summarize_sizes` ends)."""
    if final:
        run.clock.progress.finish()
    compensation = run.compensator.name if run.compensator.applied else "none"
    counter = run.probe.objective.counter
    summary = run.clock.monitor.summary()
    built = build_report(
        run.spec,
        precision=run.loaded.precision,
        device=run.loaded.device,
        replicas=run.world.size,
        model_dir=run.model_dir,
        space=run.space,
        keep=result.keep,
        importance=result.importance,
        method_details={**result.details, "compensation": compensation},
        compensation=compensation,
        quality={
            "before": run.dense.figures,
            "after": pruned.figures,
            "eval_source": run.data.eval_source,
            "eval_tokens": int(run.data.evaluation.numel()),
        },
        calibration_loss={
            "objective": run.probe.objective.name,
            "before": run.dense.calibration_loss,
            "after": pruned.calibration_loss,
            "sequences": int(_loss_sequences(run.data).shape[0]),
        },
        budget={
            "asked": run.spec.budget,
            "name": run.budget,
            "time_limit_s": run.spec.time_limit,
            "planned_s": round(run.planned_s, 3),
            "actual_s": round(time.perf_counter() - run.clock.progress.start, 3),
        },
        monitor_summary=summary,
        forward_passes=counter.passes,
        forward_tokens=counter.tokens,
    )
    write_report(built, Path(run.spec.out_dir))
    write_model_card(built, Path(run.spec.out_dir), run.model_dir, run.adapter.auto_class().__name__)
    if final:
        run.emit({"type": "stage", "stage": "done"})
    return built


def _warm_up(loaded: LoadedModel) -> None:
    """One short forward pass, so that one-time start-up costs (kernel selection, lazy initialisation) do
    not count toward the rate the job is planned by."""
    with torch.inference_mode():
        loaded.model(input_ids=torch.zeros(1, 8, dtype=torch.long, device=loaded.device))


def _measure(probe: CalibrationProbe, data: CalibrationSet, keep: torch.Tensor) -> Quality:
    return Quality(probe.quality(keep, data.evaluation), probe.mean_loss(keep, _loss_sequences(data)))


def _loss_sequences(data: CalibrationSet) -> torch.Tensor:
    """The calibration sequences the report's calibration loss is measured on: as many as the evaluation
    has (a diagnostic beside the quality figure, not worth a pass over the whole calibration set)."""
    return data.calibration[: data.evaluation.shape[0]]


def _mlp_block(spec: PruneSpec, adapter: FamilyAdapter, config: Any) -> int | None:
    """MLP channels per unit: as asked, else by model size; uniform widths need a divisor of the width,
    the nemotron-nas layout one of the 256-channel steps its widths come in."""
    intermediate = adapter.layer_shapes(config)[0].intermediate
    block = spec.mlp_block or default_mlp_block(intermediate)
    if spec.mlp_multiple_of is not None:  # whole units must make up every multiple
        block = math.gcd(block, spec.mlp_multiple_of)
    if spec.export_format == "nemotron-nas":
        return math.gcd(block, FFN_WIDTH_MULTIPLE)
    if not spec.uniform:
        return block if spec.mlp_multiple_of is not None else spec.mlp_block
    return math.gcd(block, intermediate)


def _refuse_unsafe_input(model_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError("the output directory must not be the input model's: the export would overwrite it")
    if "fwdprune_layers" in json.loads((model_dir / "config.json").read_text()):
        raise UnsupportedModelError(
            "this checkpoint has per-layer widths from an earlier global pruning; re-pruning it is not "
            "supported: prune the original model, or an earlier --uniform output"
        )
