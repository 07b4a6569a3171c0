"""The stages of a pruning job over one run state: prepare → score → compensate → evaluate → export.

`pruning.api.prune` calls them in that order. Each stage announces itself to the caller's event sink and is
timed by the run's monitor; what a stage decides is left to its parts (a method scores, a compensator
fits, the export slices), so a stage reads as the steps it takes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning.adapters import FamilyAdapter, UnitKind, adapter_for
from pruning.checkpoint import CheckpointReader
from pruning.compensation import Compensator, LeastSquaresRefit, choose_compensation, make_compensator
from pruning.data import CalibrationSet, load_calibration
from pruning.errors import UnsupportedModelError, UsageError
from pruning.evaluation import make_objective
from pruning.export import export_pruned
from pruning.loading import LoadedModel, load_model, resolve_device, resolve_model_dir
from pruning.masking import UnitMasks
from pruning.methods import MethodContext, MethodResult, PruningMethod, make_method
from pruning.monitor import StageMonitor
from pruning.probe import CalibrationProbe, OutputWeights
from pruning.report import build_report, write_report
from pruning.selection import UnitSelector
from pruning.spec import PruneSpec, read_model_type
from pruning.units import UnitSpace, build_unit_space, default_mlp_block

EventSink = Callable[[dict[str, Any]], None]  # receives stage, progress, warning and metric events
TOKENS_PER_BATCH = 8192  # tokens per forward pass when no sub-models are replicated


@dataclass
class Quality:
    """Quality of a model on the job's data: the objective's figures on the evaluation text (perplexity,
    or embedding cosine for encoders) and its mean loss on the calibration text."""

    figures: dict[str, float]
    calibration_loss: float


@dataclass
class Run:
    """What the stages share: the request, the model and its unit space, and the instruments."""

    spec: PruneSpec
    emit: EventSink
    monitor: StageMonitor
    model_dir: Path
    adapter: FamilyAdapter
    loaded: LoadedModel
    data: CalibrationSet
    probe: CalibrationProbe  # holds the unit masks, the objective and the output weights
    method: PruningMethod
    compensator: Compensator
    dense: Quality

    @property
    def space(self) -> UnitSpace:
        return self.probe.space

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The unit masks and the compensation's corrections hooked onto the model for the duration."""
        with self.probe.masks.installed(), self.compensator.installed():
            yield


def prepare(spec: PruneSpec, emit: EventSink) -> Run:
    """Find and load the model, read the data, lay out its units and measure the dense model."""
    model_dir = resolve_model_dir(spec.model)
    adapter = adapter_for(read_model_type(model_dir))  # refuse unsupported families before loading
    _refuse_unsafe_input(model_dir, Path(spec.out_dir))
    device = resolve_device(spec.device)
    monitor = StageMonitor(device)
    torch.manual_seed(spec.seed)

    emit({"type": "stage", "stage": "load"})
    with monitor.stage("load"):
        loaded = load_model(model_dir, spec.precision, device, adapter.auto_class())
    emit({"type": "stage", "stage": "data"})
    with monitor.stage("data"):
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
    monitor.counter = objective.counter
    probe = CalibrationProbe(
        objective,
        masks,
        OutputWeights(CheckpointReader(model_dir)),
        data.calibration,
        batch_size=max(1, TOKENS_PER_BATCH // spec.seq_len),
    )

    emit({"type": "stage", "stage": "evaluate"})
    with monitor.stage("evaluate_dense"):
        dense = _measure(probe, data, torch.ones(space.size, dtype=torch.bool))
    for name, value in dense.figures.items():
        emit({"type": "metric", "name": f"{name}_before", "value": value})

    method = make_method(spec.method, spec.method_options())
    compensation = choose_compensation(
        spec.compensate, method.default_compensation, space, int(data.calibration.numel())
    )
    compensator = make_compensator(
        compensation, probe, adapter, adapter.layers(loaded.model), spec.compensation_ridge
    )
    return Run(spec, emit, monitor, model_dir, adapter, loaded, data, probe, method, compensator, dense)


def method_context(run: Run) -> MethodContext:
    """What the method is given: the job's selection rules, the probe, the budget and, if the job refits
    the output projections afterwards, that refit."""
    spec, space = run.spec, run.space
    allowed_counts = {
        UnitKind.ATTN: run.adapter.uniform_kv_counts(run.loaded.model.config),
        UnitKind.MLP: list(range(1, space.group_of(0, UnitKind.MLP).count)),
    }
    refit = run.compensator if isinstance(run.compensator, LeastSquaresRefit) else None
    return MethodContext(
        space=space,
        selector=UnitSelector(space, spec.uniform, allowed_counts),
        probe=run.probe,
        target_params=spec.sparsity * float(space.params.sum()),
        seed=spec.seed,
        refit=refit,
        progress=lambda p: run.emit({"type": "progress", "stage": "scoring", **p}),
    )


def score(run: Run) -> MethodResult:
    """The method chooses the units to keep (hooks installed)."""
    ctx = method_context(run)
    run.emit({"type": "stage", "stage": "scoring"})
    with run.monitor.stage("scoring"):
        return run.method.run(ctx)


def compensate(run: Run, keep: torch.Tensor) -> None:
    """Fit the job's compensation to the chosen units (hooks installed, so it applies at once)."""
    if run.compensator.name != "none":
        with run.monitor.stage("compensate"):
            run.compensator.fit(keep)
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
    run.emit({"type": "stage", "stage": "evaluate"})
    with run.monitor.stage("evaluate_pruned"):
        pruned = _measure(run.probe, run.data, keep)
    for name, value in pruned.figures.items():
        run.emit({"type": "metric", "name": f"{name}_after", "value": value})
    return pruned


def export(run: Run, keep: torch.Tensor) -> None:
    """Write the compact checkpoint, compensation included, to the output directory."""
    changes = run.compensator.export_changes(run.probe.weights.checkpoint)
    run.emit({"type": "stage", "stage": "export"})
    with run.monitor.stage("export"):
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


def report(run: Run, result: MethodResult, pruned: Quality) -> dict[str, Any]:
    """Write the report beside the checkpoint and return it."""
    compensation = run.compensator.name if run.compensator.applied else "none"
    counter = run.probe.objective.counter
    built = build_report(
        run.spec,
        precision=run.loaded.precision,
        device=run.loaded.device,
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
        },
        monitor_summary=run.monitor.summary(),
        forward_passes=counter.passes,
        forward_tokens=counter.tokens,
    )
    write_report(built, Path(run.spec.out_dir))
    run.emit({"type": "stage", "stage": "done"})
    return built


def _measure(probe: CalibrationProbe, data: CalibrationSet, keep: torch.Tensor) -> Quality:
    return Quality(probe.quality(keep, data.evaluation), probe.mean_loss(keep, data.calibration))


def _mlp_block(spec: PruneSpec, adapter: FamilyAdapter, config: Any) -> int | None:
    """MLP channels per unit: as asked, else by model size; uniform widths need a divisor of the width."""
    if not spec.uniform:
        return spec.mlp_block
    intermediate = adapter.layer_shapes(config)[0].intermediate
    return math.gcd(spec.mlp_block or default_mlp_block(intermediate), intermediate)


def _refuse_unsafe_input(model_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError("the output directory must not be the input model's: the export would overwrite it")
    if "fwdprune_layers" in json.loads((model_dir / "config.json").read_text()):
        raise UnsupportedModelError(
            "this checkpoint has per-layer widths from an earlier global pruning; re-pruning it is not "
            "supported: prune the original model, or an earlier --uniform output"
        )
