"""The two ways recovery trains the adapters, step by step over batches of token ids.

- `distill`: AdamW on the gradient of the distillation loss (a forward and a backward pass a step).
- `zo`: SPSA as in MeZO (Malladi et al. 2023): the loss at θ + εz and θ − εz for one random direction z,
  and a step along z by their difference; two forward passes a step, no backward and no optimizer state,
  so it needs the memory of scoring. z is regenerated from its seed rather than stored.

Both follow one learning-rate schedule (linear warm-up, then cosine decay to a tenth) and stop early when
`stop()` says the job's time is up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from pruning.recovery.objective import DistillationLoss

WARMUP = 0.1  # of the steps
FINAL_LR = 0.1  # of the peak, at the last step
ZO_EPSILON = 1e-3  # SPSA's perturbation size


@dataclass
class TrainingLog:
    steps: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)  # one per step (zo: the mean of its two)


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first WARMUP of `steps`, then cosine decay from `peak` to FINAL_LR of it."""
    warmup = max(1, int(WARMUP * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * progress)))


def distill(
    loss: DistillationLoss,
    params: list[nn.Parameter],
    batches: Iterable[torch.Tensor],
    steps: int,
    peak_lr: float,
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
) -> TrainingLog:
    """`steps` AdamW steps on the gradient of `loss`, one batch [B, T] each."""
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)

    def step(ids: torch.Tensor, lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        value = loss.backward(ids)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return _train(step, batches, steps, peak_lr, on_step, stop)


def zeroth_order(
    loss: DistillationLoss,
    params: list[nn.Parameter],
    batches: Iterable[torch.Tensor],
    steps: int,
    peak_lr: float,
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
    seed: int = 0,
) -> TrainingLog:
    """`steps` SPSA steps: ĝ = (L(θ + εz) − L(θ − εz)) / 2ε along one Gaussian direction z per step,
    θ ← θ − lr · ĝ · z. The dense teacher's hidden states are computed once per batch."""
    seeds = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(ids: torch.Tensor, lr: float) -> float:
        direction = int(torch.randint(0, 2**62, (1,), generator=seeds))
        teacher = loss.teacher_hidden(ids.to(loss.device))
        return spsa_step(params, lambda: loss.value(ids, teacher), direction, ZO_EPSILON, lr)

    return _train(step, batches, steps, peak_lr, on_step, stop)


def spsa_step(
    params: list[nn.Parameter], value: Callable[[], float], direction: int, epsilon: float, lr: float
) -> float:
    """One SPSA step on `params`: `value()` (the loss as the parameters are now) at θ + εz and θ − εz for
    the Gaussian direction z drawn from seed `direction`, then θ ← θ − lr · ĝ · z with
    ĝ = (L(θ + εz) − L(θ − εz)) / 2ε; returns the mean of the two losses."""
    move_along(params, direction, epsilon)
    plus = value()
    move_along(params, direction, -2 * epsilon)
    minus = value()
    move_along(params, direction, epsilon)  # back to θ
    move_along(params, direction, -lr * (plus - minus) / (2 * epsilon))
    return 0.5 * (plus + minus)


def _train(
    step: Callable[[torch.Tensor, float], float],
    batches: Iterable[torch.Tensor],
    steps: int,
    peak_lr: float,
    on_step: Callable[[int], None],
    stop: Callable[[], bool],
) -> TrainingLog:
    """`steps` calls of `step(batch, learning rate)`, one batch each, the rate on the schedule; stops early
    when `stop()` says so."""
    log = TrainingLog()
    for index, ids in zip(range(steps), batches, strict=False):
        log.losses.append(step(ids, learning_rate(index, steps, peak_lr)))
        log.steps += 1
        log.tokens += ids.numel()
        on_step(log.steps)
        if stop():
            break
    return log


def move_along(params: list[nn.Parameter], seed: int, scale: float) -> None:
    """θ ← θ + scale · z, z drawn from N(0, I) by a generator seeded with `seed` (the same z each call)."""
    generator = torch.Generator(device=params[0].device).manual_seed(seed)
    for param in params:
        noise = torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype)
        param.add_(noise, alpha=scale)


def cycle(sequences: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of `batch` sequences [batch, T] from `sequences` [N, T], reshuffled each pass."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(sequences.shape[0], generator=generator)
        for start in range(0, sequences.shape[0] - batch + 1, batch):
            yield sequences[order[start : start + batch]]
