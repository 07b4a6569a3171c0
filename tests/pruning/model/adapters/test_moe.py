"""Experts as units (Qwen3-MoE, Mixtral): a removed expert's router logit is masked before the top-k, so the
masked model routes as the exported one, with fewer experts; per-replica masks for bonsai's sub-models;
per-layer expert counts through remote code, uniform ones stock; the report's routing frequencies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruning.model.adapters import UnitKind
from pruning.model.experts import masked_routing
from pruning.model.masking import UnitMasks
from pruning.model.units import UnitSpace
from tests.pruning.model.adapters.family_checks import (
    compact_perplexity,
    export_and_compare,
    keep_of,
    load_tiny,
    masked_outputs,
    prune_tiny,
    sample_inputs,
)

MOE_FAMILIES = ["qwen3_moe", "mixtral"]
EXPERTS = {"qwen3_moe": 6, "mixtral": 4}


def experts_keep(
    space: UnitSpace, per_layer: dict[int, list[int]], attention: dict[int, list[int]]
) -> torch.Tensor:
    """Every unit kept but for the experts and KV groups listed per layer, which are the ones kept."""
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer, kept in per_layer.items():
        group = space.group_of(layer, UnitKind.EXPERT)
        keep[space.slice(group)] = False
        keep[group.offset + torch.tensor(kept, dtype=torch.long)] = True
    for layer, kept in attention.items():
        group = space.group_of(layer, UnitKind.ATTN)
        keep[space.slice(group)] = False
        keep[group.offset + torch.tensor(kept, dtype=torch.long)] = True
    return keep


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_experts_are_units(tiny_models: dict[str, Path], family: str) -> None:
    model, _, space = load_tiny(tiny_models[family])
    experts = EXPERTS[family]
    assert [(g.kind, g.count) for g in space.groups] == [(UnitKind.ATTN, 2), (UnitKind.EXPERT, experts)] * 2
    width = space.expert_width
    assert width == (32 if family == "qwen3_moe" else 96)
    assert (
        float(space.group_of(0, UnitKind.EXPERT).params[0]) == 3 * 64 * width + 64
    )  # projections, router row
    assert space.experts_per_token == 2
    assert sum(p.numel() for p in model.model.layers[0].mlp.parameters()) == experts * (3 * 64 * width + 64)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_masked_routing_is_the_routers_own_when_nothing_is_masked(
    tiny_models: dict[str, Path], family: str
) -> None:
    model, _, _ = load_tiny(tiny_models[family])
    router = model.model.layers[0].mlp.gate
    hidden = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    own = router(hidden)
    allowed = torch.ones(10, EXPERTS[family], dtype=torch.bool)
    logits, weights, indices = masked_routing(router, hidden, allowed, own)
    assert torch.equal(logits, own[0]) and torch.equal(indices, own[2])
    assert torch.allclose(weights, own[1], atol=1e-7, rtol=0)
    # experts 0 and 1 removed: never picked, and the weights come from a softmax over the others
    allowed[:, :2] = False
    logits, weights, indices = masked_routing(router, hidden, allowed, own)
    assert bool((indices >= 2).all())
    probs = torch.softmax(own[0][:, 2:], dim=-1)
    top = torch.topk(probs, 2, dim=-1).values
    if family == "mixtral":  # always renormalised
        top = top / top.sum(-1, keepdim=True)
    assert torch.allclose(weights.float(), top, atol=1e-6, rtol=0)
    # a row with no expert left adds nothing
    allowed[:] = False
    assert bool((masked_routing(router, hidden, allowed, own)[1] == 0).all())


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_each_replica_routes_among_its_own_experts(tiny_models: dict[str, Path], family: str) -> None:
    """bonsai's sub-models: replicas of the batch in one forward, each with its expert mask, compute what
    each mask computes alone."""
    model, _, space = load_tiny(tiny_models[family])
    ids, _ = sample_inputs(model.config.vocab_size)
    first = experts_keep(space, {0: [0, 2, 3], 1: [1, 2]}, {})
    second = experts_keep(space, {0: [1, 3]}, {1: [0]})
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        alone = []
        for keep in (first, second):
            masks.set(keep.double())
            alone.append(model(ids).logits)
        masks.set(torch.stack([first, second]).double())
        together = model(ids.repeat(2, 1)).logits
    assert torch.allclose(together[:2], alone[0], atol=1e-5, rtol=0)
    assert torch.allclose(together[2:], alone[1], atol=1e-5, rtol=0)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_per_layer_expert_counts_exported_exactly(
    tiny_models: dict[str, Path], tmp_path: Path, family: str
) -> None:
    """Layer 0 keeps the top-k's two experts and loses its attention; layer 1 keeps one KV group and
    loses its mixture of experts whole."""
    source = tiny_models[family]
    _, _, space = load_tiny(source)
    keep = experts_keep(space, {0: [1, EXPERTS[family] - 1], 1: []}, {0: [], 1: [1]})
    out = tmp_path / "out"
    export_and_compare(source, out, keep, uniform=False)
    config = json.loads((out / "config.json").read_text())
    assert [(la["num_key_value_heads"], la["num_experts"]) for la in config["fwdprune_layers"]] == [
        (0, 2),
        (1, 0),
    ]
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    block = "mlp" if family == "qwen3_moe" else "block_sparse_moe"
    layer0 = sorted(
        {n.split(".experts.")[1].split(".")[0] for n in index if f"layers.0.{block}.experts." in n}
    )
    assert layer0 == ["0", "1"]  # the kept experts 1 and E-1, numbered anew
    assert not any(f"layers.1.{block}." in n for n in index)  # the router and experts of the emptied block


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_uniform_expert_counts_load_stock(tiny_models: dict[str, Path], tmp_path: Path, family: str) -> None:
    source = tiny_models[family]
    _, _, space = load_tiny(source)
    experts = EXPERTS[family]
    keep = experts_keep(space, {0: list(range(1, experts)), 1: list(range(experts - 1))}, {0: [0], 1: [1]})
    out = tmp_path / "out"
    (compact,) = export_and_compare(source, out, keep, uniform=True)
    config = json.loads((out / "config.json").read_text())
    # the count under the name transformers wrote it (Qwen3-MoE's num_experts is an alias)
    assert config["num_local_experts"] == experts - 1 and config["num_key_value_heads"] == 1
    assert compact.model.layers[0].mlp.gate.weight.shape == (experts - 1, 64)


def test_prune_end_to_end_reports_experts(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = prune_tiny(tiny_models["qwen3_moe"], calibration_file, out, sparsity=0.5)
    keep = keep_of(report)
    assert 0 < int((~keep).sum()) < keep.numel()
    kept_counts = [la.num_experts for la in report.layers]
    assert all(c == 0 or 2 <= c <= 6 for c in kept_counts) and sum(kept_counts) < 12
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)
    records = report.experts
    assert [(r.layer, r.index) for r in records] == [(layer, e) for layer in range(2) for e in range(6)]
    for layer in range(2):
        # each token picks two experts: the frequencies of a layer's experts add up to two
        frequencies = [r.routing_frequency for r in records if r.layer == layer]
        assert sum(frequencies) == pytest.approx(2.0)
        assert [r.kept for r in records if r.layer == layer].count(True) == kept_counts[layer]
    expert_units = [u for u in report.units if u.kind == "expert"]
    assert [u.importance for u in expert_units] == [r.importance for r in records]
    dense_report = json.loads((out / "pruning_report.json").read_text())
    assert "num_experts" in dense_report["layers"][0] and len(dense_report["experts"]) == 12


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_wanda_sp_uniform_keeps_stock_counts(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path, family: str
) -> None:
    out = tmp_path / "out"
    report = prune_tiny(tiny_models[family], calibration_file, out, method="wanda-sp", uniform=True)
    counts = {(la.num_key_value_heads, la.num_experts) for la in report.layers}
    assert len(counts) == 1 and next(iter(counts))[1] >= 2
    assert not (out / "modeling_fwdprune.py").exists()
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)


def test_int8_scoring_on_cpu(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    from pruning import load_pruned

    source = tiny_models["mixtral"]
    report = prune_tiny(source, calibration_file, tmp_path / "int8", precision="int8")
    assert report.precision == "int8" and report.device == "cpu"
    tiny = load_tiny(source)
    masked, _ = masked_outputs(tiny, keep_of(report))
    ids, _ = sample_inputs(tiny.model.config.vocab_size)
    with torch.no_grad():
        logits = load_pruned(tmp_path / "int8", dtype=torch.float32)(ids).logits
    assert torch.allclose(logits, masked, atol=1e-4, rtol=0)


def test_dense_layers_among_experts_refused(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoConfig

    from pruning.errors import UnsupportedModelError
    from pruning.model.adapters import adapter_for

    config = AutoConfig.from_pretrained(tiny_models["qwen3_moe"])
    config.mlp_only_layers = [1]
    with pytest.raises(UnsupportedModelError, match="dense MLP layers"):
        adapter_for("qwen3_moe").layer_shapes(config)


def test_stock_config_names_its_expert_count_as_the_hub_does() -> None:
    from pruning.model.adapters import LayerShape, adapter_for

    config = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 8}
    shapes = [LayerShape(2, 1, 32, 5)] * 2
    shrunk = adapter_for("qwen3_moe").shrink_config(config, shapes, uniform=True)
    assert (shrunk["num_experts"], shrunk["num_attention_heads"], shrunk["head_dim"]) == (5, 2, 16)
    assert "num_local_experts" not in shrunk


def test_experts_only(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    report = prune_tiny(
        tiny_models["qwen3_moe"], calibration_file, tmp_path / "o", sparsity=0.3, unit_kinds=["expert"]
    )
    removed = {u.kind for u in report.units if not u.kept}
    assert removed == {"expert"}
    assert all(la.num_key_value_heads == 2 for la in report.layers)


def test_unit_kinds_the_model_lacks_refused(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path
) -> None:
    from pruning.errors import UsageError

    with pytest.raises(UsageError, match="names no kind of unit this model has"):
        prune_tiny(tiny_models["llama"], calibration_file, tmp_path / "o", unit_kinds=["expert"])


def test_ls_refit_of_attention_in_a_mixture_of_experts(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path
) -> None:
    """The refit corrects the attention output projections; the experts (no projection of the units'
    outputs to refit) keep the choice, and the export computes what the report measured."""
    out = tmp_path / "out"
    report = prune_tiny(
        tiny_models["qwen3_moe"], calibration_file, out, sparsity=0.4, compensate="ls", num_samples=48
    )
    assert report.compensation == "ls"
    assert compact_perplexity(out, calibration_file, 48) == pytest.approx(report.perplexity.after, rel=1e-5)
