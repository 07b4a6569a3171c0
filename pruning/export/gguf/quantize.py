"""How the GGUF file stores each tensor: vectors in f32, matrices in the job's `gguf_type` (f32, f16, bf16
or q8_0), or in f16 where their rows are not whole blocks of it."""

from __future__ import annotations

import math
from typing import Any

import gguf
import numpy as np

QTYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


def tensor_type(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Vectors in F32 (llama.cpp's norms and biases), matrices in `qtype`, or in F16 where their rows are
    not whole blocks of it."""
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def stored_form(
    shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType
) -> tuple[tuple[int, ...], np.dtype[Any], int, gguf.GGMLQuantizationType | None]:
    """The writer's (shape, dtype, bytes, raw type) for a tensor of `shape` stored as `tensor_type`."""
    stored = tensor_type(shape, qtype)
    if stored == gguf.GGMLQuantizationType.F32:
        return shape, np.dtype(np.float32), 4 * math.prod(shape), None
    if stored == gguf.GGMLQuantizationType.F16:
        return shape, np.dtype(np.float16), 2 * math.prod(shape), None
    byte_shape = gguf.quant_shape_to_byte_shape(shape, stored)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape), stored


def encode(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    stored = tensor_type(values.shape, qtype)
    if stored == gguf.GGMLQuantizationType.F32:
        return values.astype(np.float32)
    if stored == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, stored)
