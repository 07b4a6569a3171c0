"""Weight changes of the kept parts of linear maps: hooked beside the masked model, or fused into one
matmul while they train; both compute the same pruned model."""

from __future__ import annotations

from pathlib import Path

import torch

from pruning.model.adapters import adapter_for
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from pruning.recovery.deltas import WeightDeltas
from pruning.recovery.local import trainable_window, window_targets
from pruning.recovery.recover import kept_part, target_modules
from tests.tiny import make_tiny_causal_lm


def test_fused_changes_compute_the_hooked_model_and_its_gradients(tmp_path: Path) -> None:
    """A pruned block's changes fused into one matmul a map give the hooked model's logits and the same
    gradients of the changes; the dense model (masks suspended) stays as it was, and leaving the fused
    context puts every map's own forward back."""
    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama", layers=3), "fp32", torch.device("cpu"))
    model, adapter = loaded.model, adapter_for("llama")
    space = build_unit_space(model, adapter, None)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[1::3] = False
    targets = target_modules(model, adapter, space, keep)
    indices = space.kept_indices(keep)
    masks = UnitMasks(space)
    deltas = WeightDeltas(masks)
    window = window_targets(model, adapter, targets)[1]
    params = trainable_window(window, {n: kept_part(adapter, indices, n) for n in targets}, deltas)
    generator = torch.Generator().manual_seed(0)
    for param in params:
        param.data.normal_(0.0, 0.05, generator=generator)
    ids = torch.randint(0, 320, (2, 8), generator=generator)

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        for param in params:
            param.grad = None
        logits = model(ids).logits
        logits.pow(2).mean().backward()
        return logits.detach(), [param.grad.clone() for param in params]  # type: ignore[union-attr]

    with masks.installed(), deltas.installed():
        masks.set(keep.double())
        with torch.no_grad(), masks.suspended():
            dense = model(ids).logits
        hooked, hooked_grads = logits_and_grads()
        with deltas.fused():
            assert all("forward" in vars(module) for module in window.values())
            fused, fused_grads = logits_and_grads()
            with torch.no_grad(), masks.suspended():
                assert torch.equal(model(ids).logits, dense)
        assert not any("forward" in vars(module) for module in window.values())
        assert torch.equal(logits_and_grads()[0], hooked)
    assert torch.allclose(fused, hooked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, dense, atol=1e-3)  # the changes do something
    for ours, theirs in zip(fused_grads, hooked_grads, strict=True):
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
