"""Exactness: the compact checkpoint computes exactly what the masked model computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruning.adapters import adapter_for
from pruning.export import export_pruned, load_pruned
from pruning.loading import load_model
from pruning.masking import UnitMasks
from pruning.units import UnitSpace, build_unit_space
from tests.tiny import FAMILY_CONFIGS

CPU = torch.device("cpu")


def uniform_keep(space: UnitSpace, kv_keep: int, mlp_drop: int) -> torch.Tensor:
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer in range(space.num_layers):
        attn, mlp = space.group_of(layer, "attn"), space.group_of(layer, "mlp")
        dropped_groups = torch.randperm(attn.count, generator=torch.Generator().manual_seed(layer))
        keep[attn.offset + dropped_groups[kv_keep:]] = False
        keep[mlp.offset + torch.arange(layer, layer + mlp_drop)] = False
    return keep


def global_keep(space: UnitSpace) -> torch.Tensor:
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[space.slice(space.group_of(0, "attn"))] = False  # layer 0 loses all attention
    keep[space.slice(space.group_of(1, "mlp"))] = False  # layer 1 loses all MLP
    keep[space.slice(space.group_of(1, "attn"))] = True
    return keep


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_compact_model_matches_masked_model(tiny_models: dict[str, Path], tmp_path: Path, family: str,
                                            uniform: bool) -> None:
    loaded = load_model(tiny_models[family], "fp32", CPU)
    adapter = adapter_for(loaded.model.config.model_type)
    space = build_unit_space(loaded.model, adapter, None)
    keep = uniform_keep(space, 1, 5) if uniform else global_keep(space)
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        expected = loaded.model(ids).logits
        expected_tokens = loaded.model.generate(ids[:1, :6], max_new_tokens=6, do_sample=False)

    out = tmp_path / "out"
    export_pruned(tiny_models[family], out, adapter, space, keep, uniform)
    if uniform:
        compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert "auto_map" not in json.loads((out / "config.json").read_text())
    else:
        compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
        assert (out / "modeling_fwdprune.py").is_file()
    with torch.no_grad():
        assert torch.allclose(compact(ids).logits, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(compact.generate(ids[:1, :6], max_new_tokens=6, do_sample=False), expected_tokens)
        if not uniform:
            assert torch.allclose(load_pruned(out, dtype=torch.float32)(ids).logits, expected, atol=1e-5)

    # parameter count: everything minus the removed units' weights (and biases / norms of emptied blocks)
    removed = float(space.params[~keep].sum())
    dense = sum(p.numel() for p in loaded.model.parameters())
    compact_params = sum(p.numel() for p in compact.parameters())
    assert dense - compact_params >= removed
    assert dense - compact_params <= removed + 4 * loaded.model.config.hidden_size * space.num_layers
    # shards keep the input's names; tokenizer travels
    written = {p.name for p in out.glob("*.safetensors")}
    assert written == {p.name for p in tiny_models[family].glob("*.safetensors")}
    assert (out / "tokenizer.json").is_file()


def test_uniform_export_refuses_unequal_widths(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_model(tiny_models["llama"], "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    with pytest.raises(ValueError, match="equal widths"):
        export_pruned(tiny_models["llama"], tmp_path / "x", adapter, space, global_keep(space), True)
