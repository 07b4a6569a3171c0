"""Local reconstruction: each block fitted to the dense model's output from the pruned model's input, the
fits merged into the export exactly, kept only when they help, progressed and planned like every stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from pruning import load_pruned, prune
from pruning.model.adapters import adapter_for
from pruning.model.data import load_calibration
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from pruning.recovery.deltas import WeightDeltas
from pruning.recovery.local import (
    channel_weights,
    trainable_window,
    weight_scales,
    window_error,
    window_targets,
)
from pruning.recovery.recover import kept_part, target_modules
from tests.pruning.conftest import FAMILIES
from tests.pruning.recovery.checks import assert_rolled_back
from tests.tiny import make_tiny_causal_lm, make_tiny_encoder, write_calibration_jsonl

CPU = torch.device("cpu")
SMALL: dict[str, Any] = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")
BONSAI = dict(rounds=2, samples_per_round=16, scoring_sequences=2)
# enough sequences of the calibration file to train each window on and to judge it by
# (local's learning rate is a fraction of each map's weight RMS, 0.05 to 0.07 in the tiny models)
LOCAL: dict[str, Any] = dict(recover="local", recover_tokens=8 * 32 * 32, recover_lr=0.02)


def _evaluation_perplexity(out_dir: Path, calibration_file: Path) -> float:
    """The compact checkpoint's perplexity on the job's evaluation sequences, under stock transformers
    (or fwdprune's own class for per-layer widths)."""
    compact = load_pruned(out_dir, dtype=torch.float32)
    data = load_calibration(AutoTokenizer.from_pretrained(out_dir), calibration_file, 32, 8, 4)
    with torch.no_grad():
        loss = compact(data.evaluation, labels=data.evaluation).loss
    return math.exp(float(loss))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama-mha"])
def test_local_fits_are_exported_exactly_what_the_masked_model_computes(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path, family: str
) -> None:
    """On every family the engine prunes, with the least-squares refit beneath: the windows' fits are kept
    and the compact checkpoint computes the perplexity the job reports after them."""
    report = prune(
        model=str(tiny_models[family]),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        method="wanda-sp",
        compensate="ls",
        **LOCAL,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and recovery.method == "local"
    assert recovery.windows > 0 and 0 < recovery.windows_kept <= recovery.windows
    assert recovery.last_loss < recovery.first_loss  # the held-out window error fell
    assert report.perplexity is not None
    assert _evaluation_perplexity(tmp_path / "o", calibration_file) == pytest.approx(
        report.perplexity.after, rel=1e-5
    )


def test_local_recovery_lowers_held_out_loss_and_reports_its_stage(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    events: list[Any] = []
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        on_event=events.append,
        **LOCAL,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and not recovery.rolled_back
    assert recovery.judge_loss_after < recovery.judge_loss_before
    assert report.perplexity is not None and recovery.quality_before["perplexity"] > report.perplexity.after
    # 8,192 tokens: 256 sequences of 32, 16 of them judge the fits and 240 train them in steps of 32
    # sequences (1,024 tokens), 8 steps a window: one pass over the 8 batches (the last of 16 sequences)
    assert (recovery.train_sequences, recovery.judge_sequences) == (240, 16)
    assert recovery.steps == 8 * recovery.windows and recovery.tokens == 240 * 32 * recovery.windows
    assert recovery.rank == 0 and recovery.lr == 0.02
    assert report.stage_s["recover"] > 0 and "recover" in report.peak_host_rss_bytes
    steps = [e["step"] for e in events if e["type"] == "progress" and e["stage"] == "recover" and "step" in e]
    assert steps == sorted(steps) and steps[-1] == recovery.steps
    assert all(e["steps"] == recovery.steps for e in events if e.get("stage") == "recover" and "steps" in e)
    planned = next(e for e in events if e["type"] == "plan")
    assert planned["stage_s"]["recover"] > 0


def test_a_local_fit_that_hurts_is_rolled_back(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    """A learning rate far too high makes every window's held-out error worse: no fit is kept, and the
    checkpoint is exactly the one the job writes without recovery."""
    common: dict[str, Any] = dict(
        model=str(tiny_llama), data=calibration_file, sparsity=0.4, options=BONSAI, **SMALL
    )
    plain = prune(out_dir=tmp_path / "plain", **common)
    events: list[Any] = []
    report = prune(
        out_dir=tmp_path / "hurt", **{**LOCAL, "recover_lr": 1.0}, on_event=events.append, **common
    )
    assert_rolled_back(report, plain, tmp_path / "hurt", tmp_path / "plain", events)
    assert report.recovery.windows_kept == 0 and report.recovery.windows > 0


def test_local_then_distill_merges_both_into_the_export(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        **{**LOCAL, "recover": "local+distill"},
        recover_lm_weight=1.0,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and recovery.method == "local+distill"
    assert [part.method for part in recovery.parts] == ["local", "distill"]
    local, distill = recovery.parts
    assert not local.rolled_back and recovery.judge_loss_before == local.judge_loss_before
    # the distillation is judged from where the local fits left the model
    assert distill.judge_loss_before == pytest.approx(local.judge_loss_after, rel=1e-9)
    assert recovery.steps == local.steps + distill.steps and recovery.tokens == local.tokens + distill.tokens
    final = distill.judge_loss_after if not distill.rolled_back else local.judge_loss_after
    assert recovery.judge_loss_after == final < recovery.judge_loss_before
    assert report.perplexity is not None
    assert _evaluation_perplexity(tmp_path / "o", calibration_file) == pytest.approx(
        report.perplexity.after, rel=1e-5
    )


def test_each_size_of_a_job_is_recovered_on_its_own(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    summary = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=[0.2, 0.4],
        options=BONSAI,
        **LOCAL,
        **SMALL,
    )
    for entry in summary.sizes:
        out_dir = tmp_path / "o" / entry.dir
        from pruning.report import PruneReport

        report = PruneReport.read(out_dir / "pruning_report.json")
        assert report.recovery is not None and report.recovery.windows_kept > 0
        assert report.perplexity is not None
        assert _evaluation_perplexity(out_dir, calibration_file) == pytest.approx(
            report.perplexity.after, rel=1e-5
        )


def test_windows_group_the_maps_by_block_and_start_as_the_pruned_model(tmp_path: Path) -> None:
    loaded = load_model(make_tiny_causal_lm(tmp_path / "m", "llama", layers=3), "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[1::3] = False
    targets = target_modules(loaded.model, adapter, space, keep)
    windows = window_targets(loaded.model, adapter, targets)
    assert [sorted(n.split(".")[-1] for n in w) for w in windows] == [
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    ] * 3
    assert all(f".layers.{index}." in name for index, w in enumerate(windows) for name in w)
    masks = UnitMasks(space)
    deltas = WeightDeltas(masks)
    indices = space.kept_indices(keep)
    params = trainable_window(windows[1], {n: kept_part(adapter, indices, n) for n in targets}, deltas)
    o_proj = deltas.changes["model.layers.1.self_attn.o_proj"][1]
    assert o_proj.rows is None and o_proj.columns is not None
    assert params[3].shape == (64, o_proj.columns.numel())  # [out, kept input channels]
    ids = torch.randint(0, 320, (2, 8), generator=torch.Generator().manual_seed(0))
    with masks.installed(), torch.no_grad():
        masks.set(keep.double())
        plain = loaded.model(ids).logits
        with deltas.installed():
            assert torch.equal(loaded.model(ids).logits, plain)  # zero changes
            params[3].fill_(0.1)
            assert not torch.equal(loaded.model(ids).logits, plain)


def test_window_error_weighs_each_channel_by_its_target_energy() -> None:
    target = torch.tensor([[[10.0, 0.1], [-10.0, 0.1]]])  # [1, 2, 2]: a loud channel and a quiet one
    weights = channel_weights([target])
    assert torch.allclose(weights, torch.tensor([1 / 200.0, 1 / 0.02]))
    assert float(window_error(torch.zeros_like(target), target, weights)) == pytest.approx(1.0)
    loud_off = target + torch.tensor([1.0, 0.0])
    quiet_off = target + torch.tensor([0.0, 1.0])
    assert float(window_error(quiet_off, target, weights)) > 100 * float(
        window_error(loud_off, target, weights)
    )


def test_each_maps_step_is_sized_by_the_rms_of_its_kept_weights() -> None:
    wide, narrow = nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        wide.weight.copy_(torch.tensor([[3.0, 100.0], [4.0, 100.0], [0.0, 100.0]]))  # [3, 2]
        narrow.weight.copy_(torch.tensor([[1.0, -1.0, 1.0], [50.0, 50.0, 50.0]]))  # [2, 3]
    window: dict[str, nn.Module] = {"wide": wide, "narrow": narrow}
    parts = {"wide": (None, torch.tensor([0])), "narrow": (torch.tensor([0]), None)}  # kept column, kept row
    scales = weight_scales(window, parts, lambda name: window[name].get_parameter("weight"))
    assert scales == pytest.approx([(25.0 / 3) ** 0.5, 1.0])  # √((9 + 16 + 0) / 3), √((1 + 1 + 1) / 3)


def test_local_fits_on_top_of_an_int8_scored_model(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    """The windows train on top of the int8 linear maps (the changes are hooked beside them, the int8
    weights left as they are): kept, and the compact checkpoint (the original weights with the changes
    merged) computes about what the int8 model was measured at. Judged by the distance to the dense
    model, which the fits move toward (a random model's next-token loss need not follow)."""
    report = prune(
        objective="distill",
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        **LOCAL,
        **{**SMALL, "precision": "int8"},
    )
    assert report.precision == "int8"
    recovery = report.recovery
    assert recovery is not None and not recovery.rolled_back and recovery.windows_kept > 0
    assert recovery.judge_loss_after < recovery.judge_loss_before
    assert report.perplexity is not None
    assert _evaluation_perplexity(tmp_path / "o", calibration_file) == pytest.approx(
        report.perplexity.after, rel=0.1
    )


def test_local_fits_an_encoder_too(tmp_path: Path) -> None:
    """An encoder has no LM head to distill through; its blocks are fitted all the same, judged by the
    embedding distance to the dense model, and the compact checkpoint computes the reported figure."""
    model_dir = make_tiny_encoder(tmp_path / "bert", layers=3)
    data = write_calibration_jsonl(tmp_path / "calib.jsonl")
    report = prune(
        model=str(model_dir),
        data=data,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        method="wanda-sp",
        **LOCAL,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and recovery.windows_kept > 0 and not recovery.rolled_back
    assert recovery.judge_loss_after < recovery.judge_loss_before
    assert report.embedding_cosine is not None
    assert report.embedding_cosine.after > recovery.quality_before["embedding_cosine"]


def test_local_stops_when_its_time_is_up(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the stage's time is up it fits no more: the window being fitted ends after that step (and is
    judged and kept as any other), the blocks after it are left as they are, and the checkpoint still
    computes what the job reports."""
    import pruning.engine.stages as stages

    asked: list[int] = []

    def stop_after_four_steps(run: Any) -> Any:
        def stop() -> bool:  # asked before each window and after each step
            asked.append(1)
            return len(asked) >= 5

        return stop

    monkeypatch.setattr(stages, "recovery_stop", stop_after_four_steps)
    report = prune(
        model=str(tiny_llama),
        data=calibration_file,
        out_dir=tmp_path / "o",
        sparsity=0.4,
        options=BONSAI,
        **LOCAL,
        **SMALL,
    )
    recovery = report.recovery
    assert recovery is not None and (recovery.windows, recovery.steps) == (1, 4)
    assert len(asked) == 6  # nothing more was asked once the answer was yes
    assert report.perplexity is not None
    assert _evaluation_perplexity(tmp_path / "o", calibration_file) == pytest.approx(
        report.perplexity.after, rel=1e-5
    )


def test_local_zo_fits_windows_with_forward_passes_only_and_exports_them_exactly(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`local-zo` fits the same windows as `local` by SPSA steps: no backward pass is ever run, each
    window's held-out error is judged as `local`'s is, and what is kept is exported exactly."""
    backward = torch.Tensor.backward

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    try:
        report = prune(
            model=str(tiny_llama),
            data=calibration_file,
            out_dir=tmp_path / "o",
            sparsity=0.4,
            options=BONSAI,
            recover="local-zo",
            recover_tokens=64 * 32 * 32,
            **SMALL,
        )
    finally:
        monkeypatch.setattr(torch.Tensor, "backward", backward)
    recovery = report.recovery
    assert recovery is not None and recovery.method == "local-zo" and recovery.rank == 0
    assert recovery.lr == 1e-3  # local-zo's own default
    # 65,536 tokens in steps of 32 sequences (the last batch of a pass shorter): 64 steps a window
    assert recovery.steps == 64 * recovery.windows and recovery.tokens <= 64 * 32 * 32 * recovery.windows
    assert recovery.windows_kept > 0 and recovery.last_loss < recovery.first_loss
    assert recovery.judge_loss_after < recovery.judge_loss_before
    assert report.perplexity is not None
    assert _evaluation_perplexity(tmp_path / "o", calibration_file) == pytest.approx(
        report.perplexity.after, rel=1e-5
    )


def test_an_spsa_step_moves_along_its_direction_by_the_measured_slope() -> None:
    """On L(θ) = ½‖θ − t‖², one SPSA step with direction z changes θ by −lr · ((L(θ+εz) − L(θ−εz))/2ε) · z,
    which for this quadratic is exactly −lr · ⟨θ − t, z⟩ · z, and leaves θ where it was at lr 0."""
    from pruning.recovery.training import move_along, spsa_step

    theta = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    target = torch.arange(6, dtype=torch.float64)

    def value() -> float:
        return float(0.5 * (theta.detach() - target).pow(2).sum())

    with torch.no_grad():
        spsa_step([theta], value, direction=7, epsilon=1e-3, lr=0.0)
        assert torch.allclose(theta, torch.zeros(6, dtype=torch.float64), atol=1e-15)
        z = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
        move_along([z], 7, 1.0)  # the direction seed 7 draws
        spsa_step([theta], value, direction=7, epsilon=1e-3, lr=0.1)
    slope = float(((torch.zeros(6, dtype=torch.float64) - target) * z.detach()).sum())
    assert torch.allclose(theta.detach(), -0.1 * slope * z.detach(), atol=1e-9)
