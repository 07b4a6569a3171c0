"""Recovery: adapters merged into the export exactly, rolled back when they do not help, reported and
progressed like every stage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from pruning import load_pruned, prune
from pruning.compensation.corrections import OutputCorrections, Refit
from pruning.export.hf import export_pruned
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.data import load_calibration
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from pruning.recovery.deltas import WeightDeltas
from pruning.recovery.low_rank import LowRankAdapters
from pruning.recovery.objective import DistillationLoss
from pruning.recovery.recover import judge_split, merge, target_modules
from pruning.recovery.training import learning_rate
from tests.pruning.recovery.checks import assert_rolled_back
from tests.tiny import make_tiny_causal_lm

CPU = torch.device("cpu")
SMALL: dict[str, Any] = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")
BONSAI = dict(rounds=2, samples_per_round=16, scoring_sequences=2)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "phi3", "qwen3_moe"])
def test_merged_adapters_export_exactly_what_the_masked_model_computes(tmp_path: Path, family: str) -> None:
    """Random adapters on a bf16 checkpoint with an emptied attention block, an emptied MLP (or experts)
    block and units removed elsewhere: the compact model's logits equal the masked, adapted model's."""
    layers = 2 if family == "gemma3" else 3  # its tiny config states two layers' attention types
    checkpoint = make_tiny_causal_lm(tmp_path / "bf16", family, layers=layers, bf16=True)
    loaded = load_model(checkpoint, "fp32", CPU)
    adapter = adapter_for(loaded.model.config.model_type)
    space = build_unit_space(loaded.model, adapter, 16)
    keep = torch.ones(space.size, dtype=torch.bool)
    for group in space.groups:
        if (group.layer, group.kind == UnitKind.ATTN) in ((0, True), (1, False)):
            keep[space.slice(group)] = False  # layer 0 loses its attention whole, layer 1 its MLP
        elif group.layer == 2 and group.count > 2:
            keep[group.offset + 1] = False  # and layer 2 a unit of each kind that has a few
    masks = UnitMasks(space)
    targets = target_modules(loaded.model, adapter, space, keep)
    assert targets and not any(".layers.0.self_attn." in name for name in targets)
    adapters = LowRankAdapters(targets, masks, rank=4, alpha=8.0)
    with torch.no_grad():  # B starts at zero: give every adapter something to say
        generator = torch.Generator().manual_seed(0)
        for b in adapters.b.values():
            b.copy_(0.05 * torch.randn(b.shape, generator=generator))
    deltas = WeightDeltas(masks)
    reader = CheckpointReader(checkpoint)

    def stored(name: str) -> str:  # the checkpoint's own name of a parameter
        found = reader.find(name)
        assert found is not None, name
        return found

    merge(
        adapters, deltas, adapter, space.kept_indices(keep), lambda name: reader.get(stored(f"{name}.weight"))
    )
    tensors: dict[str, torch.Tensor] = {}
    deltas.apply_to(tensors, lambda name: (stored(name), reader.get(stored(name))))
    export_pruned(checkpoint, tmp_path / "out", adapter, space, keep, uniform=False, replacements=tensors)

    ids = torch.randint(0, 320, (3, 12), generator=torch.Generator().manual_seed(1))
    with masks.installed(), OutputCorrections(masks).installed(), deltas.installed(), torch.no_grad():
        masks.set(keep.double())
        masked = loaded.model(ids).logits
    compact = load_pruned(tmp_path / "out", dtype=torch.float32)
    with torch.no_grad():
        exported = compact(ids).logits
    torch.testing.assert_close(exported, masked, rtol=1e-5, atol=1e-5)
    with masks.installed(), torch.no_grad():  # the adapters changed what the model computes
        masks.set(keep.double())
        plain = loaded.model(ids).logits
    assert (plain - masked).abs().max() > 1e-3


def test_adapters_start_as_the_pruned_model_and_stand_down_for_the_dense_teacher(tmp_path: Path) -> None:
    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama"), "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    masks = UnitMasks(space)
    keep = torch.ones(space.size, dtype=torch.bool)
    adapters = LowRankAdapters(target_modules(loaded.model, adapter, space, keep), masks, rank=2, alpha=4.0)
    ids = torch.randint(0, 320, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = loaded.model(ids).logits
        with adapters.installed():
            assert torch.equal(loaded.model(ids).logits, plain)  # B = 0
            for b in adapters.b.values():
                b.fill_(0.1)
            assert not torch.equal(loaded.model(ids).logits, plain)
            with masks.suspended():
                assert torch.equal(loaded.model(ids).logits, plain)


def test_a_recovery_that_helps_is_kept_and_exported_exactly(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    """With the next-token loss weighted in, the adapters lower the held-out loss on this repetitive
    text: they are kept, and the compact checkpoint computes the reported perplexity."""
    events: list[Any] = []
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        recover="distill",
        recover_tokens=32 * 96,
        recover_lm_weight=1.0,
        recover_lr=1e-2,
        on_event=events.append,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and not recovery.rolled_back
    assert recovery.judge_loss_after < recovery.judge_loss_before
    assert (recovery.method, recovery.steps, recovery.tokens) == ("distill", 3, 3 * 32 * 32)
    assert recovery.last_loss < recovery.first_loss
    assert report.stage_s["recover"] > 0 and "recover" in report.peak_host_rss_bytes
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert report.perplexity is not None
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)
    steps = [e for e in events if e["type"] == "progress" and e["stage"] == "recover" and "step" in e]
    assert [e["step"] for e in steps][-1] == 3 and all(e["steps"] == 3 for e in steps)
    stages = [e["stage"] for e in events if e["type"] == "stage"]
    assert stages.index("scoring") < stages.index("recover") < stages.index("evaluate_pruned")


@pytest.mark.parametrize("method", ["distill", "zo"])
def test_a_recovery_that_hurts_is_rolled_back(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, method: str
) -> None:
    """A learning rate far too high makes the held-out loss worse: the checkpoint is exactly the one the
    job writes without recovery, and the report says so."""
    common: dict[str, Any] = dict(
        model=str(tiny_llama), data=calibration_file, sparsity=0.4, options=BONSAI, **SMALL
    )
    plain = prune(out_dir=tmp_path / "plain", **common)
    events: list[Any] = []
    report = prune(
        out_dir=tmp_path / "hurt",
        recover=method,
        recover_tokens=32 * 64,
        recover_lr=1.0 if method == "zo" else 0.5,
        on_event=events.append,
        **common,
    )
    assert_rolled_back(report, plain, tmp_path / "hurt", tmp_path / "plain", events)
    assert report.recovery.judge_loss_after >= report.recovery.judge_loss_before


def test_no_recovery_leaves_the_report_as_it_was(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        **SMALL,
    )
    assert report.recovery is None and "recovery" not in json.loads(report.to_json())
    assert "recover" not in report.stage_s


def test_the_judge_is_the_tail_of_the_text() -> None:
    sequences = torch.arange(40).view(20, 2)
    train, judge = judge_split(sequences)
    assert torch.equal(judge, sequences[-2:]) and torch.equal(train, sequences[:-2])
    with pytest.raises(ValueError, match="two sequences"):
        judge_split(sequences[:1])


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    rates = [learning_rate(step, 20, 1.0) for step in range(20)]
    assert rates[:2] == [0.5, 1.0]  # two warm-up steps
    assert rates[2] == pytest.approx(1.0) and rates[-1] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 17 / 18))
    )
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))


def test_recovery_trains_through_the_least_squares_refit(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    """The refit's corrections are fitted under inference mode; the recovery's backward runs through
    them all the same, and the compact checkpoint computes the reported perplexity."""
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        method="wanda-sp",
        compensate="ls",
        recover="distill",
        recover_tokens=32 * 64,
        recover_lm_weight=1.0,
        recover_lr=1e-2,
        **SMALL,
    )
    assert report.compensation == "ls" and report.recovery is not None
    compact = load_pruned(tmp_path / "o", dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(tmp_path / "o"), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)


def test_bf16_mixed_trains_in_bf16_with_fp32_adapters_and_loss(tmp_path: Path) -> None:
    """Under bf16-mixed the linear maps compute in bf16 (autocast) while the adapters and their gradients
    stay fp32, and the loss is the fp32 one to bf16's precision."""
    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama"), "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    masks = UnitMasks(space)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[: space.size // 3] = False
    masks.set(keep.double())
    targets = target_modules(loaded.model, adapter, space, keep)
    adapters = LowRankAdapters(targets, masks, rank=2, alpha=4.0)
    for b in adapters.b.values():
        torch.nn.init.normal_(b, std=0.05, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    dtypes: list[torch.dtype] = []
    probe = next(iter(targets.values())).register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    with adapters.installed():
        fp32 = DistillationLoss(loaded.model, adapter, masks, CPU).value(ids)
        assert dtypes and set(dtypes) == {torch.float32}
        dtypes.clear()
        mixed = DistillationLoss(loaded.model, adapter, masks, CPU, autocast=torch.bfloat16)
        value = mixed.backward(ids)
    probe.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert fp32 > 0 and value == pytest.approx(fp32, rel=0.05)
    grads = [p.grad for p in adapters.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def test_the_loss_and_its_gradient_do_not_depend_on_the_logits_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pruning.recovery.objective as objective

    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama"), "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    masks = UnitMasks(space)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[::4] = False
    masks.set(keep.double())
    adapters = LowRankAdapters(target_modules(loaded.model, adapter, space, keep), masks, rank=2, alpha=4.0)
    for b in adapters.b.values():
        torch.nn.init.normal_(b, std=0.05, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 320, (3, 16), generator=torch.Generator().manual_seed(0))
    loss = DistillationLoss(loaded.model, adapter, masks, CPU, lm_weight=0.5)
    figures = []
    for chunk_bytes in (1, 1 << 30):  # a row per chunk; every row in one
        monkeypatch.setattr(objective, "LOGITS_CHUNK_BYTES", chunk_bytes)
        assert len(loss.chunks(ids)) == (3 if chunk_bytes == 1 else 1)
        adapters.zero_grad()
        with adapters.installed():
            value = loss.backward(ids)
        figures.append((value, [p.grad.clone() for p in adapters.parameters() if p.grad is not None]))
    (one, grads_one), (all_rows, grads_all) = figures
    assert one == pytest.approx(all_rows, rel=1e-6) and one > 0
    assert len(grads_one) == len(grads_all) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads_one, grads_all, strict=True))


def test_checkpointed_blocks_give_the_same_loss_and_gradient_and_keep_less_for_the_backward(
    tmp_path: Path,
) -> None:
    """The student's blocks recomputed in the backward pass (masks, a refit and adapters hooked in):
    the loss and every adapter's gradient as without checkpointing, a fraction of the activations kept
    for the backward pass, and the blocks' forward as it was afterwards."""
    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama", layers=4), "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    masks = UnitMasks(space)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[1::3] = False
    corrections = OutputCorrections(masks)
    group = space.groups[-1]  # a refit of one output projection, read through its kept columns
    weight: torch.Tensor = group.module.weight  # type: ignore[assignment]
    out_features, channels = weight.shape
    change = 0.01 * torch.randn(out_features, channels, generator=torch.Generator().manual_seed(2))
    kept_channels = group.channel_unit % 2 == 0
    assert 0 < int(kept_channels.sum()) < channels
    corrections.refits[group] = Refit.of(change, kept_channels)
    adapters = LowRankAdapters(target_modules(loaded.model, adapter, space, keep), masks, rank=2, alpha=4.0)
    for b in adapters.b.values():
        torch.nn.init.normal_(b, std=0.05, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    layers = adapter.layers(loaded.model)
    marked = layers[1].forward  # an instance's own forward (as accelerate's device hooks set) is kept
    layers[1].forward = marked
    figures = []
    for checkpointed in (False, True):
        saved: list[int] = []
        adapters.zero_grad()
        loss = DistillationLoss(loaded.model, adapter, masks, CPU, checkpointed=checkpointed)
        with masks.installed(), corrections.installed(), adapters.installed():
            masks.set(keep.double())
            with torch.autograd.graph.saved_tensors_hooks(_counted_into(saved), lambda tensor: tensor):
                value = loss.backward(ids)
        grads = [p.grad.clone() for p in adapters.parameters() if p.grad is not None]
        figures.append((value, grads, sum(saved)))
    (plain, plain_grads, plain_saved), (value, grads, kept) = figures
    assert value == pytest.approx(plain, rel=1e-6) and value > 0
    assert len(grads) == len(plain_grads) == 2 * len(adapters.a)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))
    assert kept * 3 < plain_saved  # the blocks' inputs, not their internals
    assert "forward" not in vars(layers[0]) and vars(layers[1])["forward"] is marked


def _counted_into(sizes: list[int]) -> Any:
    """A saved-tensor pack hook that notes each tensor's element count in `sizes` and keeps it as is."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    return pack
