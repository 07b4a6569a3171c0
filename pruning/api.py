"""`prune(spec)`: the job's stages in order (`pruning.stages`), from a model on disk to a compact one."""

from __future__ import annotations

import time
from typing import Any

from pruning import stages
from pruning.spec import PruneSpec
from pruning.stages import EventSink


def prune(spec: PruneSpec | None = None, on_event: EventSink | None = None, **fields: Any) -> dict[str, Any]:
    """Prune `spec.model` to `spec.sparsity` and write the compact checkpoint and report to `spec.out_dir`.
    With several sparsities, one checkpoint and report per size in `spec.out_dir`/sparsity-<fraction>/
    and the curve in `summary.json`, which is returned instead of a report.

    Accepts a PruneSpec or its fields as keywords: prune(model=..., data=..., sparsity=0.5, out_dir=...).
    `on_event` receives stage, progress, warning and metric events as dicts. Returns the report.
    """
    spec = spec or PruneSpec(**fields)
    run = stages.prepare(spec, on_event or (lambda event: None))
    if spec.several_sizes:
        return _prune_sizes(run)
    with run.installed():  # unit masks and compensation on the model while units are chosen and measured
        result = stages.score(run)
        stages.compensate(run, result.keep)
        pruned = stages.evaluate(run, result.keep)
    stages.export(run, result.keep)
    report = stages.report(run, result, pruned)
    stages.picture_single(run, report)
    return report


def _prune_sizes(run: stages.Run) -> dict[str, Any]:
    """Several sizes: one scoring, then each size ascending as a job at that size would end, each in its
    own folder; returns the summary (the size/quality curve) written at the top."""
    began = time.perf_counter()
    with run.installed():
        finishes = stages.score_sizes(run)
    scoring_s = time.perf_counter() - began
    entries = [
        stages.one_size(stages.for_size(run, sparsity), finish)
        for sparsity, finish in zip(run.spec.targets, finishes, strict=True)
    ]
    return stages.summarize_sizes(run, entries, scoring_s)
