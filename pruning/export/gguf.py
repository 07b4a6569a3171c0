"""The GGUF export: the compact checkpoint as one file that stock llama.cpp loads (and ollama and LM Studio
with it), written with the `gguf` package from the safetensors checkpoint it sits beside.

Architecture: where every layer keeps the same widths and no block was removed whole, the family's own
(`llama` for Llama and Mistral, `qwen2`, `qwen3`); otherwise `deci`, llama.cpp's architecture for NVIDIA's
Nemotron-NAS models, which reads `head_count`, `head_count_kv` and `feed_forward_length` per layer. Its
graph is Llama's, optional q/k/v/o and MLP biases included, so it holds Llama, Mistral and Qwen2 layers,
and a Qwen2 model with fewer query channels than hidden ones, which llama.cpp's `qwen2` cannot state.
Qwen3's q/k norms exist only in `qwen3`, so a Qwen3 model is written with uniform widths only.

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
Query and key rows are reordered for the architectures whose rope rotates adjacent channel pairs (llama,
deci); transformers rotates the two halves of each head.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import torch

from pruning.errors import UsageError
from pruning.model.adapters.base import FamilyAdapter, LayerShape
from pruning.model.checkpoint import CheckpointReader

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
# model_type -> llama.cpp architecture for uniform widths (spec.GGUF_MODEL_TYPES says which take deci)
FAMILY_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
DECI_FAMILIES = ("llama", "mistral", "qwen2")
PAIRED_ROPE_ARCHS = ("llama", "deci")
GGUF_NAME = "model.gguf"
MODELFILE_NAME = "Modelfile"  # ollama's recipe for the file: `ollama create <name> -f Modelfile`
ZERO_MLP_WIDTH = 32  # one Q8_0 block: the narrowest MLP every type stores
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
class Layout:
    """What the file states per layer, and the layers given zero blocks to state it."""

    arch: str
    head_counts: list[int]
    kv_counts: list[int]
    mlp_widths: list[int]
    zero_attention: frozenset[int] = frozenset()  # layer 0 without attention: a zero linear attention
    zero_mlp: frozenset[int] = frozenset()  # layers with ZERO_MLP_WIDTH zero MLP channels


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
) -> Layout:
    """Write `out_path` from the exported checkpoint in `checkpoint_dir` (config, safetensors, tokenizer)
    with matrices in `gguf_type`; returns the layout written. One tensor is in memory at a time."""
    config = json.loads((checkpoint_dir / "config.json").read_text())
    reader = CheckpointReader(checkpoint_dir)
    shapes = adapter.layer_shapes(SimpleNamespace(**config))
    layout = choose_layout(config["model_type"], shapes, reader)
    head_dim = adapter.head_dim(SimpleNamespace(**config))
    tensors = plan_tensors(config, shapes, layout, head_dim, reader)
    qtype = QTYPES[gguf_type]
    writer = gguf.GGUFWriter(out_path, layout.arch)
    write_hyperparameters(writer, config, layout, head_dim, gguf_type, name)
    write_tokenizer(writer, checkpoint_dir, config["vocab_size"])
    for source in tensors:
        writer.add_tensor_info(source.name, *_stored_form(source.shape, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source in tensors:
        writer.write_tensor_data(encode(_values(source, reader), qtype))
    writer.close()
    return layout


# -- layout --------------------------------------------------------------------------------------


def choose_layout(model_type: str, shapes: list[LayerShape], reader: CheckpointReader) -> Layout:
    """The family's own architecture where it states the widths, else deci; refuses what neither does."""
    arch = FAMILY_ARCHS.get(model_type)
    if arch is None:
        raise UsageError(f"export_format gguf has no llama.cpp architecture for {model_type!r} models")
    first, count = shapes[0], len(shapes)
    uniform = len(set(shapes)) == 1 and first.num_kv_heads > 0 and first.intermediate > 0
    if uniform and (arch != "qwen2" or _query_width_is_hidden(reader)):
        return Layout(
            arch, [first.num_heads] * count, [first.num_kv_heads] * count, [first.intermediate] * count
        )
    if model_type not in DECI_FAMILIES:
        raise UsageError(
            f"export_format gguf writes per-layer widths in llama.cpp's deci architecture, which has no "
            f"{model_type} layers (their q/k norms); prune {model_type} models with uniform widths"
        )
    return deci_layout(shapes, reader)


def _query_width_is_hidden(reader: CheckpointReader) -> bool:
    """llama.cpp's qwen2 states q_proj as hidden x hidden."""
    rows, columns = reader.header(reader.find("layers.0.self_attn.q_proj.weight") or "")[0]
    return bool(rows == columns)


def deci_layout(shapes: list[LayerShape], reader: CheckpointReader) -> Layout:
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
    return Layout("deci", heads, kv_counts, widths, frozenset(zero_attention), frozenset(zero_mlp))


# -- tensors -------------------------------------------------------------------------------------


def plan_tensors(
    config: dict[str, Any], shapes: list[LayerShape], layout: Layout, head_dim: int, reader: CheckpointReader
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
    layout: Layout,
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
    reader: CheckpointReader, placed: set[str], layer: int, shape: LayerShape, layout: Layout, hidden: int
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


def _values(source: TensorSource, reader: CheckpointReader) -> np.ndarray:
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


def tensor_type(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Vectors in F32 (llama.cpp's norms and biases), matrices in `qtype`, or in F16 where their rows are
    not whole blocks of it."""
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _stored_form(
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


# -- hyperparameters and tokenizer ---------------------------------------------------------------


def write_hyperparameters(
    writer: gguf.GGUFWriter, config: dict[str, Any], layout: Layout, head_dim: int, gguf_type: str, name: str
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


# The pre-tokenizers llama.cpp implements, by the steps of tokenizer.json's `pre_tokenizer` that they
# reproduce (llama.cpp's src/llama-vocab.cpp holds their regexes): GPT-2's byte-level split; SmolLM's,
# which first splits off each digit; Llama 3's and Qwen2's regex splits ahead of a byte-level mapping.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("byte-level",): "gpt-2",
    ("digits", "byte-level"): "smollm",
    (f"split:{LLAMA3_SPLIT}", "byte-level:no-regex"): "llama-bpe",
    (f"split:{QWEN2_SPLIT}", "byte-level:no-regex"): "qwen2",
}
# normalizers llama.cpp leaves out harmlessly: none, or NFC (Qwen2's), which text already in NFC passes
IGNORED_NORMALIZERS = (None, "NFC")
PROBE = "a"  # a text of one ordinary token: what the tokenizer adds around it is its special tokens


def write_tokenizer(writer: gguf.GGUFWriter, checkpoint_dir: Path, rows: int) -> None:
    """The checkpoint's tokenizer as transformers loads it, as llama.cpp's byte-level BPE (`gpt2`): the
    pre-tokenizer's name, every token with its type (padded to the embedding's rows), merges, special
    token ids, whether BOS/EOS are added, and the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    pre = pre_tokenizer_name(pipeline(tokenizer.backend_tokenizer))
    tokens, types = token_list(tokenizer.get_vocab(), tokenizer.added_tokens_decoder, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(checkpoint_dir, load_merges=True, n_vocab=rows)
    special.add_special_token = added_specials(tokenizer)
    special.add_to_gguf(writer, quiet=True)


def pipeline(backend: Any) -> dict[str, Any]:
    """The parts of the tokenizer transformers runs (a `tokenizers.Tokenizer`) that decide how text is
    split, in tokenizer.json's terms. Its tokenizer class may build them in code rather than read them
    from tokenizer.json (Qwen2's does)."""

    def state(part: Any) -> Any:
        return json.loads(part.__getstate__()) if part is not None else None

    model = {
        "type": type(backend.model).__name__,
        "byte_fallback": getattr(backend.model, "byte_fallback", False),
    }
    return {
        "model": model,
        "normalizer": state(backend.normalizer),
        "pre_tokenizer": state(backend.pre_tokenizer),
    }


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name of the tokenizer.json's pre-tokenizer; refuses a tokenizer it would split
    differently."""
    model = spec.get("model") or {}
    normalizer = (spec.get("normalizer") or {}).get("type")
    steps = pre_tokenizer_steps(spec.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(steps)
    if model.get("type") != "BPE" or model.get("byte_fallback") or normalizer not in IGNORED_NORMALIZERS:
        name = None
    if name is None:
        raise UsageError(
            "export_format gguf writes byte-level BPE tokenizers with a pre-tokenizer llama.cpp implements "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); this one is {model.get('type')} with "
            f"normalizer {normalizer} and pre-tokenizer steps {list(steps)}"
        )
    return name


def pre_tokenizer_steps(spec: dict[str, Any] | None) -> tuple[str, ...]:
    """tokenizer.json's `pre_tokenizer` as a flat tuple of the steps that decide the split."""
    if spec is None:
        return ()
    kind = spec["type"]
    if kind == "Sequence":
        return tuple(step for part in spec["pretokenizers"] for step in pre_tokenizer_steps(part))
    if kind == "ByteLevel":
        if spec.get("add_prefix_space"):
            return ("byte-level:prefix-space",)
        return ("byte-level",) if spec.get("use_regex", True) else ("byte-level:no-regex",)
    if kind == "Digits":
        return ("digits",) if spec.get("individual_digits") else ("digits:runs",)
    if kind == "Split" and spec.get("behavior") == "Isolated" and not spec.get("invert"):
        return (f"split:{spec['pattern'].get('Regex')}",)
    return (json.dumps(spec, sort_keys=True),)


def token_list(
    vocab: dict[str, int], added: dict[int, Any], rows: int
) -> tuple[list[str], list[gguf.TokenType]]:
    """Tokens by id with llama.cpp's types (special added tokens CONTROL, other added USER_DEFINED), and
    UNUSED placeholders for embedding rows no token names."""
    if max(vocab.values()) >= rows:
        raise UsageError(f"the tokenizer has token ids past the model's {rows} embedding rows")
    by_id = {index: token for token, index in vocab.items()}
    tokens, types = [], []
    for index in range(rows):
        if index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def added_specials(tokenizer: Any) -> dict[str, bool]:
    """Whether the tokenizer puts a token before (bos) or after (eos) a text of its own."""
    bare = tokenizer.encode(PROBE, add_special_tokens=False)
    full = tokenizer.encode(PROBE)
    start = full.index(bare[0]) if bare[0] in full else 0
    return {"bos": start > 0, "eos": len(full) - start > len(bare)}


# ollama's Go templates for the two chat formats most small models use; other chat templates stay in the
# GGUF's tokenizer.chat_template, from which ollama picks a template it knows
OLLAMA_TEMPLATES = {
    "<|im_start|>": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    "<|start_header_id|>": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
    ),
}


def write_modelfile(checkpoint_dir: Path) -> None:
    """ollama's Modelfile: the GGUF file, and the chat template in ollama's syntax where the checkpoint's
    is ChatML or Llama 3's."""
    lines = [f"FROM ./{GGUF_NAME}"]
    template = _chat_template(checkpoint_dir)
    for marker, (go_template, stop) in OLLAMA_TEMPLATES.items():
        if marker in template:
            lines += [f'TEMPLATE """{go_template}"""', f'PARAMETER stop "{stop}"']
            break
    (checkpoint_dir / MODELFILE_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _chat_template(checkpoint_dir: Path) -> str:
    template = gguf.SpecialVocab(checkpoint_dir).chat_template
    if template is None or isinstance(template, str):
        return template or ""
    # named templates: the default one
    return next((t["template"] for t in template if t.get("name") == "default"), "")
