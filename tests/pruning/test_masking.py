from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruning.adapters import adapter_for
from pruning.loading import load_model
from pruning.masking import ChannelEnergy, UnitMasks
from pruning.units import build_unit_space


@pytest.fixture(scope="module")
def llama(tiny_models: dict[str, Path]):  # type: ignore[no-untyped-def]
    loaded = load_model(tiny_models["llama"], "fp32", torch.device("cpu"))
    return loaded.model, build_unit_space(loaded.model, adapter_for("llama"), None)


def test_replicated_masks_equal_separate_forwards(llama) -> None:  # type: ignore[no-untyped-def]
    model, space = llama
    ids = torch.randint(0, 320, (3, 16), generator=torch.Generator().manual_seed(0))
    keeps = (torch.rand(4, space.size, generator=torch.Generator().manual_seed(1)) > 0.3).double()
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keeps)
        batched = model(ids.repeat(4, 1)).logits.view(4, 3, 16, -1)
        for r in range(4):
            masks.set(keeps[r])
            assert torch.allclose(batched[r], model(ids).logits, atol=1e-5)


def test_hooks_removed_even_on_error_and_ones_change_nothing(llama) -> None:  # type: ignore[no-untyped-def]
    model, space = llama
    ids = torch.randint(0, 320, (1, 8))
    with torch.no_grad():
        dense = model(ids).logits
        masks = UnitMasks(space)
        with pytest.raises(RuntimeError), masks.installed():
            masks.set(torch.zeros(space.size))
            raise RuntimeError("boom")
        assert all(not g.module._forward_pre_hooks for g in space.groups)
        with masks.installed():
            masks.set(torch.ones(space.size))
            assert torch.equal(model(ids).logits, dense)


def test_masking_a_kv_group_zeroes_exactly_its_channels(llama) -> None:  # type: ignore[no-untyped-def]
    model, space = llama
    attn = space.group_of(0, "attn")  # 2 KV groups of 2 query heads of 16 dims: 32 channels each
    keep = torch.ones(space.size)
    keep[attn.offset + 1] = 0
    masks, energy = UnitMasks(space), ChannelEnergy(space)
    with torch.no_grad(), masks.installed(), energy.installed():
        masks.set(keep)
        model(torch.randint(0, 320, (2, 8)))
    norms = energy.channel_norms(attn)
    assert norms.shape == (64,)
    assert bool((norms[32:] == 0).all()) and bool((norms[:32] > 0).all())
    assert energy.tokens == 16
