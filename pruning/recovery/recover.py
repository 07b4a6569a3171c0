"""The recovery stage's parts: which linear maps get adapters, the text they train on, and the whole of
one recovery (train, judge on held-out text, merge or roll back)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters import FamilyAdapter, UnitKind
from pruning.model.loading import LoadedModel, scoring_autocast
from pruning.model.units import UnitSpace
from pruning.recovery.deltas import ModuleDelta, WeightDeltas
from pruning.recovery.low_rank import LowRankAdapters
from pruning.recovery.objective import DistillationLoss
from pruning.recovery.training import TrainingLog, cycle, distill, zeroth_order
from pruning.report import RecoveryRecord

# held-out sequences the recovery is judged on: this share of its text, at most JUDGE_MAX
JUDGE_SHARE, JUDGE_MAX = 0.1, 16
DEFAULT_LR = {"distill": 1e-3, "zo": 5e-5}


@dataclass(frozen=True)
class RecoverySettings:
    method: str  # "distill" or "zo"
    tokens: int
    rank: int
    lr: float | None  # None: the method's default
    lm_weight: float
    batch_sequences: int  # sequences per step
    seed: int

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def judge_split(sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, judge): the last JUDGE_SHARE of the recovery's text (at most JUDGE_MAX sequences, at
    least one) is held out to judge it."""
    judge = min(JUDGE_MAX, max(1, int(JUDGE_SHARE * sequences.shape[0])))
    if sequences.shape[0] <= judge:
        raise ValueError("recovery needs at least two sequences of text: one to train on, one to judge")
    return sequences[:-judge], sequences[-judge:]


def target_modules(
    model: nn.Module, adapter: FamilyAdapter, space: UnitSpace, keep: torch.Tensor
) -> dict[str, nn.Module]:
    """name -> module: the linear maps of every block that keeps units (a block removed whole has none
    left to adapt)."""
    names = {module: name for name, module in model.named_modules()}
    shapes = space.kept_shapes(keep)
    targets: dict[str, nn.Module] = {}
    for block, shape in zip(adapter.layers(model), shapes, strict=True):
        for path in adapter.prunable_linears:
            kind = adapter.linear_kind(path)
            if (shape.num_kv_heads if kind == UnitKind.ATTN else shape.intermediate) == 0:
                continue
            module = block.get_submodule(path)
            targets[names[module]] = module
    return targets


def kept_part(
    adapter: FamilyAdapter, kept: dict[tuple[int, str], torch.Tensor], name: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, columns) of the weight of module `name` that the export keeps (None: all of them)."""
    found = adapter.rule_for(f"{name}.weight")
    if found is None:
        return None, None
    rule, layer = found
    index = kept[(layer, rule.axis)]
    return (index, None) if rule.dim == 0 else (None, index)


@dataclass
class Recovered:
    """What one recovery did (`record`), and the weight changes it left, None when rolled back."""

    record: RecoveryRecord
    deltas: WeightDeltas | None


def recover_model(
    loaded: LoadedModel,
    adapter: FamilyAdapter,
    probe: CalibrationProbe,
    keep: torch.Tensor,
    settings: RecoverySettings,
    sequences: torch.Tensor,
    evaluation: torch.Tensor,
    stored_weight: Callable[[str], torch.Tensor],
    on_step: Callable[[int, int], None],
    stop: Callable[[], bool],
) -> Recovered:
    """The whole recovery of the model pruned to `keep` (hooks installed): adapters on its kept linear
    maps trained over `sequences`, judged on their held-out tail, merged into rounded weight changes
    (`stored_weight(name)`: the weight the export would write without them) or rolled back. The record
    carries the `evaluation` figures before the recovery, what the job would report without it."""
    model = loaded.model
    loss = DistillationLoss(
        model, adapter, probe.masks, loaded.device, settings.lm_weight, scoring_autocast(loaded.precision)
    )
    targets = target_modules(model, adapter, probe.space, keep)
    adapters, record = train_and_judge(probe, loss, targets, keep, sequences, settings, on_step, stop)
    record = record.model_copy(update={"quality_before": probe.quality(keep, evaluation)})
    if adapters is None:
        return Recovered(record, None)
    deltas = WeightDeltas(probe.masks)
    merge(adapters, deltas, adapter, probe.space.kept_indices(keep), stored_weight)
    return Recovered(record, deltas)


def train_and_judge(
    probe: CalibrationProbe,
    loss: DistillationLoss,
    targets: dict[str, nn.Module],
    keep: torch.Tensor,
    sequences: torch.Tensor,
    settings: RecoverySettings,
    on_step: Callable[[int, int], None],
    stop: Callable[[], bool],
) -> tuple[LowRankAdapters | None, RecoveryRecord]:
    """Train adapters on `targets` over `sequences` [N, T] (the last of them held out to judge it) and
    return them, or None when the held-out loss did not improve (rolled back), with the record."""
    train, judge = judge_split(sequences)
    adapters = LowRankAdapters(targets, probe.masks, settings.rank, alpha=2.0 * settings.rank)
    first: torch.Tensor = next(iter(targets.values())).weight  # type: ignore[assignment]
    adapters.to(first.device)
    params = list(adapters.parameters())
    probe.masks.set(keep.double())
    before = probe.mean_loss(keep, judge)
    steps = max(1, settings.tokens // (settings.batch_sequences * sequences.shape[1]))
    batches = cycle(train, min(settings.batch_sequences, train.shape[0]), settings.seed)
    began = time.perf_counter()
    with adapters.installed():
        probe.masks.set(keep.double())
        train_fn = distill if settings.method == "distill" else zeroth_order
        log: TrainingLog = train_fn(
            loss, params, batches, steps, settings.peak_lr, lambda done: on_step(done, steps), stop
        )
        seconds = time.perf_counter() - began
        after = probe.mean_loss(keep, judge)
    rolled_back = not after < before
    record = RecoveryRecord(
        method=settings.method,
        tokens=log.tokens,
        steps=log.steps,
        seconds=round(seconds, 3),
        tokens_per_s=round(log.tokens / max(seconds, 1e-9), 1),
        rank=settings.rank,
        lr=settings.peak_lr,
        lm_weight=settings.lm_weight,
        train_sequences=int(train.shape[0]),
        judge_sequences=int(judge.shape[0]),
        judge_loss_before=before,
        judge_loss_after=after,
        rolled_back=rolled_back,
        first_loss=log.losses[0] if log.losses else float("nan"),
        last_loss=log.losses[-1] if log.losses else float("nan"),
    )
    return (None if rolled_back else adapters), record


def merge(
    adapters: LowRankAdapters,
    deltas: WeightDeltas,
    adapter: FamilyAdapter,
    kept: dict[tuple[int, str], torch.Tensor],
    stored_weight: Callable[[str], torch.Tensor],
) -> None:
    """Each adapter's s·BA into `deltas`, kept to the rows and columns the export keeps and rounded as
    the export will store the changed weight (`stored_weight(name)`: the weight as the export would
    write it before the recovery: the checkpoint's, or the compensation's refit of it)."""
    for name, module in adapters.targets.items():
        rows, columns = kept_part(adapter, kept, name)
        change = ModuleDelta.rounded(adapters.delta(name).cpu(), stored_weight(name), rows, columns)
        deltas.changes[name] = (module, change)
