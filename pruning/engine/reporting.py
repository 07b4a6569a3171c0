"""The job's report, built from the run: what was asked, what was removed, what it cost and what it
changed (`pruning.report.PruneReport`)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from pruning.engine.run import Quality, Run, loss_sequences
from pruning.measure.routing import routing_frequencies
from pruning.methods.base import MethodResult
from pruning.model.adapters.base import UnitKind
from pruning.model.checkpoint import CheckpointReader
from pruning.model.units import UnitSpace
from pruning.report import (
    BudgetRecord,
    CalibrationData,
    CalibrationLoss,
    ExpertRecord,
    LayerWidths,
    Params,
    PruneReport,
    QualityFigure,
    Sparsity,
    UnitRecord,
)

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def build_report(run: Run, result: MethodResult, pruned: Quality) -> PruneReport:
    """The report of `run` once its checkpoint is in `spec.out_dir`: `result` the method's choice,
    `pruned` the pruned model's quality."""
    spec, space, keep, data = run.spec, run.space, result.keep, run.subject.data
    compensation = run.compensator.name if run.compensator.applied else "none"
    counter = run.probe.objective.counter
    prunable_before, prunable_after = int(space.params.sum()), int(space.params[keep].sum())
    quality = {
        name: QualityFigure(
            before=run.dense.figures[name],
            after=value,
            eval_source=data.eval_source,
            eval_tokens=int(data.evaluation.numel()),
        )
        for name, value in pruned.figures.items()
    }
    return PruneReport(
        model=str(spec.model),
        model_dir=str(run.subject.model_dir),
        out_dir=str(spec.out_dir),
        method=spec.method,
        precision=run.subject.loaded.precision,
        device=str(run.subject.loaded.device),
        replicas=run.world.size,
        uniform=spec.uniform,
        compensation=compensation,
        settings=json.loads(spec.model_dump_json())
        | {"options": spec.method_options(run.budget).model_dump(), "mlp_block": space.mlp_block},
        params=Params(
            total_before=count_checkpoint_params(run.subject.model_dir),
            total_after=count_checkpoint_params(Path(spec.out_dir)),
            prunable_before=prunable_before,
            prunable_after=prunable_after,
        ),
        sparsity=Sparsity(
            target=spec.sparsity,  # type: ignore[arg-type]  # one size: a float
            achieved=1.0 - prunable_after / prunable_before,
            max_unit_fraction=float(space.params.max()) / prunable_before,
        ),
        layers=[
            LayerWidths(
                layer=i,
                num_attention_heads=s.num_heads,
                num_key_value_heads=s.num_kv_heads,
                intermediate_size=s.intermediate,
                num_experts=s.experts,
            )
            for i, s in enumerate(space.kept_shapes(keep))
        ],
        **quality,
        calibration_loss=CalibrationLoss(
            objective=run.probe.objective.name,
            before=run.dense.calibration_loss,
            after=pruned.calibration_loss,
            sequences=int(loss_sequences(data).shape[0]),
        ),
        calibration_data=CalibrationData(file=Path(spec.data).name, sha256=file_sha256(Path(spec.data))),
        budget=BudgetRecord(
            asked=spec.budget,
            name=run.budget,
            time_limit_s=spec.time_limit,
            planned_s=round(run.planned_s, 3),
            actual_s=round(time.perf_counter() - run.instruments.progress.start, 3),
        ),
        **run.instruments.monitor.summary(),
        forward_passes=counter.passes,
        forward_tokens=counter.tokens,
        method_details={**result.details, "compensation": compensation},
        recovery=run.recovered.record if run.recovered is not None else None,
        units=unit_records(space, keep, result.importance),
        experts=expert_records(run, keep, result.importance),
    )


def expert_records(run: Run, keep: torch.Tensor, importance: torch.Tensor) -> list[ExpertRecord] | None:
    """Every expert of a mixture-of-experts model with its fate, importance and routing frequency (one
    pass of the dense model over the calibration set); None for a model without experts."""
    space = run.space
    if UnitKind.EXPERT not in space.kinds:
        return None
    frequencies = routing_frequencies(run.probe)
    return [
        ExpertRecord(
            layer=group.layer,
            index=index,
            kept=bool(keep[group.offset + index]),
            importance=float(importance[group.offset + index]),
            routing_frequency=float(frequencies[group][index]),
        )
        for group, _ in frequencies.items()
        for index in range(group.count)
    ]


def count_checkpoint_params(model_dir: Path) -> int:
    """Parameters stored in a checkpoint, from the safetensors headers alone (integer buffers such as
    BERT's position_ids are not parameters)."""
    reader = CheckpointReader(model_dir)
    headers = (reader.header(name) for name in reader.weight_map)
    return sum(math.prod(shape) for shape, dtype in headers if dtype in FLOAT_DTYPES)


def unit_records(space: UnitSpace, keep: torch.Tensor, importance: torch.Tensor) -> list[UnitRecord]:
    """One record per unit, in the flat order: layer, kind, index within its group, size, estimate, fate."""
    return [
        UnitRecord(
            layer=group.layer,
            kind=group.kind.label,
            index=index,
            params=int(group.params[index]),
            importance=float(importance[group.offset + index]),
            kept=bool(keep[group.offset + index]),
        )
        for group in space.groups
        for index in range(group.count)
    ]


def file_sha256(path: Path) -> str:
    """The file's sha256: what the model card names the calibration data by."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
