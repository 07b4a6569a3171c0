"""Phi-3: units on slices of the fused qkv_proj and gate_up_proj, exported exactly (the per-family export
test in tests/pruning/export/test_hf.py covers uniform and per-layer widths, blocks removed whole); here
the fused rows themselves, the stock config's head counts, int8 scoring and `pruning.prune` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from pruning.model.adapters import UnitKind, adapter_for
from tests.pruning.model.adapters.family_checks import (
    compact_perplexity,
    keep_of,
    load_tiny,
    masked_outputs,
    prune_tiny,
    sample_inputs,
)


@pytest.fixture(scope="module")
def phi3(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["phi3"]


def test_fused_rows_of_a_unit(phi3: Path) -> None:
    _, _, space = load_tiny(phi3)
    keep = torch.ones(space.size, dtype=torch.bool)
    attn, mlp = space.group_of(0, UnitKind.ATTN), space.group_of(0, UnitKind.MLP)
    keep[attn.offset] = False  # KV group 0: query heads 0-1, KV head 0
    keep[mlp.offset + 1] = False  # MLP unit 1: channels 2 and 3
    kept = space.kept_indices(keep)
    # qkv_proj rows: 64 query rows (4 heads of 16), then 32 key rows, then 32 value rows
    assert kept[(0, "qkv")].tolist() == [*range(32, 64), *range(64 + 16, 96), *range(96 + 16, 128)]
    # gate_up_proj rows: 96 gate rows then 96 up rows
    channels = [c for c in range(96) if c not in (2, 3)]
    assert kept[(0, "gate_up")].tolist() == channels + [96 + c for c in channels]
    assert kept[(1, "qkv")].tolist() == list(range(128))


def test_stock_head_counts(phi3: Path) -> None:
    adapter = adapter_for("phi3")
    config = AutoConfig.from_pretrained(phi3)
    assert adapter.uniform_kv_counts(config) == [1, 2]
    # long-context configs tie their rope factors' length to hidden_size / num_attention_heads
    longrope = AutoConfig.for_model(
        "phi3",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(
            rope_type="longrope",
            rope_theta=10000.0,
            short_factor=[1.0] * 8,
            long_factor=[2.0] * 8,
            original_max_position_embeddings=256,
        ),
        max_position_embeddings=1024,
    )
    assert adapter.uniform_kv_counts(longrope) == [2]


@pytest.mark.parametrize("uniform", [False, True], ids=["global", "uniform"])
def test_prune_end_to_end(phi3: Path, calibration_file: Path, tmp_path: Path, uniform: bool) -> None:
    out = tmp_path / "out"
    report = prune_tiny(phi3, calibration_file, out, uniform=uniform)
    keep = keep_of(report)
    assert 0 < int((~keep).sum()) < keep.numel()
    if uniform:
        assert not (out / "modeling_fwdprune.py").exists()
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)


def test_int8_scoring_on_cpu(phi3: Path, calibration_file: Path, tmp_path: Path) -> None:
    from pruning import load_pruned

    report = prune_tiny(phi3, calibration_file, tmp_path / "int8", precision="int8")
    assert report.precision == "int8" and report.device == "cpu"
    tiny = load_tiny(phi3)
    masked, _ = masked_outputs(tiny, keep_of(report))
    ids, _ = sample_inputs(tiny.model.config.vocab_size)
    with torch.no_grad():
        logits = load_pruned(tmp_path / "int8", dtype=torch.float32)(ids).logits
    assert torch.allclose(logits, masked, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", ["gemma3_text", "phi3", "qwen3_moe", "mixtral"])
def test_gguf_export_refused_before_any_work(model_type: str) -> None:
    """llama.cpp's architectures for these families are not written: the hf export is."""
    from pruning.errors import UnsupportedModelError
    from pruning.export.formats import EXPORTERS
    from pruning.spec import PruneSettings

    with pytest.raises(UnsupportedModelError, match=f"export_format gguf writes .*{model_type}"):
        EXPORTERS["gguf"].refuse(model_type, PruneSettings(sparsity=0.2, export_format="gguf"))
