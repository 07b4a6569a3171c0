"""Several sizes from one job on a tiny checkpoint: one scoring, a complete checkpoint and report per
size, the curve in `summary.json` and its pictures; the cost and the sizes' agreement with single jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from pruning import PruneSpec, load_pruned
from pruning.export.sizes import curve_table, write_pictures
from pruning.report import PruneReport, SizesSummary
from service.objects.artifacts import describe
from tests.pruning.engine.test_api import BONSAI, compact_perplexity, keep_of, run

SIZES = [0.2, 0.35, 0.5]


class SizesJob(NamedTuple):
    summary: SizesSummary
    out: Path
    events: list[Any]
    single: PruneReport  # the same job at the largest size alone


@pytest.fixture(scope="module")
def sizes_job(tiny_llama: Path, calibration_file: Path, tmp_path_factory: pytest.TempPathFactory) -> SizesJob:
    root = tmp_path_factory.mktemp("sizes")
    events: list[Any] = []
    summary = run(tiny_llama, calibration_file, root / "sizes", on_event=events.append, sparsity=SIZES)
    single = run(tiny_llama, calibration_file, root / "single", sparsity=0.5)
    return SizesJob(summary, root / "sizes", events, single)


def reports_of(job: SizesJob) -> list[PruneReport]:
    return [PruneReport.read(job.out / f"sparsity-{s:g}" / "pruning_report.json") for s in SIZES]


def test_one_checkpoint_per_size(sizes_job: SizesJob, calibration_file: Path) -> None:
    for sparsity, report in zip(SIZES, reports_of(sizes_job), strict=True):
        folder = sizes_job.out / f"sparsity-{sparsity:g}"
        assert report.sparsity.target == sparsity and report.out_dir == str(folder)
        assert abs(report.sparsity.achieved - sparsity) <= report.sparsity.max_unit_fraction
        assert load_pruned(folder, dtype=torch.float32) is not None
        assert compact_perplexity(folder, calibration_file) == pytest.approx(
            report.perplexity.after, rel=1e-3
        )
    assert not (sizes_job.out / "pruning_report.json").exists()  # the reports are the sizes'


def test_summary_curve(sizes_job: SizesJob) -> None:
    summary = sizes_job.summary
    assert json.loads((sizes_job.out / "summary.json").read_text()) == json.loads(summary.to_json())
    assert [size.sparsity for size in summary.sizes] == SIZES
    reports = reports_of(sizes_job)
    for size, report in zip(summary.sizes, reports, strict=True):
        assert size.achieved == report.sparsity.achieved
        assert size.params_after == report.params.total_after
        assert report.perplexity is not None and size.perplexity is not None
        assert (size.perplexity.before, size.perplexity.after) == (
            report.perplexity.before,
            report.perplexity.after,
        )
        assert size.seconds > 0 and size.dir == f"sparsity-{size.sparsity:g}"
    params = [size.params_after for size in summary.sizes]
    assert params == sorted(params, reverse=True)
    assert all((sizes_job.out / name).stat().st_size > 0 for name in ("curve.png", "layers.png"))
    stages = [e["stage"] for e in sizes_job.events if e["type"] == "stage"]
    assert stages.count("scoring") == 1 and stages.count("export") == 3 and stages[-1] == "done"
    table = curve_table(summary)
    assert all(f"sparsity-{s:g}" in table for s in SIZES) and "perplexity after" in table


def test_cost_against_the_largest_alone(sizes_job: SizesJob) -> None:
    """One scoring for three sizes: the rounds are shared, each size adds its split search, compensation,
    evaluation and export. Printed for the record (pytest -s)."""
    tokens, single = sizes_job.summary.forward_tokens, sizes_job.single.forward_tokens
    print(
        f"3 sizes: {tokens} forward tokens, {sizes_job.summary.total_s:.2f} s; "
        f"0.5 alone: {single} tokens, {sizes_job.single.total_s:.2f} s; ratio {tokens / single:.2f}"
    )
    assert tokens <= 1.5 * single


def test_largest_size_quality_as_alone(sizes_job: SizesJob) -> None:
    # the rounds are the single job's (the smaller sizes are snapshots on the way), and the selection in
    # two steps removes what one would: the same units, hence the same perplexity
    largest = reports_of(sizes_job)[-1]
    assert torch.equal(keep_of(largest), keep_of(sizes_job.single))
    assert largest.perplexity.after == pytest.approx(sizes_job.single.perplexity.after, rel=0.02)


def test_smaller_size_close_to_alone(sizes_job: SizesJob, tiny_llama: Path, calibration_file: Path) -> None:
    # a job at 0.2 alone spreads its rounds over 0.2 (re-estimating between slices); the snapshot at 0.2
    # saw fewer re-estimates, so only the quality is compared, and loosely on this tiny random model
    alone = run(tiny_llama, calibration_file, sizes_job.out.parent / "alone-0.2", sparsity=0.2)
    snapshot = reports_of(sizes_job)[0]
    assert snapshot.perplexity.after <= alone.perplexity.after * 1.05


def test_boundary_sizes_keep_the_same_units(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    # 0.25 falls on the end of the first of two rounds toward 0.5: the same rounds as the job at 0.25 alone
    # would not run (its rounds remove 0.125 each), but the 0.5 size is the 0.5 job's exactly
    options = {**BONSAI, "kind_split": "importance"}
    summary = run(tiny_llama, calibration_file, tmp_path / "two", sparsity=[0.25, 0.5], options=options)
    single = run(tiny_llama, calibration_file, tmp_path / "one", sparsity=0.5, options=options)
    largest = PruneReport.read(tmp_path / "two" / "sparsity-0.5" / "pruning_report.json")
    assert torch.equal(keep_of(largest), keep_of(single))
    assert largest.method_details["rounds"] == single.method_details["rounds"]
    assert summary.sizes[0].achieved == pytest.approx(0.25, abs=0.07)


@pytest.mark.parametrize("method", ["wanda-sp", "random"])
def test_scored_once_methods_select_per_size(
    method: str, tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    run(tiny_llama, calibration_file, tmp_path / "two", method=method, sparsity=[0.3, 0.5])
    single = run(tiny_llama, calibration_file, tmp_path / "one", method=method, sparsity=0.5)
    largest = PruneReport.read(tmp_path / "two" / "sparsity-0.5" / "pruning_report.json")
    assert torch.equal(keep_of(largest), keep_of(single))
    scoring = largest.forward_tokens_by_stage["scoring"]
    assert scoring <= single.forward_tokens_by_stage["scoring"]  # scored once for both sizes


def test_single_size_layout_unchanged(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    report = run(tiny_llama, calibration_file, tmp_path / "one", method="random", sparsity=[0.3])
    assert isinstance(report, PruneReport) and report.sparsity.target == 0.3
    assert (tmp_path / "one" / "pruning_report.json").is_file()
    assert not (tmp_path / "one" / "summary.json").exists()
    assert (tmp_path / "one" / "curve.png").is_file()  # one point
    assert not [p for p in (tmp_path / "one").iterdir() if p.is_dir()]


def test_sizes_published_as_artifacts(sizes_job: SizesJob) -> None:
    names = [a["name"] for a in describe(sizes_job.out)]
    assert {"summary.json", "curve.png", "layers.png", "sparsity-0.2/pruning_report.json"} <= set(names)
    assert "sparsity-0.5/config.json" in names and names == sorted(names)


def test_pictures_skipped_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    events: list[Any] = []
    assert write_pictures([], "perplexity", tmp_path, events.append) == []
    assert events[0]["type"] == "warning" and "matplotlib" in events[0]["message"]


def test_sizes_setting() -> None:
    fields: dict[str, Any] = dict(model="m", data=Path("d"), out_dir=Path("o"))
    assert PruneSpec(**fields, sparsity="0.5,0.2,0.35").sparsity == [0.2, 0.35, 0.5]
    assert PruneSpec(**fields, sparsity=[0.4]).sparsity == 0.4
    assert PruneSpec(**fields, sparsity=0.4).targets == [0.4]
    for bad in ([], [0.2, 0.2], [0.2, 0.95]):
        with pytest.raises(ValueError):
            PruneSpec(**fields, sparsity=bad)


def test_command_line_prints_the_curve(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    from tests.pruning.test_cli import fwdprune

    settings = ["--seq-len", "32", "--precision", "fp32", "--num-samples", "8", "--eval-samples", "4"]
    result = fwdprune(
        "prune",
        *("--model", str(tiny_llama), "--data", str(calibration_file), "--out", str(tmp_path / "out")),
        *("--device", "cpu", "--method", "random", "--sparsity", "0.2,0.5", "--quiet", *settings),
    )
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].split()[:2] == ["sparsity", "achieved"]
    assert [row.split()[0] for row in rows[1:3]] == ["0.2", "0.5"] and "sparsity-0.5" in rows[2]
    assert "summary.json" in rows[-1]
