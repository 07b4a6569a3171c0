"""The recovery stage's parts: which linear maps get adapters, the text they train on, and the whole of
one recovery (train, judge on held-out text, merge or roll back)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from pruning.measure.probe import CalibrationProbe
from pruning.measure.streams import LayerStreams
from pruning.model.adapters import FamilyAdapter, UnitKind
from pruning.model.loading import LoadedModel, scoring_autocast
from pruning.model.units import UnitSpace
from pruning.recovery.deltas import ModuleDelta, WeightDeltas, kept_block
from pruning.recovery.local import WindowLog, WindowSettings, first_fitted_layer, reconstruct, window_targets
from pruning.recovery.low_rank import LowRankAdapters
from pruning.recovery.objective import DistillationLoss
from pruning.recovery.training import TrainingLog, cycle, distill, learning_rate, zeroth_order
from pruning.report import RecoveryRecord

# held-out sequences the recovery is judged on: this share of its text, at most JUDGE_MAX
JUDGE_SHARE, JUDGE_MAX = 0.1, 16
# (local's is a fraction of each map's weight RMS: docs/quality.md, "A learning rate sized to the weights")
DEFAULT_LR = {"distill": 1e-3, "zo": 5e-5, "local": 0.02, "local-zo": 1e-3}
# local reconstruction's methods -> the solver fitting each window
LOCAL_SOLVERS = {"local": "adam", "local-zo": "zo"}


@dataclass(frozen=True)
class RecoverySettings:
    method: str  # "distill", "zo", "local" or "local-zo"
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
    """The whole recovery of the model pruned to `keep` (hooks installed): its parts in the order
    `settings.method` names them ("local+distill": local reconstruction, then adapters trained on top of
    it), each judged on the held-out tail of `sequences` and rolled back alone when it did not help, its
    changes merged into rounded weight changes (`stored_weight(name)`: the weight the export would write
    without any). The record carries the `evaluation` figures before the recovery, what the job would
    report without it; a recovery of several parts sums them up and lists each."""
    quality_before = probe.quality(keep, evaluation)
    methods = settings.method.split("+")
    records: list[RecoveryRecord] = []
    deltas: WeightDeltas | None = None
    for index, method in enumerate(methods):

        def part_step(done: int, steps: int, index: int = index) -> None:
            on_step(index * steps + done, len(methods) * steps)

        part = replace(settings, method=method)
        if method in LOCAL_SOLVERS:
            recovered = recover_locally(
                loaded, adapter, probe, keep, part, sequences, stored_weight, part_step, stop
            )
        else:
            recovered = train_adapters(
                loaded, adapter, probe, keep, part, sequences, stored_weight, part_step, stop, deltas
            )
        records.append(recovered.record)
        deltas = recovered.deltas or deltas
    record = records[0] if len(records) == 1 else summed(settings.method, records)
    return Recovered(record.model_copy(update={"quality_before": quality_before}), deltas)


def summed(method: str, parts: list[RecoveryRecord]) -> RecoveryRecord:
    """One record for a recovery of several `parts`: their tokens, steps and time added up, the held-out
    loss before the first and after the last one kept, rolled back when every part was."""
    kept = [part for part in parts if not part.rolled_back]
    seconds = sum(part.seconds for part in parts)
    tokens = sum(part.tokens for part in parts)
    return parts[-1].model_copy(
        update={
            "method": method,
            "tokens": tokens,
            "steps": sum(part.steps for part in parts),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "judge_loss_before": parts[0].judge_loss_before,
            "judge_loss_after": kept[-1].judge_loss_after if kept else parts[0].judge_loss_before,
            "rolled_back": not kept,
            "first_loss": parts[0].first_loss,
            "windows": sum(part.windows for part in parts),
            "windows_kept": sum(part.windows_kept for part in parts),
            "parts": parts,
        }
    )


def train_adapters(
    loaded: LoadedModel,
    adapter: FamilyAdapter,
    probe: CalibrationProbe,
    keep: torch.Tensor,
    settings: RecoverySettings,
    sequences: torch.Tensor,
    stored_weight: Callable[[str], torch.Tensor],
    on_step: Callable[[int, int], None],
    stop: Callable[[], bool],
    prior: WeightDeltas | None = None,
) -> Recovered:
    """`distill` or `zo`: adapters on the kept linear maps trained over `sequences` (on top of the
    `prior` changes of an earlier part, hooked in meanwhile), judged on their held-out tail, merged with
    `prior` into rounded weight changes or rolled back (the `prior` ones stay)."""
    model = loaded.model
    loss = DistillationLoss(
        model, adapter, probe.masks, loaded.device, settings.lm_weight, scoring_autocast(loaded.precision)
    )
    targets = target_modules(model, adapter, probe.space, keep)
    with fused_in(prior) if prior is not None else nullcontext():
        adapters, record = train_and_judge(probe, loss, targets, keep, sequences, settings, on_step, stop)
    if adapters is None:
        return Recovered(record, None)
    deltas = WeightDeltas(probe.masks)
    if prior is not None:
        deltas.changes.update(prior.changes)
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
    """Each adapter's s·BA into `deltas`, on top of any change `deltas` holds for its module already (an
    earlier recovery's), kept to the rows and columns the export keeps and rounded as the export will
    store the changed weight (`stored_weight(name)`: the weight as the export would write it before any
    recovery: the checkpoint's, or the compensation's refit of it)."""
    for name, module in adapters.targets.items():
        rows, columns = kept_part(adapter, kept, name)
        part = kept_block(adapters.delta(name).cpu(), rows, columns)
        if name in deltas.changes:
            part = part + deltas.changes[name][1].delta
        deltas.changes[name] = (module, ModuleDelta.rounded_part(part, stored_weight(name), rows, columns))


def local_windows(
    model: nn.Module, adapter: FamilyAdapter, space: UnitSpace, keep: torch.Tensor
) -> tuple[
    list[nn.Module],
    list[dict[str, nn.Module]],
    int,
    dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
]:
    """What local reconstruction fits in the model pruned to `keep`: the decoder blocks, each block's
    target maps (its window), the first block whose input the pruning changed, and the kept (rows,
    columns) of every target map."""
    targets = target_modules(model, adapter, space, keep)
    windows = window_targets(model, adapter, targets)
    indices = space.kept_indices(keep)
    parts = {name: kept_part(adapter, indices, name) for name in targets}
    return adapter.layers(model), windows, first_fitted_layer(space, keep, windows), parts


def recover_locally(
    loaded: LoadedModel,
    adapter: FamilyAdapter,
    probe: CalibrationProbe,
    keep: torch.Tensor,
    settings: RecoverySettings,
    sequences: torch.Tensor,
    stored_weight: Callable[[str], torch.Tensor],
    on_step: Callable[[int, int], None],
    stop: Callable[[], bool],
) -> Recovered:
    """Local reconstruction of the model pruned to `keep` (hooks installed): each block fitted to the
    dense model's output from the pruned model's input over `sequences` (the last of them held out to
    judge each window and the whole), its kept changes rounded as exported; rolled back whole when the
    held-out loss did not improve."""
    train, judge = judge_split(sequences)
    layers, windows, first, parts = local_windows(loaded.model, adapter, probe.space, keep)
    before = probe.mean_loss(keep, judge)
    deltas = WeightDeltas(probe.masks)
    steps = max(1, settings.tokens // (settings.batch_sequences * sequences.shape[1]))
    total = steps * sum(1 for window in windows[first:] if window)
    done = 0

    def stepped(tokens: int) -> None:
        nonlocal done
        done += 1
        on_step(done, max(total, 1))

    began = time.perf_counter()
    log = WindowLog()
    if first < len(layers):
        with torch.no_grad():
            streams = LayerStreams.capture(probe, keep, layers[first], train, settings.batch_sequences)
            held = LayerStreams.capture(probe, keep, layers[first], judge)
        window = WindowSettings(steps, settings.peak_lr, settings.seed, LOCAL_SOLVERS[settings.method])
        log = reconstruct(
            streams, held, layers[first:], windows[first:], parts, stored_weight, deltas, window,
            learning_rate, stepped, stop,
        )  # fmt: skip
    seconds = time.perf_counter() - began
    with fused_in(deltas):
        after = probe.mean_loss(keep, judge)
    rolled_back = not after < before
    record = RecoveryRecord(
        method=settings.method,
        tokens=log.tokens,
        steps=log.steps,
        seconds=round(seconds, 3),
        tokens_per_s=round(log.tokens / max(seconds, 1e-9), 1),
        rank=0,
        lr=settings.peak_lr,
        lm_weight=0.0,
        train_sequences=int(train.shape[0]),
        judge_sequences=int(judge.shape[0]),
        judge_loss_before=before,
        judge_loss_after=after,
        rolled_back=rolled_back,
        first_loss=_mean(log.errors_before),
        last_loss=_mean(log.errors_after),
        windows=log.windows,
        windows_kept=log.kept,
    )
    return Recovered(record, None if rolled_back else deltas)


@contextmanager
def fused_in(deltas: WeightDeltas) -> Iterator[None]:
    """A recovery's changes on the model, as every measurement of it takes them: hooked in, and fused
    into the float maps they change (one matmul a map)."""
    with deltas.installed(), deltas.fused():
        yield


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
