"""The scoring context's selection helpers, on the tiny Llama's real unit space."""

from __future__ import annotations

import pytest
import torch

from pruning.methods.base import ScoringContext


def _context(space, uniform: bool) -> ScoringContext:  # type: ignore[no-untyped-def]
    return ScoringContext(model=None, adapter=None, space=space, masks=None, runner=None,  # type: ignore[arg-type]
                          calibration=torch.zeros(1, 1), checkpoint=None, uniform=uniform,  # type: ignore[arg-type]
                          target_params=0.0, seed=0, batch_size=1,
                          allowed_counts={0: [1], 1: list(range(1, space.group_of(0, "mlp").count))})


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_select_per_kind_takes_the_same_fraction_of_each_kind(llama_fp32, uniform: bool) -> None:  # type: ignore[no-untyped-def]
    _, _, space = llama_fp32
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alive = torch.ones(space.size, dtype=torch.bool)
    budget = 0.5 * float(space.params.sum())
    remove = _context(space, uniform).select_per_kind(score, alive, budget)
    attn, mlp = space.kind == 0, space.kind == 1
    removed_attn = float(space.params[remove & attn].sum()) / float(space.params[attn].sum())
    removed_mlp = float(space.params[remove & mlp].sum()) / float(space.params[mlp].sum())
    assert removed_attn == pytest.approx(0.5)  # 1 of 2 KV groups in each layer, or half of all of them
    assert removed_mlp == pytest.approx(0.5, abs=float(space.params[mlp].max()) / float(space.params[mlp].sum()))
    if not uniform:  # one ranking per kind across layers: every removed unit scores below every kept one
        for kind in (attn, mlp):
            assert float(score[remove & kind].max()) < float(score[~remove & kind].min())


def test_attention_ratio_sets_attention_s_share_and_mlp_makes_up_the_budget(llama_fp32) -> None:  # type: ignore[no-untyped-def]
    _, _, space = llama_fp32
    score = torch.rand(space.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alive = torch.ones(space.size, dtype=torch.bool)
    total = float(space.params.sum())
    attn, mlp = space.kind == 0, space.kind == 1
    ctx = _context(space, uniform=False)
    for ratio, attention in [(0.0, 0.0), (2.0, 0.5)]:  # 25% overall: no attention, then twice the overall fraction
        remove = ctx.select_per_kind(score, alive, 0.25 * total, attention_ratio=ratio)
        assert float(space.params[remove & attn].sum()) / float(space.params[attn].sum()) == pytest.approx(attention)
        assert float(space.params[remove].sum()) == pytest.approx(0.25 * total, abs=float(space.params[mlp].max()))


@pytest.mark.parametrize("gram_bytes", [1 << 30, 1], ids=["one-pass", "pass-per-group"])
def test_refit_aware_keep_is_structured_obs_on_each_module_s_dense_input(
        llama_fp32, llama_context, llama_ids, monkeypatch: pytest.MonkeyPatch, gram_bytes: int) -> None:  # type: ignore[no-untyped-def]
    import pruning.methods.base as base
    from pruning.masking import UnitMasks
    from pruning.scoring.obs import structured_obs_removals

    monkeypatch.setattr(base, "GRAM_BYTES_PER_PASS", gram_bytes)
    model, _, space = llama_fp32
    reference = torch.ones(space.size, dtype=torch.bool)
    last_mlp, first_attn = space.group_of(space.num_layers - 1, "mlp"), space.group_of(0, "attn")
    reference[last_mlp.offset : last_mlp.offset + 3] = False  # 3 MLP units of the last layer
    reference[first_attn.offset] = False  # one KV group of the first
    calibration = llama_ids
    masks = UnitMasks(space)
    with masks.installed():
        masks.set((torch.rand(space.size) > 0.5).double())  # a mask left over must not leak into the Grams
        keep = llama_context(masks, calibration).refit_aware_keep(reference)

    assert keep.shape == reference.shape and keep.dtype == torch.bool
    for group in space.groups:  # as many units removed from every group as the reference removes
        assert int((~keep[space.slice(group)]).sum()) == int((~reference[space.slice(group)]).sum())
    inputs: list[torch.Tensor] = []
    handle = last_mlp.module.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
    try:
        with torch.no_grad():
            model(calibration)  # the dense model (masks removed with their hooks)
    finally:
        handle.remove()
    x = inputs[0].double()  # [n, C]
    expected = structured_obs_removals(x.T @ x, last_mlp.module.weight.detach(), last_mlp.channel_unit, 3)
    assert sorted((~keep[space.slice(last_mlp)]).nonzero().flatten().tolist()) == sorted(expected.tolist())
