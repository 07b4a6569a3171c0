from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruning.checkpoint_checks import read_model_type
from pruning.errors import ModelNotFoundError, UnsupportedModelError, UsageError
from pruning.model.adapters import adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import (
    FP8_SCALE_FLOOR,
    checkpoint_dtype,
    load_model,
    resolve_device,
    resolve_model_dir,
    resolve_precision,
)

CPU = torch.device("cpu")


def test_resolve_model_dir(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_dir(str(tiny_llama)) == tiny_llama.resolve()
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model_dir(str(tmp_path / "noconfig"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="not a local checkpoint directory nor a Hub id"):
        resolve_model_dir("no-such-org/no-such-model")


def test_resolve_device_and_precision() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "int8"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_read_model_type(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    assert read_model_type(tiny_models["qwen3"]) == "qwen3"
    assert read_model_type(tiny_models["llama-mha"]) == "llama"
    with pytest.raises(UnsupportedModelError, match="has no config.json"):
        read_model_type(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedModelError, match="not valid JSON"):
        read_model_type(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(
        UnsupportedModelError, match="'gpt2' is not supported; supported model types: .*llama"
    ):
        read_model_type(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported") as info:
        adapter_for("gpt2")
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(str(info.value).split(": ")[-1].split(", "))


def test_load_fp32_and_checkpoint_dtype(tiny_llama: Path) -> None:
    assert checkpoint_dtype(tiny_llama) == torch.float32
    loaded = load_model(tiny_llama, "auto", CPU)
    assert loaded.precision == "fp32"
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.eos_token_id == 0


def test_load_int8_on_cpu_quantizes_linears(tiny_llama: Path) -> None:
    import bitsandbytes as bnb

    loaded = load_model(tiny_llama, "int8", CPU)
    assert loaded.precision == "int8"
    o_proj = loaded.model.model.layers[0].self_attn.o_proj
    assert isinstance(o_proj, bnb.nn.Linear8bitLt)
    logits = loaded.model(torch.arange(1, 9)[None]).logits
    assert logits.shape == (1, 8, 320) and bool(torch.isfinite(logits).all())


def test_load_int8_weight_only_quantizes_decoder_linears_only(tiny_llama: Path) -> None:
    pytest.importorskip("torchao", reason="int8-weight-only needs torchao (the test extra installs it)")
    from torchao.quantization import Int8Tensor

    dense = load_model(tiny_llama, "fp32", CPU).model
    loaded = load_model(tiny_llama, "int8-weight-only", CPU)
    assert loaded.precision == "int8-weight-only"
    layer = loaded.model.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(linear.weight, Int8Tensor)
    assert not isinstance(loaded.model.lm_head.weight, Int8Tensor)  # the output projection stays float
    tokens = torch.arange(1, 9)[None]
    with torch.no_grad():
        expected, got = dense(tokens).logits, loaded.model(tokens).logits
    assert got.shape == (1, 8, 320)
    # per-row int8 weights: about 1% of the logits' scale, far from exact and far from broken
    error = float((got - expected).norm() / expected.norm())
    assert 1e-5 < error < 0.05


def test_fp8_needs_a_recent_cuda_gpu(tiny_llama: Path) -> None:
    pytest.importorskip("torchao", reason="fp8 needs torchao (the test extra installs it)")
    with pytest.raises(UsageError, match="compute capability 8.9"):
        load_model(tiny_llama, "fp8", CPU)


def test_fp8_rows_of_zeros_quantize_to_zeros_under_the_scale_floor() -> None:
    pytest.importorskip("torchao", reason="fp8 needs torchao (the test extra installs it)")
    from torchao.quantization.quant_primitives import _choose_scale_float8

    rows = torch.zeros(2, 64)
    rows[1] = torch.linspace(-3.0, 3.0, 64)  # a live row beside one whose heads were all dropped
    unfloored = _choose_scale_float8(rows, block_size=[1, 64])
    floored = _choose_scale_float8(rows, block_size=[1, 64], hp_value_lb=FP8_SCALE_FLOOR)
    assert bool(torch.isnan(rows[0] / unfloored[0]).all())  # what the floor prevents
    assert bool((rows[0] / floored[0] == 0).all())
    assert float(floored[1, 0]) == pytest.approx(3.0 / 448.0)  # a live row keeps its own scale


def test_checkpoint_reader_is_sharded_and_finds_names(tiny_llama: Path) -> None:
    reader = CheckpointReader(tiny_llama)
    assert reader.sharded and len(reader.shards) > 1
    assert reader.find("model.layers.0.self_attn.o_proj.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert reader.find("layers.0.self_attn.o_proj.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert reader.find("o_proj.weight") is None  # ambiguous: one per layer
    assert reader.get("model.layers.1.mlp.down_proj.weight").shape == (64, 96)
    names = [name for shard in reader.shards for name, _ in reader.shard_tensors(shard)]
    assert sorted(names) == sorted(reader.weight_map)


def test_a_cpu_without_bf16_flags_does_not_compute_bf16_natively(tmp_path: Path) -> None:
    from pruning.model.loading import cpu_computes_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_computes_bf16(cpuinfo) is False
    assert cpu_computes_bf16(tmp_path / "missing") is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    # the flags make it a candidate; a timed matmul decides (a VM may report what it does not run)
    assert isinstance(cpu_computes_bf16(cpuinfo), bool)


def test_auto_precision_is_fp32_on_a_cpu_and_bf16_mixed_is_asked_for() -> None:
    from pruning.model.loading import resolve_precision, scoring_autocast

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"
    assert scoring_autocast("bf16-mixed") == torch.bfloat16 and scoring_autocast("fp32") is None
