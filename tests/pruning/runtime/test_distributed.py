"""One job over several processes: two gloo ranks on the CPU score exactly what one process scores, and
the layout of a model over GPUs, decided from numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pruning import PruneSpec, prune
from pruning.engine.api import prune_replicated
from pruning.engine.placement import checkpoint_param_split
from pruning.errors import UsageError
from pruning.measure.objectives import make_objective
from pruning.measure.probe import CalibrationProbe, OutputWeights
from pruning.methods.bonsai.pacing import MIN_SUB_MODELS
from pruning.methods.bonsai.regression import sample_antithetic_drops
from pruning.methods.bonsai.sub_models import step_losses, sub_model_losses
from pruning.model.adapters import adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from pruning.runtime.devices import ACTIVATION_MARGIN, Placement, plan_placement, scoring_bytes
from pruning.runtime.distributed import World, start_ranks, step_shares

CPU = torch.device("cpu")
GB = 10**9
SMALL: dict[str, Any] = dict(
    seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu", sparsity=0.4
)
# 20 sub-models a round, 4 per forward, 2 ranks: steps of 8, 8 and 4, the last one rank 0's alone
OPTIONS: dict[str, Any] = dict(rounds=2, samples_per_round=20, scoring_sequences=2, masks_per_forward=4)


def spec(model: Path, data: Path, out: Path, **overrides: Any) -> PruneSpec:
    return PruneSpec(model=str(model), data=data, out_dir=out, **{**SMALL, "options": OPTIONS, **overrides})


def tensors(out: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(out)
    return {name: reader.get(name) for name in reader.weight_map}


@pytest.mark.timeout(180)
def test_two_ranks_prune_exactly_as_one_process(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    one = prune(spec(tiny_llama, calibration_file, tmp_path / "one"))
    events: list[Any] = []
    two = prune_replicated(spec(tiny_llama, calibration_file, tmp_path / "two"), 2, events.append)
    importance = torch.tensor([u.importance for u in one.units], dtype=torch.float64)
    assert torch.equal(torch.tensor([u.importance for u in two.units], dtype=torch.float64), importance)
    assert [u.kept for u in two.units] == [u.kept for u in one.units]
    assert two.method_details["rounds"] == one.method_details["rounds"]
    assert [r["sub_models"] for r in two.method_details["rounds"]] == [20, 20]
    exported, single = tensors(tmp_path / "two"), tensors(tmp_path / "one")
    assert exported.keys() == single.keys()
    assert all(torch.equal(exported[name], single[name]) for name in single)
    assert two.perplexity == one.perplexity
    assert (one.replicas, two.replicas) == (1, 2)
    assert two.peak_gpu_bytes_per_device == one.peak_gpu_bytes_per_device == []  # no GPU: none
    # events from rank 0 alone: each stage announced once
    stages = [e["stage"] for e in events if e["type"] == "stage"]
    assert stages == ["load", "data", "evaluate_dense", "scoring", "evaluate_pruned", "export", "done"]


def share_problem(model_dir: Path) -> tuple[CalibrationProbe, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A probe on tiny llama, the alive units (all but the first two), 6 sampled sub-models' drops among
    them and a batch of 2 sequences."""
    loaded = load_model(model_dir, "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    masks = UnitMasks(space)
    objective = make_objective("lm", loaded.model, adapter, CPU, masks)
    ids = torch.randint(1, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    probe = CalibrationProbe(objective, masks, OutputWeights(CheckpointReader(model_dir)), ids, batch_size=2)
    keep = torch.ones(space.size, dtype=torch.bool)
    keep[:2] = False
    alive = int(keep.sum())
    drops = sample_antithetic_drops(torch.full((alive,), 0.3), 3, torch.Generator().manual_seed(1))
    return probe, keep, drops, ids


def scored_shares(world: World, emit: Any, model_dir: Path, per_forward: int) -> dict[str, Any]:
    """A rank's part: its own share of one step of sub-models and the step's gathered losses; and, to
    see what crosses to the launcher, an event and (rank 0) a result larger than a pipe's 64 KiB."""
    emit({"type": "metric", "name": "rank", "value": world.rank})
    probe, keep, drops, batch = share_problem(model_dir)
    candidates = keep.nonzero().flatten()
    with probe.masks.installed():
        own = sub_model_losses(probe, keep, candidates, world.own_rows(drops, per_forward), batch)
        gathered = step_losses(probe, world, keep, candidates, drops, batch, per_forward)
    large = torch.arange(2**15, dtype=torch.float64)  # 256 KiB
    return {"shares": world.gather(own), "gathered": gathered, "large": large}


@pytest.mark.timeout(120)
def test_a_rank_scores_its_share_as_one_process_scores_those_sub_models(tiny_llama: Path) -> None:
    events: list[Any] = []
    ranks = start_ranks(scored_shares, (tiny_llama, 4), 2, "cpu", events.append)
    assert events == [{"type": "metric", "name": "rank", "value": 0}]  # rank 0's alone
    assert torch.equal(ranks["large"], torch.arange(2**15, dtype=torch.float64))
    probe, keep, drops, batch = share_problem(tiny_llama)
    candidates = keep.nonzero().flatten()
    with probe.masks.installed():  # one process's forwards over the same 6 sub-models, 4 at a time
        first = sub_model_losses(probe, keep, candidates, drops[:4], batch)
        second = sub_model_losses(probe, keep, candidates, drops[4:], batch)
    assert [share.shape[0] for share in ranks["shares"]] == [4, 2]
    assert torch.equal(ranks["shares"][0], first) and torch.equal(ranks["shares"][1], second)
    assert torch.equal(ranks["gathered"], torch.cat([first, second]))
    assert len(set(ranks["gathered"].tolist())) == 6  # the sub-models really differ


@pytest.mark.timeout(120)
def test_a_rank_whose_share_runs_out_runs_no_forward_and_gathers_the_step(tiny_llama: Path) -> None:
    ranks = start_ranks(scored_shares, (tiny_llama, 6), 2, "cpu", lambda event: None)
    probe, keep, drops, batch = share_problem(tiny_llama)
    with probe.masks.installed():  # one forward holds the step's 6 sub-models: rank 1 has none
        whole = sub_model_losses(probe, keep, keep.nonzero().flatten(), drops, batch)
    assert [share.shape[0] for share in ranks["shares"]] == [6, 0]
    assert ranks["shares"][1].dtype == whole.dtype == torch.float64
    assert torch.equal(ranks["gathered"], whole)


@pytest.mark.timeout(180)
def test_a_time_limited_job_on_two_ranks_sizes_its_rounds_once_for_all(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    options = {k: v for k, v in OPTIONS.items() if k != "samples_per_round"}
    job = spec(tiny_llama, calibration_file, tmp_path / "o", time_limit=8.0, options=options)
    report = prune_replicated(job, 2)
    # rank 0 sized each round and told the other: had they differed, the ranks' collectives would
    # not have matched
    sub_models = [r["sub_models"] for r in report.method_details["rounds"]]
    assert len(sub_models) == 2 and all(n >= MIN_SUB_MODELS and n % 2 == 0 for n in sub_models)
    assert report.budget.actual_s <= 1.5 * 8.0  # room for cores the test shares with others


def test_gpus_on_the_cpu_are_refused(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="gpus asks for GPUs, and this job runs on the CPU"):
        prune(spec(tiny_llama, calibration_file, tmp_path / "o", gpus=2))


def test_a_step_gives_each_rank_one_forward_in_rank_order() -> None:
    assert step_shares(8, 4, 2) == [4, 4]
    assert step_shares(5, 4, 2) == [4, 1]
    assert step_shares(3, 4, 3) == [3, 0, 0]
    assert step_shares(12, 4, 1) == [4]  # one process: a step is one forward


def test_a_world_of_one_is_local() -> None:
    world = World()
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert world.leader and world.decide(lambda: 7) == 7 and world.agree("x") == "x"
    assert torch.equal(world.own_rows(losses, 2), losses[:2])
    assert world.gather_rows(losses, 4, 3) is losses and world.gather(5) == [5]


def test_scoring_bytes_count_the_quantized_matrices_in_one_byte(tiny_llama: Path) -> None:
    # tiny llama: per layer q 64x64, k and v 32x64, o 64x64, gate, up and down 96x64 (30,720), two
    # layers; embeddings and head 320x64 each, 5 norms of 64
    assert checkpoint_param_split(tiny_llama) == (61_440, 41_280)
    assert scoring_bytes(61_440, 41_280, "int8") == 61_440 + 2 * 41_280
    assert scoring_bytes(61_440, 41_280, "fp32") == 4 * 102_720
    # Llama-2-7B: 6.48e9 in the layers' matrices, 0.26e9 in embeddings, head and norms
    assert scoring_bytes(6_476_005_376, 262_410_240, "int8") == 7_000_825_856
    assert scoring_bytes(6_476_005_376, 262_410_240, "bf16") == 13_476_831_232


def test_a_model_that_one_gpu_holds_gets_a_replica_on_each() -> None:
    seven_b = 7 * GB  # int8, 9.45 GB with the margin
    assert plan_placement(4, seven_b, [80 * GB] * 4) == Placement(replicas=4)
    assert plan_placement(2, seven_b, [80 * GB, int(seven_b * (1 + ACTIVATION_MARGIN))]) == Placement(
        replicas=2
    )


def test_a_70b_at_int8_gets_a_replica_per_h200_and_is_spread_over_two_h100s() -> None:
    # Llama-3-70B: 80 layers of 855,638,016 matrix parameters; 128k-token embeddings and head, norms
    seventy_b = scoring_bytes(68_451_041_280, 2_102_665_216, "int8")
    assert seventy_b == 72_656_371_712  # 98.1 GB with the margin
    assert plan_placement(2, seventy_b, [140 * GB] * 2) == Placement(replicas=2)
    spread = plan_placement(2, seventy_b, [79 * GB] * 2)
    assert spread == Placement(max_memory={0: 58_518_518_518, 1: 58_518_518_518})


def test_a_model_too_large_for_one_gpu_is_spread_within_each_gpus_free_memory() -> None:
    seventy_b = 140 * GB  # bf16; 189 GB with the margin
    layout = plan_placement(4, seventy_b, [80 * GB, 80 * GB, 60 * GB, 60 * GB])
    # each GPU takes weights up to its free memory less the margin: 59.26 + 59.26 + 44.44 + 44.44 GB
    assert layout == Placement(
        replicas=1,
        max_memory={0: 59_259_259_259, 1: 59_259_259_259, 2: 44_444_444_444, 3: 44_444_444_444},
    )
    assert sum(layout.max_memory.values()) >= seventy_b  # type: ignore[union-attr]
    # one GPU short of room for a replica is enough to spread it
    assert plan_placement(2, 10 * GB, [20 * GB, 13 * GB]).max_memory == {0: 14_814_814_814, 1: 9_629_629_629}


def test_a_model_the_gpus_cannot_hold_together_is_refused() -> None:
    with pytest.raises(UsageError, match=r"needs about 189.0 GB .* 2 GPUs have 160.0 GB free"):
        plan_placement(2, 140 * GB, [80 * GB, 80 * GB])


def test_one_gpu_is_the_single_device_job() -> None:
    assert plan_placement(1, 140 * GB, [80 * GB]) == Placement()


def fail_on_rank_one(world: World, emit: Any) -> None:
    """Rank 1 fails while rank 0 waits for it in a collective."""
    if world.rank == 1:
        raise ValueError("rank 1 cannot go on")
    world.gather(0)


@pytest.mark.timeout(120)
def test_a_failed_rank_stops_the_others_and_its_error_is_raised() -> None:
    with pytest.raises(ValueError, match="rank 1 cannot go on"):
        start_ranks(fail_on_rank_one, (), 2, "cpu", lambda event: None)


@pytest.mark.timeout(120)
def test_a_method_that_shares_no_scoring_runs_on_rank_0_alone(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    job = spec(tiny_llama, calibration_file, tmp_path / "o", method="wanda-sp", options={})
    alone, single = prune_replicated(job, 2), prune(job.model_copy(update={"out_dir": tmp_path / "one"}))
    assert alone.replicas == 1
    assert [u.kept for u in alone.units] == [u.kept for u in single.units]
