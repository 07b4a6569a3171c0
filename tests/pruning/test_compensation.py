"""Least-squares compensation: what the report measures (hooks on the masked model) is what is exported."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pruning import load_pruned, prune
from pruning.data import load_calibration

SMALL = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_ls_refit_exported_exactly(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path,
                                   family: str, uniform: bool) -> None:
    report = prune(model=str(tiny_models[family]), data=calibration_file, sparsity=0.4, out_dir=tmp_path / "o",
                   method="wanda-sp" if uniform else "flap", uniform=uniform, compensate="ls", **SMALL)
    assert report["compensation"] == "ls"
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report["perplexity"]["after"], rel=1e-5)
    assert "compensate" in report["stage_s"]


def test_auto_compensation_needs_enough_tokens_per_channel(tiny_models: dict[str, Path]) -> None:
    from pruning.adapters import adapter_for
    from pruning.api import LS_TOKENS_PER_CHANNEL, choose_compensation
    from pruning.loading import load_model
    from pruning.units import build_unit_space

    loaded = load_model(tiny_models["llama"], "fp32", torch.device("cpu"))
    space = build_unit_space(loaded.model, adapter_for("llama"), None)
    widest = 96  # the tiny model's intermediate size, wider than its 64 attention channels
    enough = LS_TOKENS_PER_CHANNEL * widest
    assert choose_compensation("auto", "none", space, enough) == "ls"
    assert choose_compensation("auto", "none", space, enough - 1) == "none"
    assert choose_compensation("auto", "bias", space, enough - 1) == "bias"
    assert choose_compensation("none", "bias", space, 10 * enough) == "none"


def _down_proj_io(model, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """([n, C] input, [n, out] output) of one layer's down_proj on `ids`, in the model as it is."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    module = model.model.layers[layer].mlp.down_proj
    handle = module.register_forward_hook(lambda m, a, o: seen.append((a[0].reshape(-1, a[0].shape[-1]),
                                                                        o.reshape(-1, o.shape[-1]))))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen[0]


def test_sequential_refit_of_a_last_layer_mlp_is_its_ridge_solution(llama_fp32, llama_context, llama_ids) -> None:  # type: ignore[no-untyped-def]
    from pruning.compensation import OutputCorrections, sequential_refits
    from pruning.masking import UnitMasks
    from pruning.scoring.reconstruction import ridge_reconstruction

    model, _, space = llama_fp32
    last = space.num_layers - 1
    mlp = space.group_of(last, "mlp")
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[space.slice(mlp)][::3] = False  # every third MLP unit of the last layer only
    calibration = llama_ids
    masks = UnitMasks(space)
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed():
        ctx = llama_context(masks, calibration)
        sequential_refits(ctx, keep, corrections, ridge=0.1)

    # nothing upstream is pruned, so the down_proj's pruned input is its dense input on the kept channels
    x, _ = _down_proj_io(model, last, calibration)  # [n, C]
    kept = keep[space.slice(mlp)][mlp.channel_unit]  # [C]
    x_kept = x.double()[:, kept]
    expected = ridge_reconstruction(x_kept.T @ x_kept, x_kept.T @ x.double(), ctx.output_weight(mlp), kept, 0.1)
    assert set(corrections.refits) == {id(mlp), id(space.group_of(last, "attn"))}  # from the first pruned layer
    refit = corrections.refits[id(mlp)]  # stored for the kept columns only
    assert torch.equal(refit.columns, kept.nonzero().flatten())
    assert refit.delta.shape == (model.config.hidden_size, int(kept.sum())) and refit.delta.dtype == torch.float32
    assert torch.allclose(refit.delta.double(), expected[:, kept], rtol=1e-4, atol=1e-6)
    assert torch.all(expected[:, ~kept] == 0)
    # the unpruned attention before it sees no drift: its refit is the identity, up to round-off
    assert corrections.refits[id(space.group_of(last, "attn"))].delta.abs().max() < 1e-4


def test_sequential_refits_bring_the_pruned_model_toward_the_dense_one(llama_fp32, llama_context, llama_ids) -> None:  # type: ignore[no-untyped-def]
    from pruning.compensation import OutputCorrections, sequential_refits
    from pruning.masking import UnitMasks

    model, _, space = llama_fp32
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(1)) > 0.3  # every layer loses units
    calibration = llama_ids
    with torch.no_grad():
        dense = model(calibration).logits
    masks = UnitMasks(space)
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed(), torch.no_grad():
        masks.set(keep.double())
        uncorrected = model(calibration).logits
        ctx = llama_context(masks, calibration)
        sequential_refits(ctx, keep, corrections, ridge=0.01)
        masks.set(keep.double())
        corrected = model(calibration).logits
        with masks.suspended():  # corrections stand down with the masks
            assert torch.allclose(model(calibration).logits, dense, atol=1e-5)
    assert len(corrections.refits) == len(space.groups)
    error_before = float((uncorrected - dense).pow(2).mean())
    error_after = float((corrected - dense).pow(2).mean())
    assert error_after < 0.8 * error_before  # random weights hold little redundancy; real models gain more


def test_bonsai_ls_refit_exported_exactly(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    report = prune(model=str(tiny_llama), data=calibration_file, sparsity=0.4, out_dir=tmp_path / "o",
                   method="bonsai", uniform=False, compensate="ls",
                   options=dict(rounds=3, samples_per_round=16, scoring_sequences=4), **SMALL)
    assert report["compensation"] == "ls" and len(report["method_details"]["rounds"]) == 3
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report["perplexity"]["after"], rel=1e-5)
