"""Every tensor of the GGUF file, in order, and where its values come from: a checkpoint tensor (its query
and key rows reordered for the architectures whose rope rotates adjacent channel pairs, llama and deci;
transformers rotates the two halves of each head), a zero block, or Llama 3's rope factors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np
import torch

from pruning.errors import UsageError
from pruning.export.gguf.widths import ZERO_MLP_WIDTH, StatedWidths
from pruning.model.adapters.base import LayerShape
from pruning.model.checkpoint import CheckpointReader

PAIRED_ROPE_ARCHS = ("llama", "deci")
T = gguf.MODEL_TENSOR
ATTENTION_PARTS = (  # (GGUF tensor, module, rope-rotated rows)
    (T.ATTN_Q, "q_proj", True),
    (T.ATTN_K, "k_proj", True),
    (T.ATTN_V, "v_proj", False),
    (T.ATTN_OUT, "o_proj", False),
    (T.ATTN_Q_NORM, "q_norm", False),
    (T.ATTN_K_NORM, "k_norm", False),
)
MLP_PARTS = ((T.FFN_GATE, "gate_proj"), (T.FFN_UP, "up_proj"), (T.FFN_DOWN, "down_proj"))


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the file: a checkpoint tensor (its rows reordered for rope when `rope_head_dim`),
    `computed` values, or else `fill` throughout."""

    name: str
    shape: tuple[int, ...]
    checkpoint_name: str | None = None
    fill: float = 0.0
    rope_head_dim: int = 0
    computed: np.ndarray | None = field(default=None, compare=False)


def plan_tensors(
    config: dict[str, Any],
    shapes: list[LayerShape],
    layout: StatedWidths,
    head_dim: int,
    reader: CheckpointReader,
) -> list[TensorSource]:
    """Every tensor of the file, in order, with where its values come from; refuses a checkpoint tensor
    the file has no place for."""
    placed: set[str] = set()
    rope_head_dim = head_dim if layout.arch in PAIRED_ROPE_ARCHS else 0
    plan = [_stored(reader, placed, T.TOKEN_EMBD, "embed_tokens.weight")]
    for layer, shape in enumerate(shapes):
        plan += _attention_tensors(reader, placed, layer, shape, layout, config["hidden_size"], rope_head_dim)
        plan += _mlp_tensors(reader, placed, layer, shape, layout, config["hidden_size"])
    plan.append(_stored(reader, placed, T.OUTPUT_NORM, "norm.weight"))
    if not config.get("tie_word_embeddings", False):
        plan.append(_stored(reader, placed, T.OUTPUT, "lm_head.weight"))
    plan += rope_factor_tensors(config, head_dim)
    unplaced = sorted(set(reader.weight_map) - placed)
    if unplaced:
        raise UsageError(f"export_format gguf has no place for checkpoint tensor {unplaced[0]}")
    return [source for source in plan if source is not None]


def _attention_tensors(
    reader: CheckpointReader,
    placed: set[str],
    layer: int,
    shape: LayerShape,
    layout: StatedWidths,
    hidden: int,
    rope_head_dim: int,
) -> list[TensorSource | None]:
    if not shape.num_kv_heads:
        _drop(reader, placed, f"layers.{layer}.input_layernorm.weight")  # nothing reads it
        if layer not in layout.zero_attention:
            return []
        return [
            _constant(T.ATTN_NORM, layer, (hidden,), 1.0),
            _constant(T.ATTN_OUT, layer, (hidden, hidden), 0.0),
        ]
    tensors = [_stored(reader, placed, T.ATTN_NORM, "input_layernorm.weight", layer)]
    for kind, module, rotated in ATTENTION_PARTS:
        for part in ("weight", "bias"):
            name = f"self_attn.{module}.{part}"
            tensors.append(_stored(reader, placed, kind, name, layer, rope_head_dim if rotated else 0))
    return tensors


def _mlp_tensors(
    reader: CheckpointReader,
    placed: set[str],
    layer: int,
    shape: LayerShape,
    layout: StatedWidths,
    hidden: int,
) -> list[TensorSource | None]:
    down_bias = _stored(reader, placed, T.FFN_DOWN, "mlp.down_proj.bias", layer)
    if layer in layout.zero_mlp:
        _drop(reader, placed, f"layers.{layer}.post_attention_layernorm.weight")
        return [
            _constant(T.FFN_NORM, layer, (hidden,), 1.0),
            _constant(T.FFN_GATE, layer, (ZERO_MLP_WIDTH, hidden), 0.0),
            _constant(T.FFN_UP, layer, (ZERO_MLP_WIDTH, hidden), 0.0),
            _constant(T.FFN_DOWN, layer, (hidden, ZERO_MLP_WIDTH), 0.0),
            down_bias,
        ]
    if not shape.intermediate:
        _drop(reader, placed, f"layers.{layer}.post_attention_layernorm.weight")
        return []
    tensors = [_stored(reader, placed, T.FFN_NORM, "post_attention_layernorm.weight", layer)]
    for kind, module in MLP_PARTS:
        tensors.append(_stored(reader, placed, kind, f"mlp.{module}.weight", layer))
        if kind != T.FFN_DOWN:
            tensors.append(_stored(reader, placed, kind, f"mlp.{module}.bias", layer))
    return tensors + [down_bias]


def _stored(
    reader: CheckpointReader,
    placed: set[str],
    kind: gguf.MODEL_TENSOR,
    suffix: str,
    layer: int | None = None,
    rope_head_dim: int = 0,
) -> TensorSource | None:
    """The checkpoint tensor named `suffix` (within `layer`) as the file's `kind`, if there is one."""
    name = reader.find(suffix if layer is None else f"layers.{layer}.{suffix}")
    if name is None:
        return None
    placed.add(name)
    gguf_name = f"{gguf.TENSOR_NAMES[kind].format(bid=layer)}.{suffix.rsplit('.', 1)[1]}"
    return TensorSource(gguf_name, tuple(reader.header(name)[0]), name, rope_head_dim=rope_head_dim)


def _constant(kind: gguf.MODEL_TENSOR, layer: int, shape: tuple[int, ...], fill: float) -> TensorSource:
    return TensorSource(f"{gguf.TENSOR_NAMES[kind].format(bid=layer)}.weight", shape, fill=fill)


def _drop(reader: CheckpointReader, placed: set[str], suffix: str) -> None:
    name = reader.find(suffix)
    if name is not None:
        placed.add(name)


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of a transformers 5 config (`rope_parameters`) or an older one."""
    if config.get("rope_parameters"):
        return dict(config["rope_parameters"])
    return {**(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 10000.0)}


def rope_factor_tensors(config: dict[str, Any], head_dim: int) -> list[TensorSource]:
    """Llama 3's rope scaling as llama.cpp takes it: one divisor per rotary frequency in `rope_freqs`."""
    rope = rope_parameters(config)
    if rope.get("rope_type") != "llama3":
        return []
    divisors = llama3_rope_divisors(rope, head_dim)
    return [TensorSource(f"{gguf.TENSOR_NAMES[T.ROPE_FREQS]}.weight", divisors.shape, computed=divisors)]


def llama3_rope_divisors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """How much Llama 3 slows each rotary frequency: 1 for wavelengths under the original context /
    high_freq_factor, `factor` past context / low_freq_factor, interpolated between."""
    inverse_frequency = rope["rope_theta"] ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inverse_frequency
    context, low, high = (
        rope["original_max_position_embeddings"],
        rope["low_freq_factor"],
        rope["high_freq_factor"],
    )
    smooth = (context / wavelength - low) / (high - low)
    interpolated = 1.0 / ((1.0 - smooth) / rope["factor"] + smooth)
    divisors = np.where(wavelength > context / low, rope["factor"], interpolated)
    return np.where(wavelength < context / high, 1.0, divisors).astype(np.float32)


def tensor_values(source: TensorSource, reader: CheckpointReader) -> np.ndarray:
    if source.computed is not None:
        return source.computed
    if source.checkpoint_name is None:
        return np.full(source.shape, source.fill, dtype=np.float32)
    values = reader.get(source.checkpoint_name).to(torch.float32).numpy()
    if source.rope_head_dim:
        values = interleave_rope_halves(values, source.rope_head_dim)
    return values


def interleave_rope_halves(values: np.ndarray, head_dim: int) -> np.ndarray:
    """Rows (or entries) of each head from transformers' order, the rotated pairs' first members then
    their second, to llama.cpp's, each pair adjacent: rows i and head_dim/2 + i become 2i and 2i + 1."""
    return values.reshape(-1, 2, head_dim // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)
