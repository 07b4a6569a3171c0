"""What the GGUF file states per layer: its llama.cpp architecture and widths.

Where every layer keeps the same widths and no block was removed whole, the family's own architecture
(`Family.gguf_arch`: `llama` for Llama and Mistral, `qwen2`, `qwen3`); otherwise `deci`, llama.cpp's
architecture for NVIDIA's Nemotron-NAS models, which reads `head_count`, `head_count_kv` and
`feed_forward_length` per layer. Its graph is Llama's, optional q/k/v/o and MLP biases included, so it
holds Llama, Mistral and Qwen2 layers (`Family.gguf_widths` "any"), and a Qwen2 model with fewer query
channels than hidden ones, which llama.cpp's `qwen2` cannot state. Qwen3's q/k norms exist only in
`qwen3`, so a Qwen3 model is written with uniform widths only.

How llama.cpp's `deci` graph (release 11434, src/models/deci.cpp) treats a removed block, and so how one
is written:
- no attention: head_count 0 and head_count_kv 0, no attention tensors. Layer 0 is the exception:
  llama.cpp reads the head size (key_length) only when layer 0 has heads, so a layer 0 without attention
  is written as its "linear attention" (heads, no KV heads) with a zero output matrix: it adds nothing.
- no MLP: feed_forward_length 0 skips the rest of the layer, the residual add of its attention included
  (and in the last layer the choice of output rows), so 0 is written only for a layer that has no
  attention either (or layer 0's zero one), is not the last and has no MLP output bias. Any other layer
  without an MLP gets ZERO_MLP_WIDTH channels of zero weights, which add exactly its down projection's
  bias, if it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.errors import UsageError
from pruning.families import FAMILIES
from pruning.model.adapters.base import LayerShape
from pruning.model.checkpoint import CheckpointReader

ZERO_MLP_WIDTH = 32  # one Q8_0 block: the narrowest MLP every type stores


@dataclass(frozen=True)
class StatedWidths:
    """What the file states per layer, and the layers given zero blocks to state it."""

    arch: str
    head_counts: list[int]
    kv_counts: list[int]
    mlp_widths: list[int]
    zero_attention: frozenset[int] = frozenset()  # layer 0 without attention: a zero linear attention
    zero_mlp: frozenset[int] = frozenset()  # layers with ZERO_MLP_WIDTH zero MLP channels


def choose_widths(model_type: str, shapes: list[LayerShape], reader: CheckpointReader) -> StatedWidths:
    """The family's own architecture where it states the widths, else deci; refuses what neither does."""
    family = FAMILIES.get(model_type)
    arch = family.gguf_arch if family is not None else None
    if family is None or arch is None:
        raise UsageError(f"export_format gguf has no llama.cpp architecture for {model_type!r} models")
    first, count = shapes[0], len(shapes)
    uniform = len(set(shapes)) == 1 and first.num_kv_heads > 0 and first.intermediate > 0
    if uniform and (arch != "qwen2" or _query_width_is_hidden(reader)):
        return StatedWidths(
            arch, [first.num_heads] * count, [first.num_kv_heads] * count, [first.intermediate] * count
        )
    if family.gguf_widths != "any":
        raise UsageError(
            f"export_format gguf writes per-layer widths in llama.cpp's deci architecture, which has no "
            f"{model_type} layers (their q/k norms); prune {model_type} models with uniform widths"
        )
    return deci_widths(shapes, reader)


def _query_width_is_hidden(reader: CheckpointReader) -> bool:
    """llama.cpp's qwen2 states q_proj as hidden x hidden."""
    rows, columns = reader.header(reader.find("layers.0.self_attn.q_proj.weight") or "")[0]
    return bool(rows == columns)


def deci_widths(shapes: list[LayerShape], reader: CheckpointReader) -> StatedWidths:
    """Per-layer widths, with zero blocks where llama.cpp's graph would otherwise compute something else
    (see the module's docstring)."""
    heads, zero_attention, zero_mlp = [], set(), set()
    widths = [shape.intermediate for shape in shapes]
    most_heads = max(1, *(shape.num_heads for shape in shapes))  # what a zero linear attention states
    for layer, shape in enumerate(shapes):
        has_attention = shape.num_kv_heads > 0
        if not has_attention and reader.find(f"layers.{layer}.self_attn.o_proj.bias"):
            raise UsageError(
                f"export_format gguf cannot keep the output bias of layer {layer}'s removed attention "
                "(llama.cpp's deci graph adds none there); prune with compensate='ls' or 'none'"
            )
        if not has_attention and layer == 0:
            zero_attention.add(layer)
        heads.append(shape.num_heads if has_attention else most_heads if layer == 0 else 0)
        down_bias = reader.find(f"layers.{layer}.mlp.down_proj.bias") is not None
        # skipping the rest of the layer loses nothing where its attention is none (or zero)
        skips_whole = not has_attention and layer != len(shapes) - 1 and not down_bias
        if shape.intermediate == 0 and not skips_whole:
            zero_mlp.add(layer)
            widths[layer] = ZERO_MLP_WIDTH
    kv_counts = [shape.num_kv_heads for shape in shapes]
    return StatedWidths("deci", heads, kv_counts, widths, frozenset(zero_attention), frozenset(zero_mlp))
