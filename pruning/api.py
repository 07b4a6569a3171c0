"""`prune(spec)`: the job's stages in order (`pruning.stages`), from a model on disk to a compact one."""

from __future__ import annotations

from typing import Any

from pruning import stages
from pruning.spec import PruneSpec
from pruning.stages import EventSink


def prune(spec: PruneSpec | None = None, on_event: EventSink | None = None, **fields: Any) -> dict[str, Any]:
    """Prune `spec.model` to `spec.sparsity` and write the compact checkpoint and report to `spec.out_dir`.

    Accepts a PruneSpec or its fields as keywords: prune(model=..., data=..., sparsity=0.5, out_dir=...).
    `on_event` receives stage, progress, warning and metric events as dicts. Returns the report.
    """
    spec = spec or PruneSpec(**fields)
    run = stages.prepare(spec, on_event or (lambda event: None))
    with run.installed():  # unit masks and compensation on the model while units are chosen and measured
        result = stages.score(run)
        stages.compensate(run, result.keep)
        pruned = stages.evaluate(run, result.keep)
    stages.export(run, result.keep)
    return stages.report(run, result, pruned)
