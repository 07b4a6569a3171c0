"""Gemma 3 (gemma3_text): one KV group per layer, q/k norms, post-norms, sliding and global layers, a query
scalar, tied embeddings; exact export with blocks removed whole, the selection with whole-layer attention
units, int8 scoring, and `pruning.prune` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pruning.checkpoint_checks import read_model_type
from pruning.errors import UnsupportedModelError
from pruning.methods.bonsai.split_search import attention_fractions
from pruning.model.adapters import UnitKind
from pruning.selection import UnitSelector
from tests.pruning.model.adapters.family_checks import (
    compact_perplexity,
    export_and_compare,
    keep_of,
    load_tiny,
    masked_outputs,
    prune_tiny,
)


@pytest.fixture(scope="module")
def gemma(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["gemma3"]


def stored_names(out: Path) -> set[str]:
    names: set[str] = set()
    for shard in out.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as handle:
            names |= set(handle.keys())
    return names


def test_one_unit_holds_a_layers_whole_attention(gemma: Path) -> None:
    model, adapter, space = load_tiny(gemma)
    assert [g.count for g in space.groups] == [1, 48, 1, 48]  # 96 MLP channels in blocks of 2
    assert space.group_size == [4, 4]
    assert float(space.params[0]) == (2 * 4 + 2) * 16 * 64  # 4 q heads and o columns, one k and one v head
    assert adapter.uniform_kv_counts(model.config) == [1]
    # the attention scale is the query scalar's, whatever the head count
    assert model.model.layers[0].self_attn.scaling == 32**-0.5
    assert model.config.layer_types == ["sliding_attention", "full_attention"]


def test_a_block_removed_whole_adds_nothing(gemma: Path) -> None:
    model = load_tiny(gemma).model
    layer = model.model.layers[0]
    zeros = torch.zeros(2, 3, 64)
    for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
        assert torch.equal(norm(zeros), zeros)  # x·(1+w)/rms(x) of zero is zero


def test_global_export_with_blocks_removed_whole(gemma: Path, tmp_path: Path) -> None:
    _, _, space = load_tiny(gemma)
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[space.slice(space.group_of(0, UnitKind.ATTN))] = False  # the sliding layer loses its attention
    keep[space.slice(space.group_of(1, UnitKind.ATTN))] = True
    keep[space.slice(space.group_of(1, UnitKind.MLP))] = False  # the global layer loses its MLP
    out = tmp_path / "out"
    compacts = export_and_compare(gemma, out, keep, uniform=False)
    config = json.loads((out / "config.json").read_text())
    assert [la["num_key_value_heads"] for la in config["fwdprune_layers"]] == [0, 1]
    assert config["fwdprune_layers"][1]["intermediate_size"] == 0
    names = stored_names(out)
    assert "model.layers.0.self_attn.q_norm.weight" not in names  # gone with the attention it normed
    assert "model.layers.1.self_attn.q_norm.weight" in names
    assert "model.layers.0.post_attention_layernorm.weight" in names  # the layer's norms stay
    assert "lm_head.weight" not in names  # tied to the embeddings
    compact = compacts[0]
    assert compact.lm_head.weight.data_ptr() == compact.model.embed_tokens.weight.data_ptr()


def test_uniform_export_loads_stock(gemma: Path, tmp_path: Path) -> None:
    _, _, space = load_tiny(gemma)
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer in range(2):
        mlp = space.group_of(layer, UnitKind.MLP)
        keep[mlp.offset + torch.arange(layer, 40, 4)] = False  # 10 units of 2 channels in each layer
    out = tmp_path / "out"
    (compact,) = export_and_compare(gemma, out, keep, uniform=True)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (
        4,
        1,
        76,
    )
    assert config["query_pre_attn_scalar"] == 32 and config["head_dim"] == 16
    assert type(compact).__name__ == "Gemma3ForCausalLM"


def test_split_search_with_one_group_per_layer(gemma: Path) -> None:
    """Attention goes a whole layer at a time: every fraction of the grid is a whole number of layers'
    attention, and the MLP makes up the rest of the budget."""
    _, _, space = load_tiny(gemma)
    attention = space.kind == UnitKind.ATTN
    target = 0.4 * float(space.params.sum())
    fractions = attention_fractions(space, target, 5)
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(0.95)
    selector = UnitSelector(space, False, {UnitKind.ATTN: [1], UnitKind.MLP: list(range(1, 48))})
    alive = torch.ones(space.size, dtype=torch.bool)
    score = torch.arange(space.size, dtype=torch.float64) / space.params
    removed_layers = []
    for fraction in fractions:
        removed = selector.select_per_kind(score, alive, target, attention_ratio=fraction / 0.4)
        removed_layers.append(int(removed[attention].sum()))
        assert abs(float(space.params[removed].sum()) - target) <= float(space.params.max())
    assert removed_layers == sorted(removed_layers) and removed_layers[0] == 0 and removed_layers[-1] == 2
    # uniform widths cannot state a layer without attention in a stock config: only the MLP goes
    uniform = UnitSelector(space, True, {UnitKind.ATTN: [1], UnitKind.MLP: list(range(1, 48))})
    removed = uniform.select_per_kind(score, alive, target)
    assert not bool(removed[attention].any()) and bool(removed.any())


@pytest.mark.parametrize("uniform", [False, True], ids=["global", "uniform"])
def test_prune_end_to_end(gemma: Path, calibration_file: Path, tmp_path: Path, uniform: bool) -> None:
    out = tmp_path / "out"
    report = prune_tiny(gemma, calibration_file, out, uniform=uniform)
    assert report.compensation == "none"
    keep = keep_of(report)
    assert 0 < int((~keep).sum()) < keep.numel()
    if uniform:
        assert len({(la.num_key_value_heads, la.intermediate_size) for la in report.layers}) == 1
        assert not (out / "modeling_fwdprune.py").exists()
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)


def test_int8_scoring_on_cpu(gemma: Path, calibration_file: Path, tmp_path: Path) -> None:
    report = prune_tiny(gemma, calibration_file, tmp_path / "int8", precision="int8")
    assert report.precision == "int8" and report.device == "cpu"
    tiny = load_tiny(gemma)
    masked, _ = masked_outputs(tiny, keep_of(report))
    from pruning import load_pruned
    from tests.pruning.model.adapters.family_checks import sample_inputs

    ids, _ = sample_inputs(tiny.model.config.vocab_size)
    with torch.no_grad():
        logits = load_pruned(tmp_path / "int8", dtype=torch.float32)(ids).logits
    # int8 only chose the units: the export slices the original weights, as the fp32 masked model
    assert torch.allclose(logits, masked, atol=1e-4, rtol=0)


def test_multimodal_gemma3_refused_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(UnsupportedModelError, match="vision tower.*gemma3_text"):
        read_model_type(tmp_path)
