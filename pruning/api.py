"""`prune(spec)`: load → calibration data → score units → evaluate → export → report.

This module is the lifecycle only; what to remove is decided by a method from `pruning.methods`,
the masks live in `pruning.masking`, and the surgery in `pruning.export`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pruning.adapters import adapter_for
from pruning.checkpoint import CheckpointReader
from pruning.compensation import (
    OutputCorrections,
    bias_replacements,
    bias_shifts,
    sequential_refits,
    weight_replacements,
)
from pruning.data import load_calibration
from pruning.errors import UsageError
from pruning.evaluation import Objective, make_objective
from pruning.export import export_pruned
from pruning.loading import load_model, resolve_device, resolve_model_dir
from pruning.masking import UnitMasks
from pruning.methods import ScoringContext, make_method
from pruning.monitor import StageMonitor
from pruning.spec import PruneSpec, UnsupportedModelError, read_model_type
from pruning.units import UnitSpace, build_unit_space

REPORT_NAME = "pruning_report.json"
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
EventSink = Callable[[dict[str, Any]], None]


def prune(spec: PruneSpec | None = None, on_event: EventSink | None = None, **fields: Any) -> dict[str, Any]:
    """Prune `spec.model` to `spec.sparsity` and write the compact checkpoint and report to `spec.out_dir`.

    Accepts a PruneSpec or its fields as keywords: prune(model=..., data=..., sparsity=0.5, out_dir=...).
    `on_event` receives stage, progress, warning and metric events as dicts. Returns the report.
    """
    spec = spec or PruneSpec(**fields)
    emit = on_event or (lambda event: None)
    model_dir = resolve_model_dir(spec.model)
    adapter = adapter_for(read_model_type(model_dir))  # refuse unsupported families before loading
    _refuse_unsafe_input(model_dir, Path(spec.out_dir))
    device = resolve_device(spec.device)
    monitor = StageMonitor(device)
    torch.manual_seed(spec.seed)

    emit({"type": "stage", "stage": "load"})
    with monitor.stage("load"):
        loaded = load_model(model_dir, spec.precision, device, adapter.auto_class())
    model = loaded.model
    emit({"type": "stage", "stage": "data"})
    with monitor.stage("data"):
        data = load_calibration(loaded.tokenizer, spec.data, spec.seq_len, spec.num_samples,
                                spec.eval_samples, spec.eval_data, wrap=not adapter.causal_lm)
    if spec.uniform:
        intermediate = adapter.layer_shapes(model.config)[0].intermediate
        block = math.gcd(spec.mlp_block or _default_block(intermediate), intermediate)
    else:
        block = spec.mlp_block or None  # type: ignore[assignment]
    space = build_unit_space(model, adapter, block)
    masks = UnitMasks(space)
    runner = make_objective(spec.objective, model, adapter, device, masks)
    monitor.counter = runner.counter
    batch_size = max(1, 8192 // spec.seq_len)
    prunable = float(space.params.sum())

    emit({"type": "stage", "stage": "evaluate"})
    with monitor.stage("evaluate_dense"):
        dense_quality = runner.quality(data.evaluation, batch_size)
        dense_calib = runner.mean_loss(data.calibration, batch_size)
    for name, value in dense_quality.items():
        emit({"type": "metric", "name": f"{name}_before", "value": value})

    method = make_method(spec.method, spec.method_options())
    compensation = choose_compensation(spec.compensate, method.default_compensation, space,
                                       int(data.calibration.numel()))
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed():
        ctx = ScoringContext(
            model=model, adapter=adapter, space=space, masks=masks, runner=runner,
            calibration=data.calibration, checkpoint=CheckpointReader(model_dir), uniform=spec.uniform,
            target_params=spec.sparsity * prunable, seed=spec.seed, batch_size=batch_size,
            allowed_counts={0: adapter.uniform_kv_counts(model.config),
                            1: list(range(1, int(space.group_of(0, "mlp").count)))},
            report_progress=lambda p: emit({"type": "progress", "stage": "scoring", **p}),
        )
        if compensation == "ls":
            ctx.fit_compensation = lambda keep, sequences: sequential_refits(
                ctx, keep, corrections, spec.compensation_ridge, sequences)
            ctx.clear_compensation = corrections.refits.clear
        emit({"type": "stage", "stage": "scoring"})
        with monitor.stage("scoring"):
            result = method.run(ctx)
        if compensation != "none":
            with monitor.stage("compensate"):
                if compensation == "ls":
                    sequential_refits(ctx, result.keep, corrections, spec.compensation_ridge)
                else:
                    corrections.shifts = bias_shifts(ctx, result.keep)
        if compensation == "bias" and not adapter.bias_kinds():
            emit({"type": "warning", "message": f"{adapter.name} checkpoints cannot carry output "
                  "biases in their stock config; exported without bias compensation"})
        emit({"type": "stage", "stage": "evaluate"})
        with monitor.stage("evaluate_pruned"):
            masks.set(result.keep.double())
            pruned_quality = runner.quality(data.evaluation, batch_size)
            pruned_calib = runner.mean_loss(data.calibration, batch_size)
        shifts, refits = corrections.shifts, corrections.refits
        replacements, config_updates = bias_replacements(ctx, shifts)
        replacements.update(weight_replacements(ctx, refits))
    for name, value in pruned_quality.items():
        emit({"type": "metric", "name": f"{name}_after", "value": value})

    emit({"type": "stage", "stage": "export"})
    out_dir = Path(spec.out_dir)
    with monitor.stage("export"):
        export_pruned(model_dir, out_dir, adapter, space, result.keep, spec.uniform, replacements,
                      config_updates)
    report = _report(spec, loaded.precision, device, model_dir, out_dir, space, result.keep,
                     result.importance, {**result.details, "compensation": compensation if shifts or refits else "none"},
                     monitor, runner,
                     {"before": dense_quality, "after": pruned_quality, "eval_source": data.eval_source,
                      "eval_tokens": int(data.evaluation.numel())},
                     {"objective": runner.name, "before": dense_calib, "after": pruned_calib})
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    emit({"type": "stage", "stage": "done"})
    return report


# least squares over C input channels needs well over C calibration tokens, or it fits their noise
LS_TOKENS_PER_CHANNEL = 8


def choose_compensation(asked: str, method_default: str, space: UnitSpace, calibration_tokens: int) -> str:
    """`auto`: the least-squares refit when there are at least LS_TOKENS_PER_CHANNEL calibration tokens per
    input channel of the widest output projection (measured better there, see README), else the
    method's own default (bias for flap, none for the others)."""
    if asked != "auto":
        return asked
    widest = max(group.channel_unit.numel() for group in space.groups)
    return "ls" if calibration_tokens >= LS_TOKENS_PER_CHANNEL * widest else method_default


def _refuse_unsafe_input(model_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError("the output directory must not be the input model's: the export would overwrite it")
    if "fwdprune_layers" in json.loads((model_dir / "config.json").read_text()):
        raise UnsupportedModelError(
            "this checkpoint has per-layer widths from an earlier global pruning; re-pruning it is not "
            "supported: prune the original model, or an earlier --uniform output"
        )


def _default_block(intermediate: int) -> int:
    from pruning.units import default_mlp_block

    return default_mlp_block(intermediate)


def count_checkpoint_params(model_dir: Path) -> int:
    """Parameters stored in a checkpoint, from the safetensors headers alone (integer buffers such as
    BERT's position_ids are not parameters)."""
    reader = CheckpointReader(model_dir)
    headers = (reader.header(name) for name in reader.weight_map)
    return sum(math.prod(shape) for shape, dtype in headers if dtype in FLOAT_DTYPES)


def _report(spec: PruneSpec, precision: str, device: torch.device, model_dir: Path, out_dir: Path,
            space: UnitSpace, keep: torch.Tensor, importance: torch.Tensor, details: dict[str, Any],
            monitor: StageMonitor, runner: Objective, quality: dict[str, Any],
            calibration_loss: dict[str, Any]) -> dict[str, Any]:
    prunable_before = int(space.params.sum())
    prunable_after = int(space.params[keep].sum())
    shapes = space.kept_shapes(keep)
    units = [
        {"layer": int(space.layer[i]), "kind": "attn" if int(space.kind[i]) == 0 else "mlp",
         "index": i - space.group_of(int(space.layer[i]), "attn" if int(space.kind[i]) == 0 else "mlp").offset,
         "params": int(space.params[i]), "importance": float(importance[i]), "kept": bool(keep[i])}
        for i in range(space.size)
    ]
    return {
        "model": str(spec.model),
        "model_dir": str(model_dir),
        "out_dir": str(out_dir),
        "method": spec.method,
        "precision": precision,
        "device": str(device),
        "uniform": spec.uniform,
        "compensation": details.get("compensation", "none"),
        "settings": json.loads(spec.model_dump_json()) | {"options": spec.method_options().model_dump(),
                                                          "mlp_block": space.mlp_block},
        "params": {
            "total_before": count_checkpoint_params(model_dir),
            "total_after": count_checkpoint_params(out_dir),
            "prunable_before": prunable_before,
            "prunable_after": prunable_after,
        },
        "sparsity": {"target": spec.sparsity, "achieved": 1.0 - prunable_after / prunable_before,
                     "max_unit_fraction": float(space.params.max()) / prunable_before},
        "layers": [
            {"layer": i, "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads,
             "intermediate_size": s.intermediate} for i, s in enumerate(shapes)
        ],
        # one entry per quality figure (perplexity for causal LMs, embedding_cosine for encoders)
        **{name: {"before": quality["before"][name], "after": quality["after"][name],
                  "eval_source": quality["eval_source"], "eval_tokens": quality["eval_tokens"]}
           for name in quality["after"]},
        "calibration_loss": calibration_loss,
        **monitor.summary(),
        "forward_passes": runner.counter.passes,
        "forward_tokens": runner.counter.tokens,
        "method_details": details,
        "units": units,
    }
