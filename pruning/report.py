"""What a job returns and writes beside its checkpoint: the typed report, and for several sizes the
summary of the size/quality curve. Pydantic models, serialised once (`to_json`); torch-free, so the
service and the CLI read them without the engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_NAME = "pruning_report.json"
SUMMARY_NAME = "summary.json"
QUALITY_FIGURES = ("perplexity", "embedding_cosine")  # causal LMs, encoders
# every figure a report may carry: encoders also give the least cosine of any sequence
REPORTED_FIGURES = (*QUALITY_FIGURES, "embedding_cosine_min")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Params(Record):
    total_before: int
    total_after: int
    prunable_before: int
    prunable_after: int


class Sparsity(Record):
    target: float
    achieved: float
    max_unit_fraction: float  # the largest unit, as a fraction of the prunable parameters


def _absent(value: Any) -> bool:
    return value is None


class LayerWidths(Record):
    layer: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int  # in a mixture-of-experts layer, each expert's
    num_experts: int | None = Field(None, exclude_if=_absent)  # mixture-of-experts layers only


class ExpertRecord(Record):
    """One expert of a mixture-of-experts layer: its fate, its estimated importance, and the fraction of
    calibration tokens the dense model routes to it (among each token's top k)."""

    layer: int
    index: int  # within its layer, in the original model
    kept: bool
    importance: float
    routing_frequency: float


class QualityFigure(Record):
    """A quality figure (perplexity, or embedding cosine to the dense model) on the evaluation text."""

    before: float
    after: float
    eval_source: str  # "held-out" (the data's sequences after the calibration ones) or the eval file's name
    eval_tokens: int


class CalibrationLoss(Record):
    objective: str
    before: float
    after: float
    sequences: int


class CalibrationData(Record):
    file: str
    sha256: str


class BudgetRecord(Record):
    asked: str
    name: str  # the named budget the job ran at
    time_limit_s: float | None
    planned_s: float
    actual_s: float


class UnitRecord(Record):
    layer: int
    kind: str  # "attn" or "mlp"
    index: int  # within its layer and kind
    params: int
    importance: float
    kept: bool


class RecoveryRecord(Record):
    """What the recovery stage did: its training, and the held-out loss it is judged by before and after
    (rolled back, and so absent from the export, when it did not improve)."""

    method: str  # "distill" or "zo"
    tokens: int  # tokens trained on
    steps: int
    seconds: float
    tokens_per_s: float
    rank: int
    lr: float
    lm_weight: float
    train_sequences: int
    judge_sequences: int
    judge_loss_before: float
    judge_loss_after: float
    rolled_back: bool
    # the job's quality figures on its evaluation text before the recovery (the report's own are after)
    quality_before: dict[str, float] = {}
    first_loss: float  # the training loss of the first and last steps (local: each window's held-out
    last_loss: float  # error relative to its target, before and after its fit, averaged over windows)
    windows: int = 0  # local: blocks fitted, and those whose fit was kept
    windows_kept: int = 0
    # local+distill: each part's own record, in the order they ran (this record sums them up)
    parts: list[RecoveryRecord] = []


class PruneReport(Record):
    """One checkpoint's report: what was asked, what was removed, what it cost and what it changed."""

    model: str
    model_dir: str
    out_dir: str
    method: str
    precision: str
    device: str  # rank 0's (the first GPU of a model spread across several)
    replicas: int  # processes that scored sub-models, a replica of the model on a GPU each
    uniform: bool
    compensation: str
    settings: dict[str, Any]
    params: Params
    sparsity: Sparsity
    layers: list[LayerWidths]
    perplexity: QualityFigure | None = None  # causal LMs
    embedding_cosine: QualityFigure | None = None  # encoders
    embedding_cosine_min: QualityFigure | None = None
    calibration_loss: CalibrationLoss
    calibration_data: CalibrationData
    budget: BudgetRecord
    # wall time and peak memory by stage (`pruning.measure.monitor`)
    stage_s: dict[str, float]
    forward_tokens_by_stage: dict[str, int]
    total_s: float
    peak_gpu_bytes: dict[str, int]
    peak_gpu_reserved_bytes: dict[str, int]
    peak_gpu_bytes_per_device: list[int]
    peak_host_rss_bytes: dict[str, int]
    peak_host_anon_bytes: dict[str, int]
    host_anon_at_start_bytes: dict[str, int]
    host_anon_growth_bytes: dict[str, int]
    forward_passes: int
    forward_tokens: int
    method_details: dict[str, Any]
    recovery: RecoveryRecord | None = None
    units: list[UnitRecord]
    experts: list[ExpertRecord] | None = Field(None, exclude_if=_absent)  # mixture-of-experts models

    @property
    def quality_figure(self) -> str:
        """The report's quality figure: perplexity, or embedding cosine for encoders."""
        return "perplexity" if self.perplexity is not None else "embedding_cosine"

    @property
    def quality(self) -> QualityFigure:
        figure = self.perplexity or self.embedding_cosine
        assert figure is not None, "a report has one quality figure"
        return figure

    def removed_fraction(self, kind: str) -> float:
        """Fraction of a kind's ("attn" or "mlp") prunable parameters removed: how the budget was split."""
        of_kind = [u for u in self.units if u.kind == kind]
        return sum(u.params for u in of_kind if not u.kept) / max(1, sum(u.params for u in of_kind))

    def metrics(self) -> dict[str, Any]:
        """The part kept as a job's metrics by the service (the whole report is an artifact)."""
        return json.loads(self.to_json(include=METRIC_FIELDS))

    def to_json(self, include: set[str] | None = None) -> str:
        return self.model_dump_json(indent=2, include=include, exclude=self._absent_figures())

    def _absent_figures(self) -> set[str]:
        return {name for name in (*REPORTED_FIGURES, "recovery") if getattr(self, name) is None}

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / REPORT_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> PruneReport:
        return cls.model_validate_json(Path(path).read_text())


METRIC_FIELDS = {
    "params",
    "sparsity",
    "perplexity",
    "embedding_cosine",
    "calibration_loss",
    "compensation",
    "recovery",
    "budget",
    "stage_s",
    "total_s",
    "forward_tokens",
    "peak_gpu_bytes",
    "peak_host_rss_bytes",
    "method",
    "precision",
    "device",
}


class Change(Record):
    """A quality figure before and after, as the curve keeps it."""

    before: float
    after: float


class SizeEntry(Record):
    """One point of the size/quality curve: a size's report, and the work that size alone took (its
    selection, compensation, evaluation and export: the scoring is shared)."""

    sparsity: float
    achieved: float
    params_after: int
    prunable_params_after: int
    perplexity: Change | None = None
    embedding_cosine: Change | None = None
    seconds: float
    forward_tokens: int
    dir: str
    layers: list[LayerWidths]

    @classmethod
    def of(cls, report: PruneReport, seconds: float, forward_tokens: int) -> SizeEntry:
        figure = report.quality
        return cls(
            sparsity=report.sparsity.target,
            achieved=report.sparsity.achieved,
            params_after=report.params.total_after,
            prunable_params_after=report.params.prunable_after,
            **{report.quality_figure: Change(before=figure.before, after=figure.after)},
            seconds=round(seconds, 3),
            forward_tokens=forward_tokens,
            dir=Path(report.out_dir).name,
            layers=report.layers,
        )

    def change(self, figure: str) -> Change:
        change = getattr(self, figure)
        assert isinstance(change, Change)
        return change


class SizesSummary(Record):
    """Several sizes from one job: what they share and one entry per size, ascending (`summary.json`)."""

    model: str
    method: str
    out_dir: str
    quality_figure: str
    params_before: int
    scoring_s: float
    total_s: float
    forward_tokens: int  # the job's, counted through its last size
    sizes: list[SizeEntry]

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.to_json(include={"sizes", "scoring_s", "total_s", "forward_tokens", "method"}))

    def to_json(self, include: set[str] | None = None) -> str:
        absent = {
            index: {name for name in QUALITY_FIGURES if getattr(size, name) is None}
            for index, size in enumerate(self.sizes)
        }
        return self.model_dump_json(indent=2, include=include, exclude={"sizes": absent})

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / SUMMARY_NAME
        path.write_text(self.to_json() + "\n")
        return path


JobResult = PruneReport | SizesSummary
