"""The GGUF file, written from the exported checkpoint beside it: hyperparameters, tokenizer, then each
tensor, one in memory at a time."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf

from pruning.errors import UsageError
from pruning.export.gguf.quantize import FILE_TYPES, QTYPES, encode, stored_form
from pruning.export.gguf.tensors import plan_tensors, rope_parameters, tensor_values
from pruning.export.gguf.tokenizer import GGUF_NAME, write_modelfile, write_tokenizer
from pruning.export.gguf.widths import StatedWidths, choose_widths
from pruning.model.adapters.base import FamilyAdapter
from pruning.model.checkpoint import CheckpointReader


def export_gguf_beside(checkpoint_dir: Path, adapter: FamilyAdapter, gguf_type: str, model: str) -> Path:
    """model.gguf and ollama's Modelfile beside the exported checkpoint in `checkpoint_dir` (`model`: the
    base model as the job named it)."""
    out_path = checkpoint_dir / GGUF_NAME
    name = f"{Path(model.rstrip('/')).name} (fwdprune)"
    export_gguf(checkpoint_dir, out_path, adapter, gguf_type, name)
    write_modelfile(checkpoint_dir)
    return out_path


def export_gguf(
    checkpoint_dir: Path, out_path: Path, adapter: FamilyAdapter, gguf_type: str, name: str
) -> StatedWidths:
    """Write `out_path` from the exported checkpoint in `checkpoint_dir` (config, safetensors, tokenizer)
    with matrices in `gguf_type`; returns the layout written. One tensor is in memory at a time."""
    config = json.loads((checkpoint_dir / "config.json").read_text())
    reader = CheckpointReader(checkpoint_dir)
    shapes = adapter.layer_shapes(SimpleNamespace(**config))
    layout = choose_widths(config["model_type"], shapes, reader)
    head_dim = adapter.head_dim(SimpleNamespace(**config))
    tensors = plan_tensors(config, shapes, layout, head_dim, reader)
    qtype = QTYPES[gguf_type]
    writer = gguf.GGUFWriter(out_path, layout.arch)
    write_hyperparameters(writer, config, layout, head_dim, gguf_type, name)
    write_tokenizer(writer, checkpoint_dir, config["vocab_size"])
    for source in tensors:
        writer.add_tensor_info(source.name, *stored_form(source.shape, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source in tensors:
        writer.write_tensor_data(encode(tensor_values(source, reader), qtype))
    writer.close()
    return layout


def write_hyperparameters(
    writer: gguf.GGUFWriter,
    config: dict[str, Any],
    layout: StatedWidths,
    head_dim: int,
    gguf_type: str,
    name: str,
) -> None:
    """The architecture's keys: widths (per layer in deci), head size and rope, norms, vocabulary."""

    def widths(values: list[int]) -> int | list[int]:
        return values if layout.arch == "deci" else values[0]

    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[gguf_type])
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(len(layout.head_counts))
    writer.add_context_length(context_length(config))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(widths(layout.mlp_widths))
    writer.add_head_count(widths(layout.head_counts))
    writer.add_head_count_kv(widths(layout.kv_counts))
    # the head size, stated: hidden_size / head_count stops being it once query heads are removed
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _write_rope(writer, rope_parameters(config))


def context_length(config: dict[str, Any]) -> int:
    """The context the model computes in llama.cpp as in transformers: a sliding window, where one is on
    (Mistral's), bounds it, since llama.cpp's llama attends over the whole context."""
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return int(min(config["max_position_embeddings"], window or config["max_position_embeddings"]))


def _write_rope(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind not in ("default", "llama3"):  # llama3's factors are a tensor (rope_factor_tensors)
        raise UsageError(f"export_format gguf writes default, linear and llama3 rope; this model's is {kind}")
