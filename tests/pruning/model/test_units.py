from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruning.model.adapters import adapter_for
from pruning.model.adapters.base import LayerShape, UnitKind, channel_groups
from pruning.model.loading import load_model
from pruning.model.units import build_unit_space, default_mlp_block
from tests.tiny import TinyModel

CPU = torch.device("cpu")
# tiny models: hidden 64, head_dim 16, 4 query heads, intermediate 96, 2 layers


@pytest.mark.parametrize(
    ("intermediate", "block"), [(11008, 128), (4096, 128), (96, 2), (64, 2), (63, 1), (8, 1)]
)
def test_default_mlp_block(intermediate: int, block: int) -> None:
    assert default_mlp_block(intermediate) == block


def test_channel_groups_last_block_may_be_short() -> None:
    assert channel_groups(7, 3).tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_unit_space_of_tiny_gqa_llama(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    assert space.mlp_block == 2 and space.head_dim == 16 and space.group_size == [2, 2]
    assert space.size == 2 * (2 + 48)
    assert [(g.layer, g.kind, g.count, g.offset) for g in space.groups] == [
        (0, UnitKind.ATTN, 2, 0),
        (0, UnitKind.MLP, 48, 2),
        (1, UnitKind.ATTN, 2, 50),
        (1, UnitKind.MLP, 48, 52),
    ]
    assert [g.name for g in space.groups] == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.down_proj",
    ]
    attn = space.group_of(0, UnitKind.ATTN)
    assert attn.module is model.model.layers[0].self_attn.o_proj
    assert space.group_of(1, UnitKind.MLP).module is model.model.layers[1].mlp.down_proj
    # a KV group owns 2 query heads x 16 dims of o_proj input
    assert attn.channel_unit.tolist() == [0] * 32 + [1] * 32
    # q rows + o columns of 2 heads, one k and one v head: (2·2 + 2)·16·64
    assert space.params[:2].tolist() == [6144.0, 6144.0]
    assert space.params[2:50].eq(2 * 3 * 64).all()  # 2 channels x (gate row, up row, down column)
    assert space.kind.tolist() == ([0] * 2 + [1] * 48) * 2
    assert space.layer.tolist() == [0] * 50 + [1] * 50
    # the prunable parameters are exactly the 7 projection weights of every layer
    projections = sum(p.numel() for n, p in model.named_parameters() if "proj" in n)
    assert float(space.params.sum()) == projections


def test_unit_space_of_mha_and_custom_block(tiny_models: dict[str, Path]) -> None:
    model = load_model(tiny_models["llama-mha"], "fp32", CPU).model
    space = build_unit_space(model, adapter_for("llama"), 40)  # 96 = 40 + 40 + 16
    assert space.group_size == [1, 1]
    attn, mlp = space.group_of(0, UnitKind.ATTN), space.group_of(0, UnitKind.MLP)
    assert attn.count == 4 and space.params[attn.offset].item() == (2 + 2) * 16 * 64
    assert mlp.count == 3
    assert space.params[space.slice(mlp)].tolist() == [40 * 192.0, 40 * 192.0, 16 * 192.0]


def test_kept_shapes_and_indices(llama_fp32: TinyModel) -> None:
    _, _, space = llama_fp32
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[0] = False  # layer 0 loses KV group 0
    keep[2 + 1] = False  # and MLP unit 1 (channels 2, 3)
    keep[2 + 47] = False  # and the last (channels 94, 95)
    keep[50:52] = False  # layer 1 loses all attention
    shapes = space.kept_shapes(keep)
    assert shapes == [LayerShape(2, 1, 92), LayerShape(0, 0, 96)]
    kept = space.kept_indices(keep)
    assert kept[(0, "kv")].tolist() == list(range(16, 32))
    assert kept[(0, "q")].tolist() == list(range(32, 64))
    assert kept[(0, "mlp")].tolist() == [0, 1] + list(range(4, 94))
    assert kept[(1, "kv")].numel() == 0 and kept[(1, "q")].numel() == 0
    assert kept[(1, "mlp")].tolist() == list(range(96))


def test_unit_space_reads_per_layer_widths_of_a_pruned_config(llama_fp32: TinyModel) -> None:
    model, adapter, _ = llama_fp32

    class Config:
        hidden_size, num_attention_heads, num_hidden_layers, head_dim = 64, 4, 2, 16
        fwdprune_layers = [
            {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 10},
            {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 0},
        ]

    assert adapter.layer_shapes(Config()) == [LayerShape(2, 1, 10), LayerShape(4, 2, 0)]
    assert adapter.unit_params(Config(), LayerShape(2, 1, 10)) == ((2 * 2 + 2) * 16 * 64, 3 * 64)
