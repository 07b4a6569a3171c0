"""`local`: local reconstruction after pruning (Roux et al. 2025, "A Free Lunch in LLM Compression").

Each decoder block, in forward order, is a window: the kept part of every linear map in it gains a
trainable change ΔW, fitted so that the block, fed the *pruned* model's own hidden states (every earlier
window's fit applied), reproduces the *dense* model's output of the same block on the recovery's text.
Fitting to dense targets from pruned inputs lets each window also undo the drift the blocks before it left
(as the `ls` refit does for single output projections), and a window holds the block's nonlinearities, so
small errors of single maps do not pile up into drift.

Only one window trains at a time: its ΔW with Adam's two moments, the text's hidden states at the block's
input in both models, and one micro-batch's activations, never the LM head or a whole-model backward pass.
A window's fit is kept only if it lowers the window's error on held-out sequences; once kept it is rounded
as the export will store the changed weights and hooked in as a `WeightDeltas`, so the pruned stream the
next window is fed is exactly what the compact checkpoint computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.measure.streams import LayerStreams
from pruning.model.adapters import FamilyAdapter
from pruning.model.units import UnitSpace
from pruning.recovery.deltas import ModuleDelta, WeightDeltas, kept_block
from pruning.recovery.training import spsa_step

# float32 floor of a channel's mean square in the per-channel normalisation (a dead channel's error does
# not weigh without bound)
CHANNEL_FLOOR = 1e-6


@dataclass
class WindowLog:
    """What the windows' fits did: steps and tokens over all windows, the held-out error of each window
    before and after its fit (relative to its target's mean square), and which windows were kept."""

    steps: int = 0
    tokens: int = 0
    windows: int = 0
    kept: int = 0
    errors_before: list[float] = field(default_factory=list)
    errors_after: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSettings:
    steps: int  # optimizer steps per window, one micro-batch of the training stream each
    # peak learning rate (warm-up, then cosine decay); for "adam" a fraction of each map's weight RMS
    lr: float
    seed: int
    solver: str = "adam"  # "adam": gradient steps; "zo": SPSA steps, the window's forward pass only
    epsilon: float = 1e-3  # SPSA's perturbation size (solver "zo")


def window_targets(
    model: nn.Module, adapter: FamilyAdapter, targets: dict[str, nn.Module]
) -> list[dict[str, nn.Module]]:
    """The recovery's target maps (name -> module) grouped by decoder block, one dict per block."""
    owner = {module: index for index, layer in enumerate(adapter.layers(model)) for module in layer.modules()}
    windows: list[dict[str, nn.Module]] = [{} for _ in adapter.layers(model)]
    for name, module in targets.items():
        windows[owner[module]][name] = module
    return windows


def trainable_window(
    window: dict[str, nn.Module],
    parts: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    deltas: WeightDeltas,
) -> list[nn.Parameter]:
    """A zero ΔW [R, C] on the kept rows and columns (`parts[name]`) of each map of `window`, put into
    `deltas` (not yet installed); returns them as parameters."""
    params: list[nn.Parameter] = []
    for name, module in window.items():
        rows, columns = parts[name]
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        shape = (
            weight.shape[0] if rows is None else rows.numel(),
            weight.shape[1] if columns is None else columns.numel(),
        )
        param = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=weight.device))
        deltas.changes[name] = (module, ModuleDelta(rows, columns, param))
        params.append(param)
    return params


def weight_scales(
    window: dict[str, nn.Module],
    parts: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    stored_weight: Callable[[str], torch.Tensor],
) -> list[float]:
    """The RMS of each map's kept weights (`parts[name]`), in `window`'s order: Adam moves every weight
    by about its learning rate a step whatever the gradient's scale, so a step is sized to the weights it
    changes (a model whose weights are four times larger takes four times larger steps)."""
    scales = []
    for name in window:
        kept = kept_block(stored_weight(name).float(), *parts[name])  # [R, C] of [O, I]
        scales.append(float(kept.pow(2).mean().sqrt().clamp(min=1e-8)))
    return scales


def channel_weights(targets: list[torch.Tensor]) -> torch.Tensor:
    """[D] the weight of each channel in a window's error: one over the channel's mean square in the
    dense targets, so that a few large channels (the residual stream's outliers) do not decide the fit
    alone; scaled so that a target of zeros errs by 1."""
    energy = torch.stack([t.float().pow(2).sum(dim=(0, 1)) for t in targets]).sum(0)  # [D]
    mean_square = energy / sum(t.shape[0] * t.shape[1] for t in targets)
    return 1.0 / (mean_square.clamp(min=CHANNEL_FLOOR) * mean_square.numel())


def window_error(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of Σ_c w_c (output − target)²_c: output, target [B, T, D], weights [D]."""
    return ((output.float() - target.float()).pow(2) * weights).sum(-1).mean()


def held_out_error(
    streams: LayerStreams, layer: nn.Module, targets: list[torch.Tensor], weights: torch.Tensor
) -> float:
    """The window's error on every batch of `streams` (the held-out ones) as the model is hooked now."""
    with torch.no_grad():
        errors = [
            float(window_error(streams.run(layer, b, dense=False), targets[b], weights)) * targets[b].numel()
            for b in range(streams.batches)
        ]
    return sum(errors) / sum(t.numel() for t in targets)


def window_steps(
    streams: LayerStreams,
    settings: WindowSettings,
    learning_rate: Callable[[int, int, float], float],
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
    step: Callable[[int, float], None],
) -> int:
    """The loop every solver shares: `step(batch, lr)` on one batch of a reshuffled cycle of the
    training stream's batches at a time, at the schedule's learning rate, for `settings.steps` steps or
    until `stop()`; returns the steps taken."""
    order = _cycle(streams.batches, settings.seed)
    taken = 0
    for index in range(settings.steps):
        batch = next(order)
        step(batch, learning_rate(index, settings.steps, settings.lr))
        taken += 1
        on_step(int(streams.pruned[batch].shape[0] * streams.pruned[batch].shape[1]))  # tokens
        if stop():
            break
    return taken


def fit_window(
    streams: LayerStreams,
    layer: nn.Module,
    targets: list[torch.Tensor],
    weights: torch.Tensor,
    params: list[nn.Parameter],
    scales: list[float],
    settings: WindowSettings,
    learning_rate: Callable[[int, int, float], float],
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
) -> int:
    """Adam steps on `params` (hooked into `layer`) toward the dense `targets` of the pruned stream's
    batches, each step on one batch of a reshuffled cycle, each map's learning rate the schedule's times
    its weights' `scales`; returns the steps taken (fewer when `stop()`)."""
    optimizer = torch.optim.Adam([{"params": [p], "scale": s} for p, s in zip(params, scales, strict=True)])

    def adam_step(batch: int, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        with torch.enable_grad():
            loss = window_error(streams.run(layer, batch, dense=False), targets[batch], weights)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return window_steps(streams, settings, learning_rate, on_step, stop, adam_step)


def fit_window_zo(
    streams: LayerStreams,
    layer: nn.Module,
    targets: list[torch.Tensor],
    weights: torch.Tensor,
    params: list[nn.Parameter],
    scales: list[float],
    settings: WindowSettings,
    learning_rate: Callable[[int, int, float], float],
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
) -> int:
    """`fit_window` without a backward pass: SPSA steps (as `zo` takes on the whole model) on the window's
    error, two forward passes of the block a step, one Gaussian direction over all of `params` each;
    returns the steps taken. Its perturbation and step are one size over every map, as `zo`'s are
    (`scales` sizes Adam's steps only)."""
    seeds = torch.Generator().manual_seed(settings.seed)

    def spsa_window_step(batch: int, lr: float) -> None:
        direction = int(torch.randint(0, 2**62, (1,), generator=seeds))

        def error() -> float:
            return float(window_error(streams.run(layer, batch, dense=False), targets[batch], weights))

        spsa_step(params, error, direction, settings.epsilon, lr)

    with torch.no_grad():
        return window_steps(streams, settings, learning_rate, on_step, stop, spsa_window_step)


SOLVERS = {"adam": fit_window, "zo": fit_window_zo}


def reconstruct(
    streams: LayerStreams,
    judge: LayerStreams,
    layers: list[nn.Module],
    windows: list[dict[str, nn.Module]],
    parts: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    stored_weight: Callable[[str], torch.Tensor],
    kept: WeightDeltas,
    settings: WindowSettings,
    learning_rate: Callable[[int, int, float], float],
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
) -> WindowLog:
    """Fit each of `windows` (the maps of `layers`, block by block, from the block `streams` and `judge`
    were captured at) in forward order into `kept`: rounded changes, each window's hooked in as soon as
    it is kept, for the windows after it. `streams` carry the training text, `judge` the held-out text.
    Stops when `stop()` says so: the windows after it stay as they are, and the streams stay where
    they are."""
    log = WindowLog()
    with ExitStack() as hooked:
        for layer, window in zip(layers, windows, strict=True):
            if stop():
                break
            targets, judge_targets = streams.dense_outputs(layer), judge.dense_outputs(layer)
            advancing: AbstractContextManager[Any] = nullcontext()
            if window:
                fitted = WeightDeltas(kept.masks)
                params = trainable_window(window, parts, fitted)
                scales = weight_scales(window, parts, stored_weight)
                weights = channel_weights(targets)
                before = held_out_error(judge, layer, judge_targets, weights)

                def counted(tokens: int) -> None:
                    log.tokens += tokens
                    on_step(tokens)

                with fitted.installed():
                    with fitted.fused():  # the judgments below run the changes as they will be kept
                        log.steps += SOLVERS[settings.solver](
                            streams,
                            layer,
                            targets,
                            weights,
                            params,
                            scales,
                            settings,
                            learning_rate,
                            counted,
                            stop,
                        )
                    after = held_out_error(judge, layer, judge_targets, weights)
                log.windows += 1
                log.errors_before.append(before)
                log.errors_after.append(min(before, after))
                if after < before:
                    rounded = _rounded(fitted, stored_weight)
                    kept.changes.update(rounded.changes)
                    hooked.enter_context(rounded.installed())
                    advancing = rounded.fused()  # what the compact map computes, in one matmul
                    log.kept += 1
            with torch.no_grad(), advancing:
                streams.advance(layer)
                judge.advance(layer)
    return log


def _rounded(fitted: WeightDeltas, stored_weight: Callable[[str], torch.Tensor]) -> WeightDeltas:
    """The fitted changes rounded as the export will store each changed weight, on the CPU."""
    rounded = WeightDeltas(fitted.masks)
    for name, (module, change) in fitted.changes.items():
        part = change.delta.detach().cpu()
        rounded.changes[name] = (
            module,
            ModuleDelta.rounded_part(part, stored_weight(name), change.rows, change.columns),
        )
    return rounded


def _cycle(batches: int, seed: int) -> Iterator[int]:
    """Batch indices, every one once per pass, reshuffled each pass."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(batches, generator=generator).tolist()


def first_fitted_layer(space: UnitSpace, keep: torch.Tensor, windows: list[dict[str, nn.Module]]) -> int:
    """The first block whose input differs between the models: nothing before it is pruned, so nothing
    before it has anything to undo (len(windows) when nothing is pruned)."""
    pruned = [g.layer for g in space.groups if not bool(keep[space.slice(g)].all())]
    return min(pruned) if pruned else len(windows)
