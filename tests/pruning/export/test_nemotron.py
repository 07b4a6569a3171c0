"""The Nemotron-NAS ("DeciLM") export: the selection stays within what the layout states, and the
exported checkpoint, loaded through its own modeling code, computes exactly what the masked model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from pruning import prune
from pruning.engine.reporting import count_checkpoint_params
from pruning.errors import UsageError
from pruning.export.formats.nemotron import FFN_WIDTH_MULTIPLE
from pruning.export.nemotron import export_nemotron
from pruning.export.remote_code.modeling_decilm import ffn_mult_to_intermediate_size
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import UnitSpace, build_unit_space
from pruning.selection import UnitSelector
from pruning.selection.width_rules import format_rules, mlp_units_per_step
from tests.tiny import TinyModel, make_tiny_causal_lm

CPU = torch.device("cpu")
HIDDEN = 64
INTERMEDIATE = 512  # two 256-channel steps: widths 0, 256 and 512 are expressible


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (4 query heads over 2 KV groups, 3 layers) whose MLP width ffn_mult can state."""
    out = tmp_path_factory.mktemp("nemotron") / "llama"
    return make_tiny_causal_lm(out, "llama", hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, layers=3)


@pytest.fixture(scope="module")
def wide_fp32(wide_llama: Path) -> TinyModel:
    loaded = load_model(wide_llama, "fp32", CPU)
    adapter = adapter_for("llama")
    return TinyModel(loaded.model, adapter, build_unit_space(loaded.model, adapter, None))


def kept_counts(space: UnitSpace, keep: torch.Tensor, kind: UnitKind) -> list[int]:
    return [int(keep[space.slice(space.group_of(layer, kind))].sum()) for layer in range(space.num_layers)]


def assert_expressible(space: UnitSpace, keep: torch.Tensor) -> None:
    """What the layout can state: one KV-group count shared by the layers that keep attention, and MLP
    widths in whole 256-channel steps."""
    kv = kept_counts(space, keep, UnitKind.ATTN)
    assert len({c for c in kv if c}) <= 1, kv
    step = mlp_units_per_step(space, FFN_WIDTH_MULTIPLE)
    assert all(c % step == 0 for c in kept_counts(space, keep, UnitKind.MLP))


def assert_valid_decilm(config: dict[str, Any], layers: int) -> None:
    assert config["architectures"] == ["DeciLMForCausalLM"]
    assert config["model_type"] == "nemotron-nas"
    assert "num_key_value_heads" not in config and "fwdprune_layers" not in config
    blocks = config["block_configs"]
    assert len(blocks) == layers
    kv_heads = set()
    for block in blocks:
        attention, ffn = block["attention"], block["ffn"]
        assert set(attention) == {"n_heads_in_group", "no_op", "replace_with_linear"}
        assert set(ffn) == {"ffn_mult", "no_op", "replace_with_linear"}
        assert not attention["replace_with_linear"] and not ffn["replace_with_linear"]
        assert (attention["n_heads_in_group"] is None) == attention["no_op"]
        if not attention["no_op"]:
            assert config["num_attention_heads"] % attention["n_heads_in_group"] == 0
            kv_heads.add(config["num_attention_heads"] // attention["n_heads_in_group"])
        assert (ffn["ffn_mult"] is None) == ffn["no_op"]
        if not ffn["no_op"]:
            assert ffn_mult_to_intermediate_size(ffn["ffn_mult"], config["hidden_size"]) % 256 == 0
    assert len(kv_heads) <= 1


def nemotron_selector(model: TinyModel) -> UnitSelector:
    space = model.space
    kv_counts = model.adapter.uniform_kv_counts(model.model.config)
    rules = format_rules(space, kv_counts, mlp_step=FFN_WIDTH_MULTIPLE, shared_kv_count=True)
    return UnitSelector(space, False, {}, rules)


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.4, 0.6, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_never_leaves_a_layout_the_format_cannot_state(
    wide_fp32: TinyModel, sparsity: float, seed: int
) -> None:
    space = wide_fp32.space
    selector = nemotron_selector(wide_fp32)
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    alive = torch.ones(space.size, dtype=torch.bool)
    target = sparsity * float(space.params.sum())
    for keep in (
        ~selector.select(score, alive, target),
        ~selector.select_per_kind(score, alive, target),
    ):
        assert_expressible(space, keep)
        removed = float(space.params[~keep].sum())
        assert removed > 0
    # in rounds, as bonsai selects: each round starts from the last one's layout
    keep = alive.clone()
    for round_index in range(3):
        keep &= ~selector.select(score, keep, target / 3)
        assert_expressible(space, keep)
        assert float(space.params[~keep].sum()) > 0.5 * target * (round_index + 1) / 3


def test_selection_shares_the_kv_count_where_a_global_ranking_would_not(wide_fp32: TinyModel) -> None:
    """Layer 0's first KV group is by far the least important: a global ranking removes it alone (KV
    counts 1, 2, 2); the layout instead keeps one count for every layer that keeps attention."""
    space = wide_fp32.space
    score = torch.ones(space.size, dtype=torch.float64)
    attn0 = space.group_of(0, UnitKind.ATTN)
    score[attn0.offset] = 1e-6
    target = float(space.params[attn0.offset])
    alive = torch.ones(space.size, dtype=torch.bool)
    unconstrained = ~UnitSelector(space, False, {}).select(score, alive, target)
    assert kept_counts(space, unconstrained, UnitKind.ATTN) == [1, 2, 2]
    keep = ~nemotron_selector(wide_fp32).select(score, alive, target)
    assert_expressible(space, keep)
    assert float(space.params[~keep].sum()) > 0


@pytest.fixture(scope="module")
def uneven_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose MLP (384 channels, a step and a half) the layout cannot state whole."""
    out = tmp_path_factory.mktemp("nemotron-uneven") / "llama"
    return make_tiny_causal_lm(out, "llama", hidden_size=HIDDEN, intermediate_size=384, layers=3)


@pytest.mark.parametrize("sparsity", [0.01, 0.3])
def test_a_width_the_layout_cannot_state_is_cut_to_one_it_can(uneven_llama: Path, sparsity: float) -> None:
    """Every layer's MLP goes from 384 to at most 256 channels in the first selection, even when the
    budget alone would remove less, and stays expressible through the rounds."""
    loaded = load_model(uneven_llama, "fp32", CPU)
    adapter = adapter_for("llama")
    model = TinyModel(loaded.model, adapter, build_unit_space(loaded.model, adapter, None))
    space, selector = model.space, nemotron_selector(model)
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step = mlp_units_per_step(space, FFN_WIDTH_MULTIPLE)
    keep = torch.ones(space.size, dtype=torch.bool)
    target = sparsity * float(space.params.sum())
    for _ in range(3):
        keep &= ~selector.select(score, keep, target / 3)
        assert_expressible(space, keep)
        assert max(kept_counts(space, keep, UnitKind.MLP)) <= step  # 256 channels
    mlp = space.group_of(0, UnitKind.MLP)
    lowest = mlp.offset + torch.argsort(score[space.slice(mlp)], stable=True)[: mlp.count - step]
    assert not keep[lowest].any()  # the cut takes each layer's lowest-scored channels


def test_prune_exports_a_model_whose_width_the_layout_cannot_state(
    uneven_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    report = prune(
        model=str(uneven_llama),
        data=calibration_file,
        out_dir=out,
        sparsity=0.2,
        method="bonsai",
        export_format="nemotron-nas",
        compensate="none",
        seq_len=32,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
        options={"rounds": 2, "samples_per_round": 8, "scoring_sequences": 2, "split_candidates": 0},
    )
    config = json.loads((out / "config.json").read_text())
    assert_valid_decilm(config, layers=3)
    assert all(layer.intermediate_size in (0, 256) for layer in report.layers)
    compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
    assert count_checkpoint_params(out) == report.params.total_after
    with torch.no_grad():
        assert torch.isfinite(compact(torch.randint(1, 320, (1, 12))).logits).all()


def keep_with_removed_blocks(space: UnitSpace) -> torch.Tensor:
    """Layer 0 loses its attention whole and half its MLP; layer 1 keeps one KV group (the second) and
    loses its MLP whole; layer 2 keeps one KV group (the first) and its whole MLP."""
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[space.slice(space.group_of(0, UnitKind.ATTN))] = False
    mlp0 = space.group_of(0, UnitKind.MLP)
    dropped = torch.randperm(mlp0.count, generator=torch.Generator().manual_seed(0))[: mlp0.count // 2]
    keep[mlp0.offset + dropped] = False
    keep[space.group_of(1, UnitKind.ATTN).offset] = False
    keep[space.slice(space.group_of(1, UnitKind.MLP))] = False
    keep[space.group_of(2, UnitKind.ATTN).offset + 1] = False
    return keep


def test_exported_model_matches_the_masked_model(wide_llama: Path, tmp_path: Path) -> None:
    loaded = load_model(wide_llama, "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    keep = keep_with_removed_blocks(space)
    assert_expressible(space, keep)
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, :6]
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        expected = loaded.model(ids).logits
        expected_tokens = loaded.model.generate(
            prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
        )
    assert not torch.allclose(expected, loaded.model(ids).logits, atol=1e-3)  # the masks matter

    out = tmp_path / "out"
    config = export_nemotron(wide_llama, out, adapter, space, keep)
    assert json.loads((out / "config.json").read_text()) == config
    assert_valid_decilm(config, layers=3)
    blocks = config["block_configs"]
    assert [b["attention"]["no_op"] for b in blocks] == [True, False, False]
    assert [b["ffn"]["no_op"] for b in blocks] == [False, True, False]
    assert [b["ffn"]["ffn_mult"] for b in blocks] == [6.0, None, 12.0]  # 256 and 512 channels over 64
    assert config["num_attention_heads"] == 2 and config["head_dim"] == 16
    assert (out / "modeling_decilm.py").is_file()

    # a removed block has no tensors at all, not even its norm
    names = set()
    for shard in out.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as handle:
            names |= set(handle.keys())
    assert not any(
        n.startswith(("model.layers.0.self_attn.", "model.layers.0.input_layernorm.")) for n in names
    )
    assert not any(
        n.startswith(("model.layers.1.mlp.", "model.layers.1.post_attention_layernorm.")) for n in names
    )
    assert "model.layers.2.mlp.down_proj.weight" in names

    compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
    assert type(compact).__name__ == "DeciLMForCausalLM"
    assert sum(p.numel() for p in compact.parameters()) == count_checkpoint_params(out)  # nothing extra
    with torch.no_grad():
        logits = compact(ids).logits
        tokens = compact.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()
    assert torch.equal(tokens, expected_tokens)


def test_prune_writes_a_loadable_decilm_checkpoint(
    wide_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    prune(
        model=str(wide_llama),
        data=calibration_file,
        out_dir=out,
        sparsity=0.4,
        method="wanda-sp",
        export_format="nemotron-nas",
        compensate="none",
        seq_len=32,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
    )
    config = json.loads((out / "config.json").read_text())
    assert_valid_decilm(config, layers=3)
    compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
    with torch.no_grad():
        logits = compact(torch.randint(1, 320, (1, 12))).logits
    assert torch.isfinite(logits).all()


def test_refuses_what_the_layout_cannot_hold(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path
) -> None:
    common: dict[str, Any] = dict(
        data=calibration_file, sparsity=0.3, method="random", export_format="nemotron-nas", device="cpu"
    )
    with pytest.raises(UsageError, match="Llama models"):
        prune(model=str(tiny_models["qwen2"]), out_dir=tmp_path / "qwen2", **common)
    with pytest.raises(UsageError, match="narrower than one"):  # the tiny llama's MLP is 96 wide
        prune(model=str(tiny_models["llama"]), out_dir=tmp_path / "llama", **common)


def test_bias_compensation_is_refused_before_any_work() -> None:
    from pydantic import ValidationError

    from pruning.spec import PruneSettings

    with pytest.raises(ValidationError, match="cannot carry bias compensation"):
        PruneSettings(sparsity=0.2, export_format="nemotron-nas", compensate="bias")
    assert PruneSettings(sparsity=0.2, export_format="nemotron-nas", compensate="ls").compensate == "ls"
