"""The job's plan: how long each stage should take, from the rate the dense evaluation ran at."""

from __future__ import annotations

from pruning.compensation.least_squares import LS_FIT_FORWARDS
from pruning.engine.run import Run
from pruning.recovery.recover import JUDGE_MAX

# forward-pass equivalents per token the recovery trains on: distill runs the dense teacher, the student
# and its backward (about two forwards); zo the teacher and the student twice; local each block's forward
# and backward on the pruned stream, its changes fused into the kept part of each map (about two forwards
# of the blocks), then moves the dense and pruned streams of its text on, without the LM head
RECOVERY_FORWARDS = {"distill": 4.0, "zo": 3.0, "local": 3.5, "local-zo": 4.0}

# stages a job with several sizes runs once per size
PER_SIZE = {"search", "compensate", "recover", "evaluate_pruned", "export"}


def plan_job(run: Run) -> float:
    """Announce how long each remaining stage should take; returns the whole job's expected seconds."""
    monitor, progress, spec = run.instruments.monitor, run.instruments.progress, run.spec
    tokens_per_s = monitor.forward_tokens["evaluate_dense"] / max(monitor.stage_s["evaluate_dense"], 1e-9)
    calibration = run.subject.data.calibration
    work = run.method.planned_work(
        int(calibration.shape[0]),
        spec.seq_len,
        refit=run.compensator.name == "ls",
        replicas=run.world.size,
        units=run.space.size,
    )
    fitting = {"ls": LS_FIT_FORWARDS, "bias": 1.0}.get(run.compensator.name, 0.0) * float(calibration.numel())
    recovery = recovery_work(run)
    seconds = {
        stage: tokens / tokens_per_s
        for stage, tokens in {**work, "compensate": fitting, "recover": recovery}.items()
        if tokens
    }
    if spec.recover_time is not None and "recover" in seconds:  # training stops then, judgments aside
        seconds["recover"] = min(seconds["recover"], spec.recover_time + monitor.stage_s["evaluate_dense"])
    seconds["evaluate_pruned"] = monitor.stage_s["evaluate_dense"]
    seconds["export"] = monitor.stage_s["load"]  # reads the same shards, writes less
    for stage in PER_SIZE & set(seconds):
        seconds[stage] *= len(spec.targets)
    limit = spec.time_bound_s
    if limit is not None and run.method.paced_by_deadline:
        # the rounds take what the limit leaves (time_limit), or at most that (max_time); they are sized
        # as they go
        others = sum(v for k, v in seconds.items() if k != "scoring") + sum(monitor.stage_s.values())
        room = max(limit - others, 0.0)
        seconds["scoring"] = room if progress.fill_to_deadline else min(seconds.get("scoring", 0.0), room)
    progress.set_plan(seconds, budget=run.budget, time_limit_s=limit)
    if limit is not None and progress.expected_s() > 1.1 * limit:
        run.instruments.warn(
            f"this job is expected to take {progress.expected_s():.0f} s, "
            f"more than its time limit of {limit:.0f} s"
        )
    return progress.expected_s()


def recovery_work(run: Run) -> float:
    """Forward-token equivalents of the recovery stage: its training, its judgments before and after,
    and the evaluation of the model before it."""
    spec = run.spec
    if spec.recover == "none":
        return 0.0
    forwards = sum(RECOVERY_FORWARDS[part] for part in spec.recover.split("+"))
    training = forwards * spec.recovery_tokens(run.budget)
    return training + 2 * JUDGE_MAX * spec.seq_len + float(run.subject.data.evaluation.numel())
