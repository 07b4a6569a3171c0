"""Compensation: what the report measures (hooks on the masked model) is what is exported; the refit is
its ridge solution; the refit-aware choice of units is structured OBS on each module's dense input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

import pruning.compensation.least_squares as compensation
from pruning import load_pruned, prune
from pruning.compensation import LS_TOKENS_PER_CHANNEL, LeastSquaresRefit, choose_compensation
from pruning.compensation.corrections import OutputCorrections
from pruning.compensation.least_squares import sequential_refits
from pruning.compensation.obs import structured_obs_removals
from pruning.compensation.reconstruction import ridge_reconstruction
from pruning.measure.objectives import make_objective
from pruning.measure.probe import CalibrationProbe, OutputWeights
from pruning.model.adapters.base import UnitKind
from pruning.model.checkpoint import CheckpointReader
from pruning.model.data import load_calibration
from pruning.model.masking import UnitMasks
from tests.pruning.conftest import ProbeFactory
from tests.tiny import TinyModel, make_tiny_causal_lm

SMALL: dict[str, Any] = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_ls_refit_exported_exactly(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path, family: str, uniform: bool
) -> None:
    report = prune(
        model=str(tiny_models[family]),
        data=calibration_file,
        sparsity=0.4,
        out_dir=tmp_path / "o",
        method="wanda-sp" if uniform else "flap",
        uniform=uniform,
        compensate="ls",
        **SMALL,
    )
    assert report.compensation == "ls"
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)
    assert "compensate" in report.stage_s


@pytest.mark.parametrize("compensate", ["ls", "bias"])
def test_a_bf16_checkpoint_exports_exactly_what_was_measured(
    calibration_file: Path, tmp_path: Path, compensate: str
) -> None:
    """The export casts refitted weights and shifted biases to bf16; the masked model is measured with
    the correction as that cast leaves it, so the report is still exactly the compact model's."""
    model = make_tiny_causal_lm(tmp_path / "bf16", "llama", bf16=True)
    report = prune(
        model=str(model),
        data=calibration_file,
        sparsity=0.4,
        out_dir=tmp_path / "o",
        method="flap",
        compensate=compensate,
        **SMALL,
    )
    assert report.compensation == compensate
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)


def test_auto_compensation_needs_enough_tokens_per_channel(llama_fp32: TinyModel) -> None:
    space = llama_fp32.space
    widest = 96  # the tiny model's intermediate size, wider than its 64 attention channels
    enough = LS_TOKENS_PER_CHANNEL * widest
    assert choose_compensation("auto", "none", space, enough) == "ls"
    assert choose_compensation("auto", "none", space, enough - 1) == "none"
    assert choose_compensation("auto", "bias", space, enough - 1) == "bias"
    assert choose_compensation("none", "bias", space, 10 * enough) == "none"


def _down_proj_io(model: torch.nn.Module, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, C] input, [n, out] output) of one layer's down_proj on `ids`, in the model as it is."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    module = model.model.layers[layer].mlp.down_proj  # type: ignore[index,union-attr]
    handle = module.register_forward_hook(
        lambda m, a, o: seen.append((a[0].reshape(-1, a[0].shape[-1]), o.reshape(-1, o.shape[-1])))
    )
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen[0]


def test_sequential_refit_of_a_last_layer_mlp_is_its_ridge_solution(
    llama_fp32: TinyModel, llama_probe: ProbeFactory, llama_ids: torch.Tensor
) -> None:
    model, adapter, space = llama_fp32
    last = space.num_layers - 1
    mlp = space.group_of(last, UnitKind.MLP)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[space.slice(mlp)][::3] = False  # every third MLP unit of the last layer only
    calibration = llama_ids
    masks = UnitMasks(space)
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed():
        probe = llama_probe(masks, calibration)
        sequential_refits(probe, adapter.layers(model), keep, corrections, ridge=0.1)

    # nothing upstream is pruned, so the down_proj's pruned input is its dense input on the kept channels
    x, _ = _down_proj_io(model, last, calibration)  # [n, C]
    kept = keep[space.slice(mlp)][mlp.channel_unit]  # [C]
    x_kept = x.double()[:, kept]
    expected = ridge_reconstruction(
        x_kept.T @ x_kept, x_kept.T @ x.double(), probe.weights.of(mlp), kept, 0.1
    )
    attention = space.group_of(last, UnitKind.ATTN)
    assert set(corrections.refits) == {mlp, attention}  # from the first pruned layer
    refit = corrections.refits[mlp]  # stored for the kept columns only
    assert torch.equal(refit.columns, kept.nonzero().flatten())
    assert (
        refit.delta.shape == (model.config.hidden_size, int(kept.sum()))
        and refit.delta.dtype == torch.float32
    )
    assert torch.allclose(refit.delta.double(), expected[:, kept], rtol=1e-4, atol=1e-6)
    assert torch.all(expected[:, ~kept] == 0)
    # the unpruned attention before it sees no drift: its refit is the identity, up to round-off
    assert corrections.refits[attention].delta.abs().max() < 1e-4


def test_sequential_refits_bring_the_pruned_model_toward_the_dense_one(
    llama_fp32: TinyModel, llama_probe: ProbeFactory, llama_ids: torch.Tensor
) -> None:
    model, adapter, space = llama_fp32
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(1)) > 0.3  # every layer loses units
    calibration = llama_ids
    with torch.no_grad():
        dense = model(calibration).logits
    masks = UnitMasks(space)
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed(), torch.no_grad():
        masks.set(keep.double())
        uncorrected = model(calibration).logits
        probe = llama_probe(masks, calibration)
        sequential_refits(probe, adapter.layers(model), keep, corrections, ridge=0.01)
        masks.set(keep.double())
        corrected = model(calibration).logits
        with masks.suspended():  # corrections stand down with the masks
            assert torch.allclose(model(calibration).logits, dense, atol=1e-5)
    assert len(corrections.refits) == len(space.groups)
    error_before = float((uncorrected - dense).pow(2).mean())
    error_after = float((corrected - dense).pow(2).mean())
    assert error_after < 0.8 * error_before  # random weights hold little redundancy; real models gain more


def test_under_bf16_mixed_the_refit_runs_layers_in_bf16_and_solves_in_fp32(
    tiny_llama: Path, llama_fp32: TinyModel, llama_ids: torch.Tensor
) -> None:
    """bf16-mixed: the fit's layer passes run under bf16 autocast, its moments and solves in fp32, so its
    refits are the fp32 fit's to bf16's precision."""
    model, adapter, space = llama_fp32
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(1)) > 0.3
    refits = {}
    for dtype in (None, torch.bfloat16):
        masks = UnitMasks(space)
        corrections = OutputCorrections(masks)
        objective = make_objective("lm", model, adapter, torch.device("cpu"), masks, dtype)
        probe = CalibrationProbe(
            objective, masks, OutputWeights(CheckpointReader(tiny_llama)), llama_ids, batch_size=3
        )
        seen: list[torch.dtype] = []
        up = adapter.layers(model)[-1].mlp.up_proj
        handle = up.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.dtype))
        with masks.installed(), corrections.installed():
            sequential_refits(probe, adapter.layers(model), keep, corrections, ridge=0.01)
        handle.remove()
        assert set(seen) == {dtype or torch.float32}
        refits[dtype] = corrections.refits
    assert refits[torch.bfloat16].keys() == refits[None].keys()
    difference, size = 0.0, 0.0
    for group, exact in refits[None].items():
        mixed = refits[torch.bfloat16][group]
        assert mixed.delta.dtype == torch.float32 and torch.equal(mixed.columns, exact.columns)
        difference += float((mixed.delta - exact.delta).pow(2).sum())
        size += float(exact.delta.pow(2).sum())
    assert size > 0 and math.sqrt(difference / size) < 0.05


def test_bonsai_ls_refit_exported_exactly(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        sparsity=0.4,
        out_dir=tmp_path / "o",
        method="bonsai",
        uniform=False,
        compensate="ls",
        options=dict(rounds=3, samples_per_round=16, scoring_sequences=4),
        **SMALL,
    )
    assert report.compensation == "ls" and len(report.method_details["rounds"]) == 3
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)


@pytest.mark.parametrize("gram_bytes", [1 << 30, 1], ids=["one-pass", "pass-per-group"])
def test_refit_aware_keep_is_structured_obs_on_each_module_s_dense_input(
    llama_fp32: TinyModel,
    llama_probe: ProbeFactory,
    llama_ids: torch.Tensor,
    monkeypatch: pytest.MonkeyPatch,
    gram_bytes: int,
) -> None:
    monkeypatch.setattr(compensation, "GRAM_BYTES_PER_PASS", gram_bytes)
    model, adapter, space = llama_fp32
    reference = torch.ones(space.size, dtype=torch.bool)
    last_mlp = space.group_of(space.num_layers - 1, UnitKind.MLP)
    first_attn = space.group_of(0, UnitKind.ATTN)
    reference[last_mlp.offset : last_mlp.offset + 3] = False  # 3 MLP units of the last layer
    reference[first_attn.offset] = False  # one KV group of the first
    calibration = llama_ids
    masks = UnitMasks(space)
    refit = LeastSquaresRefit(
        llama_probe(masks, calibration), adapter, OutputCorrections(masks), adapter.layers(model), ridge=0.1
    )
    with masks.installed():
        masks.set((torch.rand(space.size) > 0.5).double())  # a mask left over must not leak into the Grams
        keep = refit.refit_aware_keep(reference)

    assert keep.shape == reference.shape and keep.dtype == torch.bool
    for group in space.groups:  # as many units removed from every group as the reference removes
        assert int((~keep[space.slice(group)]).sum()) == int((~reference[space.slice(group)]).sum())
    inputs: list[torch.Tensor] = []
    handle = last_mlp.module.register_forward_pre_hook(
        lambda m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1]))
    )
    try:
        with torch.no_grad():
            model(calibration)  # the dense model (masks removed with their hooks)
    finally:
        handle.remove()
    x = inputs[0].double()  # [n, C]
    weight: torch.Tensor = last_mlp.module.weight  # type: ignore[assignment]
    expected = structured_obs_removals(x.T @ x, weight.detach(), last_mlp.channel_unit, 3)
    assert sorted((~keep[space.slice(last_mlp)]).nonzero().flatten().tolist()) == sorted(expected.tolist())


def test_one_shot_refit_of_the_first_pruned_module_is_the_sequential_one(
    llama_fp32: TinyModel, llama_probe: ProbeFactory, llama_ids: torch.Tensor
) -> None:
    """Nothing upstream pruned: the first pruned module's input in the pruned model is its dense input,
    so the one-shot refit from the dense Gram equals the sequential refit there; a module that lost no
    units gets no one-shot refit (it has no drift to see)."""
    model, adapter, space = llama_fp32
    last = space.num_layers - 1
    mlp = space.group_of(last, UnitKind.MLP)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[space.slice(mlp)][::3] = False
    masks = UnitMasks(space)
    corrections = OutputCorrections(masks)
    with masks.installed(), corrections.installed():
        probe = llama_probe(masks, llama_ids)
        refit = LeastSquaresRefit(probe, adapter, corrections, adapter.layers(model), ridge=0.1)
        refit.fit(keep)
        sequential = corrections.refits[mlp]
        grams = refit.dense_grams(llama_ids)
        assert grams is not None and set(grams) == set(space.groups)
        assert grams[mlp].shape == (mlp.channel_unit.numel(),) * 2 and grams[mlp].device.type == "cpu"
        refit.fit_one_shot(keep, grams)
    assert set(corrections.refits) == {mlp}
    one_shot = corrections.refits[mlp]
    assert torch.equal(one_shot.columns, sequential.columns)
    assert torch.allclose(one_shot.delta, sequential.delta, rtol=1e-4, atol=1e-6)


def test_shared_grams_are_not_held_past_their_budget(
    llama_fp32: TinyModel, llama_probe: ProbeFactory, llama_ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, adapter, space = llama_fp32
    masks = UnitMasks(space)
    refit = LeastSquaresRefit(llama_probe(masks, llama_ids), adapter, OutputCorrections(masks), [], 0.1)
    monkeypatch.setattr(compensation, "SHARED_GRAM_BYTES", 1024)
    assert refit.dense_grams(llama_ids) is None
