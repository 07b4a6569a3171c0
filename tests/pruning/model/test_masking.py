from __future__ import annotations

import pytest
import torch
from torch.utils.hooks import RemovableHandle

from pruning.model.adapters.base import UnitKind
from pruning.model.masking import ChannelEnergy, UnitMasks
from pruning.model.units import UnitSpace
from tests.tiny import TinyModel

IDS = torch.randint(0, 320, (3, 16), generator=torch.Generator().manual_seed(0))


def no_hooks_left(space: UnitSpace) -> bool:
    return all(not g.module._forward_pre_hooks and not g.module._forward_hooks for g in space.groups)


def test_replicated_masks_equal_separate_forwards(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    replicas = 4
    keeps = (torch.rand(replicas, space.size, generator=torch.Generator().manual_seed(1)) > 0.3).double()
    keeps[2] = 1.0  # one replica is the dense model
    keeps[3, :2] = 0.0  # one loses all attention in layer 0
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keeps)
        batched = model(IDS.repeat(replicas, 1)).logits.view(replicas, 3, 16, -1)
        separate = []
        for r in range(replicas):
            masks.set(keeps[r])
            separate.append(model(IDS).logits)
    assert no_hooks_left(space)
    with torch.no_grad():
        dense = model(IDS).logits
    for r in range(replicas):
        assert torch.allclose(batched[r], separate[r], atol=1e-5, rtol=0)
    assert torch.allclose(batched[2], dense, atol=1e-5, rtol=0)
    # and the masks really differ: replicas are not all the dense model
    assert not torch.allclose(batched[0], dense, atol=1e-3)


def test_hooks_removed_after_the_context_even_on_error(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    with torch.no_grad():
        dense = model(IDS).logits
        masks = UnitMasks(space)
        with masks.installed():
            assert all(len(g.module._forward_pre_hooks) == 1 for g in space.groups)
            masks.set(torch.zeros(space.size))
        assert no_hooks_left(space)
        with pytest.raises(RuntimeError, match="boom"), masks.installed():
            masks.set(torch.zeros(space.size))
            raise RuntimeError("boom")
        assert no_hooks_left(space)
        # the model is untouched afterwards
        assert torch.equal(model(IDS).logits, dense)


def test_all_ones_masks_leave_logits_unchanged(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    masks = UnitMasks(space)
    with torch.no_grad():
        dense = model(IDS).logits
        with masks.installed():
            masks.set(torch.ones(space.size))
            assert torch.equal(model(IDS).logits, dense)
            masks.set(torch.ones(2, space.size))
            assert torch.equal(model(IDS.repeat(2, 1)).logits, dense.repeat(2, 1, 1))


def capture_inputs(module: torch.nn.Module, store: list[torch.Tensor]) -> RemovableHandle:
    return module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))


def test_masking_a_kv_group_zeroes_exactly_its_o_proj_channels(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    attn = space.group_of(0, UnitKind.ATTN)  # 2 KV groups, each 2 query heads x 16 dims = 32 channels
    keep = torch.ones(space.size)
    keep[attn.offset + 1] = 0
    dense_in: list[torch.Tensor] = []
    masked_in: list[torch.Tensor] = []
    masks = UnitMasks(space)
    with torch.no_grad():
        handle = capture_inputs(attn.module, dense_in)
        model(IDS)
        handle.remove()
        with masks.installed():
            masks.set(keep)
            handle = capture_inputs(attn.module, masked_in)  # registered after the mask: sees its output
            model(IDS)
            handle.remove()
    dense, masked = dense_in[0], masked_in[0]
    assert masked.shape == (3, 16, 64)
    assert bool((masked[..., 32:] == 0).all())
    assert torch.equal(masked[..., :32], dense[..., :32])  # the first layer's other channels are untouched
    assert bool((dense[..., 32:] != 0).any())


def test_masking_an_mlp_unit_zeroes_its_down_proj_block(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    mlp = space.group_of(1, UnitKind.MLP)  # blocks of 2 channels
    keep = torch.ones(space.size)
    keep[mlp.offset + 5] = 0.0
    keep[mlp.offset + 6] = 0.5  # masks are scales: half of channels 12, 13
    seen: list[torch.Tensor] = []
    dense: list[torch.Tensor] = []
    masks = UnitMasks(space)
    with torch.no_grad():
        handle = capture_inputs(mlp.module, dense)
        model(IDS)
        handle.remove()
        with masks.installed():
            masks.set(keep)
            handle = capture_inputs(mlp.module, seen)
            model(IDS)
            handle.remove()
    assert bool((seen[0][..., 10:12] == 0).all())
    assert torch.allclose(seen[0][..., 12:14], 0.5 * dense[0][..., 12:14], atol=0, rtol=1e-6)
    others = [c for c in range(96) if c not in (10, 11, 12, 13)]
    assert torch.equal(seen[0][..., others], dense[0][..., others])


def test_channel_energy_sees_masked_or_unmasked_inputs(llama_fp32: TinyModel) -> None:
    model, _, space = llama_fp32
    attn = space.group_of(0, UnitKind.ATTN)
    keep = torch.ones(space.size)
    keep[attn.offset + 1] = 0
    masks = UnitMasks(space)
    after, before = ChannelEnergy(space), ChannelEnergy(space, before_masks=True)
    ids = IDS[:2, :8]
    with torch.no_grad(), masks.installed(), after.installed(), before.installed():
        masks.set(keep)
        model(ids)
    assert after.tokens == 16 and before.tokens == 16
    norms = after.channel_norms(attn)
    assert norms.shape == (64,) and norms.dtype == torch.float64
    assert bool((norms[32:] == 0).all()) and bool((norms[:32] > 0).all())
    assert bool((before.channel_norms(attn)[32:] > 0).all())
    assert torch.allclose(before.channel_norms(attn)[:32], norms[:32])
    mean, var = before.channel_moments(attn)
    assert mean.shape == (64,) and bool((var >= 0).all())
    assert no_hooks_left(space)
