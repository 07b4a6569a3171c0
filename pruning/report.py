"""The job's report: what was asked, what was removed, what it cost and what it changed."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from pruning.checkpoint import CheckpointReader
from pruning.spec import PruneSpec
from pruning.units import UnitSpace

REPORT_NAME = "pruning_report.json"
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def count_checkpoint_params(model_dir: Path) -> int:
    """Parameters stored in a checkpoint, from the safetensors headers alone (integer buffers such as
    BERT's position_ids are not parameters)."""
    reader = CheckpointReader(model_dir)
    headers = (reader.header(name) for name in reader.weight_map)
    return sum(math.prod(shape) for shape, dtype in headers if dtype in FLOAT_DTYPES)


def unit_records(space: UnitSpace, keep: torch.Tensor, importance: torch.Tensor) -> list[dict[str, Any]]:
    """One record per unit, in the flat order: layer, kind, index within its group, size, estimate, fate."""
    return [
        {
            "layer": group.layer,
            "kind": group.kind.label,
            "index": index,
            "params": int(group.params[index]),
            "importance": float(importance[group.offset + index]),
            "kept": bool(keep[group.offset + index]),
        }
        for group in space.groups
        for index in range(group.count)
    ]


def removed_fraction(units: list[dict[str, Any]], kind: str) -> float:
    """Fraction of a kind's ("attn" or "mlp") prunable parameters that a report's `units` remove: how a
    method split the budget."""
    of_kind = [u for u in units if u["kind"] == kind]
    return sum(u["params"] for u in of_kind if not u["kept"]) / max(1, sum(u["params"] for u in of_kind))


def build_report(
    spec: PruneSpec,
    *,
    precision: str,
    device: torch.device,
    replicas: int = 1,
    model_dir: Path,
    space: UnitSpace,
    keep: torch.Tensor,
    importance: torch.Tensor,
    method_details: dict[str, Any],
    compensation: str,
    quality: dict[str, Any],
    calibration_loss: dict[str, Any],
    budget: dict[str, Any],
    monitor_summary: dict[str, Any],
    forward_passes: int,
    forward_tokens: int,
) -> dict[str, Any]:
    """The report written beside the checkpoint in `spec.out_dir` (which must hold the export already).
    `quality`: {"before": {name: value}, "after": {...}, "eval_source": ..., "eval_tokens": ...}."""
    out_dir = Path(spec.out_dir)
    prunable_before = int(space.params.sum())
    prunable_after = int(space.params[keep].sum())
    return {
        "model": str(spec.model),
        "model_dir": str(model_dir),
        "out_dir": str(out_dir),
        "method": spec.method,
        "precision": precision,
        "device": str(device),  # rank 0's (the first GPU of a model spread across several)
        "replicas": replicas,  # processes that scored sub-models, a replica of the model on a GPU each
        "uniform": spec.uniform,
        "compensation": compensation,
        "settings": json.loads(spec.model_dump_json())
        | {"options": spec.method_options(budget["name"]).model_dump(), "mlp_block": space.mlp_block},
        "params": {
            "total_before": count_checkpoint_params(model_dir),
            "total_after": count_checkpoint_params(out_dir),
            "prunable_before": prunable_before,
            "prunable_after": prunable_after,
        },
        "sparsity": {
            "target": spec.sparsity,
            "achieved": 1.0 - prunable_after / prunable_before,
            "max_unit_fraction": float(space.params.max()) / prunable_before,
        },
        "layers": [
            {
                "layer": i,
                "num_attention_heads": s.num_heads,
                "num_key_value_heads": s.num_kv_heads,
                "intermediate_size": s.intermediate,
            }
            for i, s in enumerate(space.kept_shapes(keep))
        ],
        # one entry per quality figure (perplexity for causal LMs, embedding_cosine for encoders)
        **{
            name: {
                "before": quality["before"][name],
                "after": quality["after"][name],
                "eval_source": quality["eval_source"],
                "eval_tokens": quality["eval_tokens"],
            }
            for name in quality["after"]
        },
        "calibration_loss": calibration_loss,
        "calibration_data": {"file": Path(spec.data).name, "sha256": file_sha256(Path(spec.data))},
        "budget": budget,
        **monitor_summary,
        "forward_passes": forward_passes,
        "forward_tokens": forward_tokens,
        "method_details": method_details,
        "units": unit_records(space, keep, importance),
    }


def file_sha256(path: Path) -> str:
    """The file's sha256: what the model card names the calibration data by."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    (Path(out_dir) / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
