"""One job over several processes: a world of ranks, each holding a replica of the model.

bonsai's sub-models in a round are independent, so their forwards are shared out. Every rank draws the
same sub-models from the same seed; each step of a round gives every rank one forward's worth of them
(exactly the forward one process would run), and the step's losses are gathered on every rank. What
must agree across ranks and could differ between processes (a timed decision, a floating-point result
computed once) is rank 0's, sent to the others (`World.decide`). A world of one (`World()`) is the
single-process job: every call is then local.

Ranks are started here (`start_ranks`: torch.multiprocessing, spawn) or by torchrun (`launched_world`),
NCCL between GPUs and gloo between CPU processes.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pruning.events import Event, EventSink
from pruning.runtime.procs import parent_death_signal

T = TypeVar("T")
RankTarget = Callable[..., Any]  # target(world, emit, *args): one rank's part; rank 0's return is the job's
POLL_S = 0.1  # how often the launching process relays rank 0's events and looks for a failed rank
# how long a rank waits on the others at a collective: the ranks other than 0 wait there while rank 0
# loads, measures the dense model and takes the activation prior, or regresses a round's losses
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """The ranks a job's scoring is shared across, and this process's place in it."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this rank's model device

    @property
    def leader(self) -> bool:
        """Rank 0: the one that measures, decides, evaluates, exports and reports."""
        return self.rank == 0

    def decide(self, compute: Callable[[], T]) -> T:
        """What rank 0 computes, on every rank; the others do not compute it. Collective: every rank
        calls it at the same point."""
        if self.size == 1:
            return compute()
        box = [compute() if self.leader else None]
        dist.broadcast_object_list(box, src=0, device=self._collective_device)
        return box[0]  # type: ignore[return-value]

    def agree(self, value: T) -> T:
        """Rank 0's `value` on every rank, where each computed its own. Collective."""
        return self.decide(lambda: value)

    def own_rows(self, step: torch.Tensor, per_forward: int) -> torch.Tensor:
        """This rank's forward-sized share of a step's rows (empty where the step runs out before it)."""
        return step[self.rank * per_forward : (self.rank + 1) * per_forward]

    def gather_rows(self, own: torch.Tensor, per_forward: int, total: int) -> torch.Tensor:
        """[total] the step's values on every rank, in rank order, from each rank's `own` [≤ per_forward]
        (its `own_rows`' values). Collective."""
        if self.size == 1:
            return own
        padded = torch.zeros(per_forward, dtype=own.dtype, device=self._collective_device)
        padded[: own.numel()] = own.to(self._collective_device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        shares = step_shares(total, per_forward, self.size)
        return torch.cat([part[:share] for part, share in zip(parts, shares, strict=True)]).cpu()

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank. Collective."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    @property
    def _collective_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo, CPU ones
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def step_shares(total: int, per_forward: int, size: int) -> list[int]:
    """How many of a step's `total` sub-models each of `size` ranks scores: one forward's worth
    (`per_forward`) each in rank order, the last ones less or none where the step runs out."""
    return [min(per_forward, max(total - rank * per_forward, 0)) for rank in range(size)]


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def launched_world(device_type: str) -> World | None:
    """This process's rank where a launcher (torchrun) started the job as several processes
    (WORLD_SIZE > 1), joined to the others; None otherwise. On CUDA each rank takes the GPU of its
    LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    device = torch.device("cuda", local) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # env:// rendezvous (MASTER_ADDR, MASTER_PORT)
        dist.init_process_group(
            backend_for(device_type), rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT
        )
    return World(rank, size, device)


def start_ranks(
    target: RankTarget, args: tuple[Any, ...], size: int, device_type: str, emit: EventSink
) -> Any:
    """Run `target(world, emit, *args)` on `size` new processes (spawned), rank r on GPU r on CUDA, and
    return rank 0's result. Rank 0's events reach `emit` here, in this process; the others' are dropped.
    If any rank fails, the rest are stopped and the first error a rank reported is raised."""
    spawn = mp.get_context("spawn")
    events, results = spawn.SimpleQueue(), spawn.SimpleQueue()
    rendezvous = tempfile.mkdtemp(prefix="fwdprune-ranks-")
    store = f"file://{os.path.join(rendezvous, 'store')}"
    context = mp.start_processes(
        _rank_main,
        args=(size, device_type, store, target, args, events, results),
        nprocs=size,
        join=False,
        start_method="spawn",
    )
    outcomes: list[tuple[str, int, bytes]] = []
    try:
        while True:
            try:
                finished = context.join(timeout=POLL_S)
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
                _relay(events, emit)
                raise _first_error(outcomes + _drain(results)) or err from err
            _relay(events, emit)
            outcomes += _drain(results)  # as they come: a pipe holds 64 KiB, and a report can be more
            if finished:
                return _leader_result(outcomes)
    finally:
        for process in context.processes:  # after an error: the ranks still running
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join()
        shutil.rmtree(rendezvous, ignore_errors=True)


def _rank_main(
    rank: int,
    size: int,
    device_type: str,
    store: str,
    target: RankTarget,
    args: tuple[Any, ...],
    events: Any,
    results: Any,
) -> None:
    """A spawned rank: joins the world, runs its part and hands its result or error to the launcher."""
    _die_with_parent()
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device_type),
        init_method=store,
        rank=rank,
        world_size=size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    world = World(rank, size, device)
    # results go as plain pickles: torch's queues would share a tensor's memory with this process,
    # which ends before the launcher reads it
    try:
        value = target(world, events.put if world.leader else _drop, *args)
        if world.leader:
            results.put(("ok", 0, pickle.dumps(value)))
    except BaseException as err:
        results.put(("error", rank, pickle.dumps(_picklable(err))))
        raise
    finally:
        dist.destroy_process_group()


def _drop(event: Event) -> None:
    """The event sink of a rank other than 0: the job's events come from rank 0 alone."""


def _relay(events: Any, emit: EventSink) -> None:
    while not events.empty():
        emit(events.get())


def _drain(results: Any) -> list[tuple[str, int, bytes]]:
    """The ranks' outcomes sent so far: ("ok", 0, pickled result) or ("error", rank, pickled error)."""
    outcomes = []
    while not results.empty():
        outcomes.append(results.get())
    return outcomes


def _leader_result(outcomes: list[tuple[str, int, bytes]]) -> Any:
    for kind, _, value in outcomes:
        if kind == "ok":
            return pickle.loads(value)
    raise RuntimeError("rank 0 ended without a result")


def _first_error(outcomes: list[tuple[str, int, bytes]]) -> BaseException | None:
    """The first error a rank reported: the cause (the others fail after it, on the collectives it left,
    or are stopped), with its own type (a usage error stays one)."""
    for kind, _, value in outcomes:
        if kind == "error":
            return pickle.loads(value)  # type: ignore[no-any-return]
    return None


def _picklable(err: BaseException) -> BaseException:
    """`err` itself where it crosses a process boundary intact, else its traceback as a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError("".join(traceback.format_exception(err)))


def _die_with_parent() -> None:
    """Have Linux kill this rank when the process that started it dies (a no-op elsewhere): a rank left
    behind would wait on the others' collectives until they time out."""
    parent_death_signal(signal.SIGKILL)()


__all__ = ["World", "launched_world", "start_ranks", "step_shares"]
