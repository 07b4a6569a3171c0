"""The GGUF export: what the file states (architecture, per-layer widths, head size, removed blocks,
tokenizer, storage types) read back with the `gguf` reader; and, where a llama.cpp build is at hand
($FWDPRUNE_LLAMA_CPP or bench.llamacpp's cache), that llama.cpp tokenizes as transformers does and scores
the exported model as transformers scores the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from bench.llamacpp import hf_perplexity, llama_cpp_bin_dir, llama_perplexity, llama_tokenize
from bench.smollm2 import NAME, default_cache
from pruning.errors import UnsupportedModelError, UsageError
from pruning.export.formats import EXPORTERS
from pruning.export.gguf import tensors as gguf_tensors
from pruning.export.gguf import tokenizer, writer
from pruning.export.hf import export_pruned, load_pruned
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import load_model
from pruning.model.units import UnitSpace, build_unit_space
from pruning.spec import PruneSettings
from tests.tiny import CORPUS, make_tiny_causal_lm

CPU = torch.device("cpu")
HIDDEN, HEAD_DIM, INTERMEDIATE, LAYERS = 64, 16, 96, 5
SMOLLM2_DIR = default_cache() / NAME


def removed_blocks_keep(space: UnitSpace) -> torch.Tensor:
    """Layer 0 loses its attention, 1 its MLP, 2 both, 3 one KV group and 20 MLP units (40 channels),
    4 (the last) its MLP."""
    keep = torch.ones(space.size, dtype=torch.bool)

    def drop(layer: int, kind: UnitKind, count: int | None = None) -> None:
        group = space.group_of(layer, kind)
        keep[group.offset : group.offset + (group.count if count is None else count)] = False

    drop(0, UnitKind.ATTN)
    drop(1, UnitKind.MLP)
    drop(2, UnitKind.ATTN)
    drop(2, UnitKind.MLP)
    drop(3, UnitKind.ATTN, 1)
    drop(3, UnitKind.MLP, 20)
    drop(4, UnitKind.MLP)
    return keep


def uniform_keep(space: UnitSpace) -> torch.Tensor:
    """Every layer keeps its second KV group (2 of 4 query heads) and 64 of 96 MLP channels."""
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer in range(space.num_layers):
        keep[space.group_of(layer, UnitKind.ATTN).offset] = False
        mlp = space.group_of(layer, UnitKind.MLP)
        keep[mlp.offset + mlp.count * 2 // 3 : mlp.offset + mlp.count] = False
    return keep


def pruned_checkpoint(root: Path, family: str, keep_of: Any, uniform: bool) -> Path:
    source = make_tiny_causal_lm(
        root / f"{family}-dense", family, layers=LAYERS, intermediate_size=INTERMEDIATE, head_dim=HEAD_DIM
    )
    loaded = load_model(source, "fp32", CPU)
    adapter = adapter_for(family)
    space = build_unit_space(loaded.model, adapter, None)
    out = root / f"{family}-{'uniform' if uniform else 'global'}"
    export_pruned(source, out, adapter, space, keep_of(space), uniform=uniform)
    return out


@pytest.fixture(scope="module")
def global_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("gguf"), "llama", removed_blocks_keep, uniform=False)


@pytest.fixture(scope="module")
def uniform_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("gguf"), "llama", uniform_keep, uniform=True)


def write(checkpoint: Path, gguf_type: str = "f32", family: str = "llama") -> gguf.GGUFReader:
    path = checkpoint / f"model-{gguf_type}.gguf"
    writer.export_gguf(checkpoint, path, adapter_for(family), gguf_type, "tiny")
    return gguf.GGUFReader(path)


def field(reader: gguf.GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def tensors(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {tensor.name: tensor for tensor in reader.tensors}


def stored(checkpoint: Path, name: str) -> np.ndarray:
    return CheckpointReader(checkpoint).get(name).float().numpy()


def test_uniform_widths_are_written_in_the_familys_own_architecture(uniform_llama: Path) -> None:
    reader = write(uniform_llama)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == LAYERS
    assert field(reader, "llama.attention.head_count") == 2
    assert field(reader, "llama.attention.head_count_kv") == 1
    assert field(reader, "llama.feed_forward_length") == 64
    # the head size, not hidden_size / head_count (64 / 2 = 32)
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        assert field(reader, f"llama.{key}") == HEAD_DIM
    shapes = {name: t.shape.tolist() for name, t in tensors(reader).items()}
    # GGUF lists a matrix's row length first
    assert shapes["blk.0.attn_q.weight"] == [HIDDEN, 2 * HEAD_DIM]
    assert shapes["blk.0.attn_k.weight"] == [HIDDEN, HEAD_DIM]
    assert shapes["blk.0.attn_output.weight"] == [2 * HEAD_DIM, HIDDEN]
    assert shapes["blk.4.ffn_down.weight"] == [64, HIDDEN]
    assert shapes["output.weight"] == [HIDDEN, 320]
    assert len(shapes) == 2 + 1 + LAYERS * 9


def test_per_layer_widths_are_written_as_deci_arrays(global_llama: Path) -> None:
    reader = write(global_llama)
    assert field(reader, "general.architecture") == "deci"
    # layer 0's attention is a zero linear one (heads, no KV heads): llama.cpp reads the head size only
    # when layer 0 has heads; the MLPs of layers 1 and 4 are 32 zero channels
    assert field(reader, "deci.attention.head_count") == [4, 4, 0, 2, 4]
    assert field(reader, "deci.attention.head_count_kv") == [0, 2, 0, 1, 2]
    assert field(reader, "deci.feed_forward_length") == [96, 32, 0, 56, 32]
    assert field(reader, "deci.attention.key_length") == HEAD_DIM
    assert field(reader, "deci.rope.dimension_count") == HEAD_DIM


def test_removed_blocks_are_written_as_llama_cpps_deci_graph_computes_them(global_llama: Path) -> None:
    found = tensors(write(global_llama))
    layer = {i: sorted(n.split(".", 2)[2] for n in found if n.startswith(f"blk.{i}.")) for i in range(LAYERS)}
    mlp = ["ffn_down.weight", "ffn_gate.weight", "ffn_norm.weight", "ffn_up.weight"]
    attention = ["attn_k.weight", "attn_norm.weight", "attn_output.weight", "attn_q.weight", "attn_v.weight"]
    assert layer[0] == ["attn_norm.weight", "attn_output.weight", *mlp]
    assert not found["blk.0.attn_output.weight"].data.any()
    assert layer[1] == sorted(attention + mlp)
    assert layer[2] == []  # feed_forward_length 0 and no heads: the layer is skipped whole
    assert layer[4] == sorted(attention + mlp)
    for block in ("blk.1", "blk.4"):
        assert found[f"{block}.ffn_down.weight"].shape.tolist() == [32, HIDDEN]
        assert not found[f"{block}.ffn_gate.weight"].data.any()
        assert not found[f"{block}.ffn_down.weight"].data.any()
    np.testing.assert_array_equal(
        found["blk.3.ffn_down.weight"].data, stored(global_llama, "model.layers.3.mlp.down_proj.weight")
    )


def test_query_and_key_rows_are_paired_for_llama_cpps_rope(global_llama: Path) -> None:
    found = tensors(write(global_llama))
    q = stored(global_llama, "model.layers.3.self_attn.q_proj.weight")  # 2 heads of 16 rows
    written = found["blk.3.attn_q.weight"].data
    # head h's row i (first half) and row 8 + i (second half) become rows 2i and 2i + 1
    for head in range(2):
        for i in range(HEAD_DIM // 2):
            np.testing.assert_array_equal(written[head * 16 + 2 * i], q[head * 16 + i])
            np.testing.assert_array_equal(written[head * 16 + 2 * i + 1], q[head * 16 + 8 + i])
    v = stored(global_llama, "model.layers.3.self_attn.v_proj.weight")
    np.testing.assert_array_equal(found["blk.3.attn_v.weight"].data, v)  # values are not rotated


def test_q8_0_stores_whole_block_matrices_in_q8_0_and_the_rest_as_llama_cpp_reads_them(
    global_llama: Path,
) -> None:
    found = tensors(write(global_llama, "q8_0"))
    types = {name: tensor.tensor_type for name, tensor in found.items()}
    assert types["blk.1.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.3.ffn_down.weight"] == gguf.GGMLQuantizationType.F16  # rows of 56: not 32-blocks
    assert types["blk.1.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    q = found["blk.1.attn_v.weight"]
    values = gguf.quants.dequantize(q.data, q.tensor_type).reshape(32, HIDDEN)
    original = stored(global_llama, "model.layers.1.self_attn.v_proj.weight")
    blocks = np.abs(original).reshape(32, 2, 32).max(axis=2, keepdims=True)
    # within half a step of its 32-value block's grid, plus the f16 rounding of the step (127 steps x 2^-11)
    assert np.all(np.abs(values - original).reshape(32, 2, 32) <= blocks / 127 * (0.5 + 127 / 2048))


def test_file_types_and_sizes(global_llama: Path) -> None:
    sizes = {}
    for gguf_type, file_type in (("f32", 0), ("f16", 1), ("bf16", 32), ("q8_0", 7)):
        reader = write(global_llama, gguf_type)
        assert field(reader, "general.file_type") == file_type
        sizes[gguf_type] = (global_llama / f"model-{gguf_type}.gguf").stat().st_size
    assert sizes["f32"] > 1.9 * sizes["f16"]
    assert sizes["f16"] == pytest.approx(sizes["bf16"], abs=64)  # the same bytes a weight, the header aside
    assert sizes["f16"] > 1.5 * sizes["q8_0"]


def test_tokenizer_is_written_as_transformers_loads_it(global_llama: Path) -> None:
    reader = write(global_llama)
    spec = json.loads((global_llama / "tokenizer.json").read_text())
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 320 and tokens[0] == "<|endoftext|>"
    assert tokens[5] == next(t for t, i in spec["model"]["vocab"].items() if i == 5)
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.CONTROL and set(types[1:]) == {gguf.TokenType.NORMAL}
    assert len(field(reader, "tokenizer.ggml.merges")) == len(spec["model"]["merges"])
    assert field(reader, "tokenizer.ggml.bos_token_id") == 0
    assert field(reader, "tokenizer.ggml.eos_token_id") == 0
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


GPT2_STEPS = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def split_then_bytes(pattern: str) -> dict[str, Any]:
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, {**GPT2_STEPS, "use_regex": False}]}


@pytest.mark.parametrize(
    ("pre_tokenizer", "name"),
    [
        (GPT2_STEPS, "gpt-2"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_STEPS],
            },
            "smollm",
        ),
        (split_then_bytes(tokenizer.LLAMA3_SPLIT), "llama-bpe"),
        (split_then_bytes(tokenizer.QWEN2_SPLIT), "qwen2"),
    ],
)
def test_pre_tokenizers_are_named_as_llama_cpp_names_them(pre_tokenizer: dict[str, Any], name: str) -> None:
    spec = {"model": {"type": "BPE"}, "normalizer": None, "pre_tokenizer": pre_tokenizer}
    assert tokenizer.pre_tokenizer_name(spec) == name


def test_a_pre_tokenizer_llama_cpp_lacks_is_refused() -> None:
    spec = {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Whitespace"}}
    with pytest.raises(UsageError, match="pre-tokenizer"):
        tokenizer.pre_tokenizer_name(spec)
    sentencepiece = {"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": {"type": "Metaspace"}}
    with pytest.raises(UsageError, match="byte-level BPE"):
        tokenizer.pre_tokenizer_name(sentencepiece)


def test_qwen2_with_fewer_query_heads_is_written_as_deci(tmp_path: Path) -> None:
    """llama.cpp's qwen2 states q_proj as hidden x hidden; deci holds Qwen2's q/k/v biases."""
    reader = write(pruned_checkpoint(tmp_path, "qwen2", uniform_keep, uniform=True), family="qwen2")
    assert field(reader, "general.architecture") == "deci"
    assert field(reader, "deci.attention.head_count") == [2] * LAYERS
    assert tensors(reader)["blk.0.attn_q.bias"].shape.tolist() == [2 * HEAD_DIM]


def test_qwen3_is_written_with_uniform_widths_only(tmp_path: Path) -> None:
    reader = write(pruned_checkpoint(tmp_path, "qwen3", uniform_keep, uniform=True), family="qwen3")
    assert field(reader, "general.architecture") == "qwen3"
    assert tensors(reader)["blk.0.attn_q_norm.weight"].shape.tolist() == [HEAD_DIM]
    per_layer = pruned_checkpoint(tmp_path, "qwen3", removed_blocks_keep, uniform=False)
    with pytest.raises(UsageError, match="uniform widths"):
        writer.export_gguf(per_layer, tmp_path / "x.gguf", adapter_for("qwen3"), "f16", "tiny")


def test_a_sliding_window_bounds_the_context_llama_cpp_is_told() -> None:
    assert writer.context_length({"max_position_embeddings": 512, "sliding_window": 64}) == 64
    assert writer.context_length({"max_position_embeddings": 512, "sliding_window": None}) == 512
    qwen2 = {"max_position_embeddings": 512, "sliding_window": 64, "use_sliding_window": False}
    assert writer.context_length(qwen2) == 512


def test_submit_refuses_what_gguf_cannot_hold() -> None:
    gguf_job = PruneSettings(sparsity=0.3, export_format="gguf")
    EXPORTERS["gguf"].refuse("llama", gguf_job)
    with pytest.raises(UnsupportedModelError, match="bert is an encoder"):
        EXPORTERS["gguf"].refuse("bert", gguf_job)
    with pytest.raises(UnsupportedModelError, match="gemma3_text is not one of them"):
        EXPORTERS["gguf"].refuse("gemma3_text", gguf_job)
    with pytest.raises(UnsupportedModelError, match="uniform widths only"):
        EXPORTERS["gguf"].refuse("qwen3", gguf_job)
    EXPORTERS["gguf"].refuse("qwen3", PruneSettings(sparsity=0.3, export_format="gguf", uniform=True))
    with pytest.raises(ValueError, match="uniform widths only"):
        PruneSettings(sparsity=0.3, export_format="gguf", compensate="bias")


def test_output_bias_of_a_removed_attention_is_refused(global_llama: Path, tmp_path: Path) -> None:
    """llama.cpp's deci graph adds no bias where a layer has no attention."""
    biased = tmp_path / "biased"
    shutil.copytree(global_llama, biased)
    weights = CheckpointReader(biased)
    name = "model.layers.2.self_attn.o_proj.bias"
    shard = weights.shards[0]
    content = load_file(biased / shard)
    content[name] = torch.ones(HIDDEN)
    save_file(content, biased / shard, metadata={"format": "pt"})
    if weights.sharded:
        index = json.loads((biased / "model.safetensors.index.json").read_text())
        index["weight_map"][name] = shard
        (biased / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="output bias of layer 2"):
        writer.export_gguf(biased, tmp_path / "x.gguf", adapter_for("llama"), "f16", "tiny")


def test_llama3_rope_scaling_matches_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 500000.0 ** -(torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    divisors = gguf_tensors.llama3_rope_divisors(rope, 64)
    np.testing.assert_allclose(divisors, (plain / scaled.double()).numpy(), rtol=1e-5)
    assert divisors[0] == 1.0 and divisors[-1] == 32.0


def test_modelfile_carries_a_chatml_template(global_llama: Path) -> None:
    (global_llama / "chat_template.jinja").write_text(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "<|im_end|>\n{% endfor %}"
    )
    tokenizer.write_modelfile(global_llama)
    lines = (global_llama / "Modelfile").read_text().splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert lines[1].startswith('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}')
    assert lines[-1] == 'PARAMETER stop "<|im_end|>"'
    (global_llama / "chat_template.jinja").unlink()


def test_a_gguf_job_writes_the_file_beside_the_checkpoint_and_says_how_to_run_it(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    from pruning import prune

    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "out",
        sparsity=0.3,
        method="random",
        export_format="gguf",
        gguf_type="q8_0",
        seq_len=32,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
    )
    out = tmp_path / "out"
    assert (out / "config.json").is_file() and (out / "Modelfile").read_text().startswith("FROM ./model.gguf")
    reader = gguf.GGUFReader(out / "model.gguf")
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field(reader, "deci.attention.head_count_kv") == [la.num_key_value_heads for la in report.layers]
    card = (out / "README.md").read_text()
    assert "llama-cli -m model.gguf" in card and "ollama create pruned -f Modelfile" in card


# -- with a llama.cpp build ----------------------------------------------------------------------

LLAMA_CPP = llama_cpp_bin_dir()
needs_llama_cpp = pytest.mark.skipif(
    LLAMA_CPP is None,
    reason="no llama.cpp build: set FWDPRUNE_LLAMA_CPP to its bin directory or run "
    "`python -m bench.llamacpp --build-only`",
)
TEXTS = [
    "def add(a, b):\n    return a + b  # 1234567 \t tabs\n\n",
    "naïve café — 東京タワー 🚀🦙 ÅÄÖ ünïcödé",
    "I've been 'told he's there, 'RE you sure? 3.14159 and 1e-9",
    "<|endoftext|>after a special token\r\n   spaces   ",
]


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "keep_of", "uniform"),
    [
        ("llama", removed_blocks_keep, False),  # deci, every kind of removed block
        ("qwen2", removed_blocks_keep, False),  # deci with q/k/v biases
        ("qwen3", uniform_keep, True),  # qwen3, q/k norms, fewer query heads
    ],
)
def test_llama_cpp_scores_the_file_as_transformers_scores_the_checkpoint(
    family: str, keep_of: Any, uniform: bool, tmp_path: Path
) -> None:
    """The same token chunks, the second half of each scored (llama-perplexity's protocol)."""
    checkpoint = pruned_checkpoint(tmp_path, family, keep_of, uniform)
    text = "\n".join(CORPUS * 40)
    (tmp_path / "text.txt").write_text(text)
    ids = AutoTokenizer.from_pretrained(checkpoint).encode(text)
    expected = hf_perplexity(load_pruned(checkpoint, dtype=torch.float32).eval(), ids, 64, 8)
    assert LLAMA_CPP is not None
    for gguf_type in ("f32", "f16"):
        write(checkpoint, gguf_type, family)
        measured = llama_perplexity(
            LLAMA_CPP, checkpoint / f"model-{gguf_type}.gguf", tmp_path / "text.txt", 64, 8
        )
        assert measured == pytest.approx(expected, rel=0.01), gguf_type


@pytest.fixture(scope="module")
def smollm2_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Llama with SmolLM2-135M's tokenizer and an embedding row for each of its tokens."""
    model = make_tiny_causal_lm(tmp_path_factory.mktemp("smollm2-vocab"), "llama", layers=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SMOLLM2_DIR / name, model / name)
    weights = CheckpointReader(model)
    tensors_ = {name: weights.get(name) for name in weights.weight_map}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors_[name] = torch.zeros(49152, HIDDEN)
    for path in model.glob("model*.safetensors*"):
        path.unlink()
    save_file(tensors_, model / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": 49152}))
    return model


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.skipif(
    not SMOLLM2_DIR.is_dir(), reason="SmolLM2-135M not materialized (python -m bench.smollm2)"
)
@pytest.mark.parametrize(
    ("pre_tokenizer", "name"),
    [
        (None, "gpt-2"),  # bench.smollm2's checkpoint, as transformers rebuilt it from the GGUF file
        (
            {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_STEPS],
            },
            "smollm",
        ),
        (split_then_bytes(tokenizer.LLAMA3_SPLIT), "llama-bpe"),
        (split_then_bytes(tokenizer.QWEN2_SPLIT), "qwen2"),
    ],
)
def test_llama_cpp_tokenizes_as_transformers(
    smollm2_vocab_model: Path, tmp_path: Path, pre_tokenizer: dict[str, Any] | None, name: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(smollm2_vocab_model, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = pre_tokenizer or spec["pre_tokenizer"]
    (model / "tokenizer.json").write_text(json.dumps(spec))
    reader = write(model, "f16")
    assert field(reader, "tokenizer.ggml.pre") == name
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert LLAMA_CPP is not None
    for text in TEXTS:
        assert llama_tokenize(LLAMA_CPP, model / "model-f16.gguf", text) == tokenizer.encode(text), text
