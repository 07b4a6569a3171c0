"""`pruning.prune` end to end on tiny checkpoints: report, determinism, every method, int8, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

import pruning.engine.stages
from pruning import PruneSpec, load_pruned, prune
from pruning.errors import DataError, UnsupportedModelError
from pruning.methods.registry import METHODS
from pruning.model.data import load_calibration
from pruning.model.masking import UnitMasks
from pruning.report import PruneReport
from tests.tiny import TinyModel

CPU = torch.device("cpu")
BONSAI = dict(rounds=2, samples_per_round=16, scoring_sequences=2, masks_per_forward=8)
SMALL: dict[str, Any] = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu")


class BonsaiRun(NamedTuple):
    """One tiny bonsai job shared by the tests of its report: the report, the output, every event."""

    report: PruneReport
    out: Path
    events: list[Any]


def run(model: Path, data: Path, out: Path, on_event: Any = None, **overrides: Any) -> Any:
    fields = {**SMALL, "sparsity": 0.4, **overrides}
    if fields.get("method", "bonsai") == "bonsai":
        fields.setdefault("options", BONSAI)
    return prune(PruneSpec(model=str(model), data=data, out_dir=out, **fields), on_event=on_event)


def keep_of(report: PruneReport) -> torch.Tensor:
    return torch.tensor([u.kept for u in report.units])


def compact_perplexity(out: Path, calibration_file: Path) -> float:
    """Perplexity of the exported checkpoint on the same held-out sequences the report used, computed
    here from plain logits (exp of the mean next-token NLL over all evaluation tokens)."""
    model = load_pruned(out, dtype=torch.float32)
    ids = load_calibration(AutoTokenizer.from_pretrained(out), calibration_file, 32, 8, 4).evaluation
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return math.exp(float(nll.double().mean()))


@pytest.fixture(scope="module")
def bonsai_run(
    tiny_llama: Path, calibration_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> BonsaiRun:
    out = tmp_path_factory.mktemp("bonsai") / "out"
    events: list[Any] = []
    report = run(tiny_llama, calibration_file, out, on_event=events.append)
    return BonsaiRun(report, out, events)


def test_report_contents(bonsai_run: BonsaiRun, llama_fp32: TinyModel) -> None:
    report, out, _ = bonsai_run
    _, _, space = llama_fp32
    written = json.loads((out / "pruning_report.json").read_text())
    assert written == json.loads(report.to_json())
    assert {
        "params",
        "sparsity",
        "perplexity",
        "calibration_loss",
        "stage_s",
        "total_s",
        "forward_passes",
        "forward_tokens",
        "units",
        "layers",
        "method_details",
        "settings",
    } <= set(written)
    assert "embedding_cosine" not in written and "recovery" not in written
    assert (report.method, report.precision, report.device, report.uniform) == (
        "bonsai",
        "fp32",
        "cpu",
        False,
    )
    sparsity, params = report.sparsity, report.params
    assert sparsity.target == 0.4
    assert sparsity.max_unit_fraction == pytest.approx(6144 / float(space.params.sum()))
    assert abs(sparsity.achieved - 0.4) <= sparsity.max_unit_fraction
    keep = keep_of(report)
    assert params.prunable_before == int(space.params.sum())
    assert params.prunable_after == int(space.params[keep].sum())
    assert params.prunable_before - params.prunable_after == pytest.approx(
        sparsity.achieved * params.prunable_before
    )
    assert params.total_before - params.total_after == params.prunable_before - params.prunable_after
    ppl = report.perplexity
    assert math.isfinite(ppl.before) and math.isfinite(ppl.after) and ppl.before > 1.0
    assert ppl.eval_source == "held-out" and ppl.eval_tokens == 4 * 32
    assert set(report.stage_s) >= {
        "load",
        "data",
        "evaluate_dense",
        "scoring",
        "evaluate_pruned",
        "export",
    }
    assert all(v >= 0 for v in report.stage_s.values())
    assert report.forward_tokens > 0 and report.forward_passes > 0
    # 2 rounds x 16 sub-models on 2 sequences of 32, plus activation passes and evaluations
    assert report.forward_tokens >= 2 * 16 * 2 * 32
    units = report.units
    assert len(units) == space.size == 100
    assert [u.kind for u in units[:3]] == ["attn", "attn", "mlp"]
    assert [(u.layer, u.index) for u in units[49:53]] == [(0, 47), (1, 0), (1, 1), (1, 0)]
    assert all(math.isfinite(u.importance) for u in units)
    assert len({u.importance for u in units}) > 10  # estimated, not constant
    assert len(report.method_details["rounds"]) == 2
    assert [(la.num_key_value_heads, la.intermediate_size) for la in report.layers] == [
        (s.num_kv_heads, s.intermediate) for s in space.kept_shapes(keep)
    ]


def test_events(bonsai_run: BonsaiRun) -> None:
    report, _, events = bonsai_run
    stages = [e["stage"] for e in events if e["type"] == "stage"]
    assert stages == ["load", "data", "evaluate_dense", "scoring", "evaluate_pruned", "export", "done"]
    # the plan (the budget and the expected time of every stage left) comes once the dense model is measured
    plan = next(e for e in events if e["type"] == "plan")
    assert events.index(plan) < events.index({"type": "stage", "stage": "scoring"})
    assert plan["budget"] == "fast" and plan["time_limit_s"] is None and plan["expected_s"] > 0
    assert {"scoring", "search", "evaluate_pruned", "export"} <= set(plan["stage_s"])
    # progress covers the whole job: every stage from scoring on, the split search included, in order
    progress = [e for e in events if e["type"] == "progress"]
    seen = [e["stage"] for i, e in enumerate(progress) if i == 0 or e["stage"] != progress[i - 1]["stage"]]
    assert seen == ["scoring", "search", "evaluate_pruned", "export", "done"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and progress[-1]["eta_s"] == 0.0
    assert all(e["eta_s"] >= 0 for e in progress)
    assert all(e["rounds"] == 2 for e in progress if e["stage"] == "scoring" and "rounds" in e)
    metrics = {e["name"] for e in events if e["type"] == "metric"}
    assert metrics == {"perplexity_before", "perplexity_after"}
    budget = report.budget
    assert (budget.asked, budget.name, budget.time_limit_s) == ("auto", "fast", None)
    assert budget.planned_s > 0 and budget.actual_s >= report.total_s
    assert report.settings["options"]["split_candidates"] == 0  # the fast budget's, under the given ones
    assert report.settings["options"]["rounds"] == 2


def test_exported_checkpoint_computes_the_reported_perplexity(
    bonsai_run: BonsaiRun, calibration_file: Path
) -> None:
    report, out, _ = bonsai_run
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)
    compact = load_pruned(out)
    assert sum(p.numel() for p in compact.parameters()) == report.params.total_after


def test_same_seed_same_result(
    bonsai_run: BonsaiRun, tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    first, _, _ = bonsai_run
    second = run(tiny_llama, calibration_file, tmp_path / "again")
    assert [u.kept for u in first.units] == [u.kept for u in second.units]
    assert [u.importance for u in first.units] == [u.importance for u in second.units]
    assert first.perplexity == second.perplexity
    other = run(tiny_llama, calibration_file, tmp_path / "seed1", seed=1)
    assert [u.importance for u in first.units] != [u.importance for u in other.units]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_every_method(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path, method: str, uniform: bool
) -> None:
    family = "llama"
    out = tmp_path / method
    report = run(tiny_models[family], calibration_file, out, method=method, uniform=uniform)
    assert report.method == method
    keep = keep_of(report)
    assert 0 < int((~keep).sum()) < keep.numel()
    assert math.isfinite(report.perplexity.after)
    if uniform:
        widths = {(la.num_key_value_heads, la.intermediate_size) for la in report.layers}
        assert len(widths) == 1
        AutoModelForCausalLM.from_pretrained(out)  # stock config, no remote code
        assert not (out / "modeling_fwdprune.py").exists()
    else:
        assert abs(report.sparsity.achieved - 0.4) <= report.sparsity.max_unit_fraction
    # the checkpoint computes what the masked (and, for flap, bias-compensated) model was scored as
    assert compact_perplexity(out, calibration_file) == pytest.approx(report.perplexity.after, rel=1e-5)
    expected_compensation = "bias" if METHODS[method].default_compensation == "bias" else "none"
    assert report.compensation == expected_compensation


@pytest.mark.parametrize("family", ["qwen3", "mistral"])
def test_bias_compensation_per_family(
    tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path, family: str
) -> None:
    events: list[Any] = []
    report = run(
        tiny_models[family],
        calibration_file,
        tmp_path / "o",
        on_event=events.append,
        method="flap",
        compensate="bias",
    )
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    if family == "mistral":  # no bias switch in the stock config
        assert report.compensation == "none" and warnings and "cannot carry output biases" in warnings[0]
    else:
        assert report.compensation == "bias" and not warnings
    got = compact_perplexity(tmp_path / "o", calibration_file)
    assert got == pytest.approx(report.perplexity.after, rel=1e-5)


def test_time_limit_sizes_the_rounds_to_end_the_job_within_it(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    limit = 12.0
    events: list[Any] = []
    options = {"rounds": 2, "scoring_sequences": 2, "masks_per_forward": 8}
    report = run(
        tiny_llama, calibration_file, tmp_path / "o", events.append, time_limit=limit, options=options
    )
    budget = report.budget
    assert budget.time_limit_s == limit and budget.name == "fast"
    # the whole job, export included, ends within the limit, and used it: far more sub-models than the
    # fast budget's 64 a round (a 2-layer model scores thousands in a few seconds)
    assert budget.actual_s <= 1.1 * limit
    assert budget.actual_s >= 0.5 * limit
    sub_models = [entry["sub_models"] for entry in report.method_details["rounds"]]
    assert len(sub_models) == 2 and min(sub_models) > 64 and all(n % 2 == 0 for n in sub_models)
    plans = [e for e in events if e["type"] == "plan"]
    assert plans[0]["time_limit_s"] == limit and plans[0]["expected_s"] == pytest.approx(limit, rel=0.1)
    # each round is sized when it starts, and scores at most that many (fewer if the pace falls behind)
    planned = [p["sub_models_per_round"] for p in plans[1:]]
    assert len(planned) == 2 and all(got <= asked for got, asked in zip(sub_models, planned, strict=True))


def test_a_time_limit_and_a_fixed_sub_model_count_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="time_limit sizes samples_per_round"):
        PruneSpec(
            model="m",
            data=tmp_path / "d.jsonl",
            out_dir=tmp_path / "o",
            sparsity=0.3,
            time_limit="10m",
            options={"samples_per_round": 64},
        )
    assert (
        PruneSpec(
            model="m", data=tmp_path / "d.jsonl", out_dir=tmp_path / "o", sparsity=0.3, time_limit="1h30m"
        ).time_limit
        == 5400.0
    )


def test_int8_on_cpu(llama_fp32: TinyModel, tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    model, _, space = llama_fp32
    report = run(tiny_llama, calibration_file, tmp_path / "int8", precision="int8")
    assert report.precision == "int8" and report.device == "cpu"
    assert abs(report.sparsity.achieved - 0.4) <= report.sparsity.max_unit_fraction
    keep = keep_of(report)
    compact = load_pruned(tmp_path / "int8", dtype=torch.float32)
    ids = torch.randint(1, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    masks = UnitMasks(space)
    with torch.no_grad():
        with masks.installed():
            masks.set(keep.double())
            masked = model(ids).logits
        logits = compact(ids).logits
    # the export slices the original weights, so it matches the fp32 masked model; int8 only chose units
    assert torch.allclose(logits, masked, atol=1e-3, rtol=0)
    # and the int8 masked model's perplexity (in the report) is close to the compact model's
    fp32_ppl = compact_perplexity(tmp_path / "int8", calibration_file)
    assert report.perplexity.after == pytest.approx(fp32_ppl, rel=0.1)


def test_unsupported_architecture_refused_before_loading(
    tmp_path: Path, calibration_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(pruning.engine.stages, "load_model", fail)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(
        UnsupportedModelError, match="'gpt2' is not supported; supported model types: .*llama"
    ):
        prune(model=str(tmp_path / "gpt2"), data=calibration_file, sparsity=0.3, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(sparsity=0.0), "sparsity"),
        (dict(sparsity=0.95), "sparsity"),
        (dict(options={"rounds": 0}), "rounds"),
        (dict(options={"no_such": 1}), "no_such"),
        (dict(method="random", options={"rounds": 2}), "rounds"),
        (dict(method="magnitude"), "method"),
        (dict(seq_len=4), "seq_len"),
    ],
)
def test_spec_validation(fields: dict[str, Any], message: str, tmp_path: Path) -> None:
    base = dict(model="m", data=tmp_path / "d.jsonl", sparsity=0.3, out_dir=tmp_path / "o")
    with pytest.raises(ValidationError, match=message):
        PruneSpec(**{**base, **fields})


@pytest.mark.parametrize("uniform", [False, True])
def test_widths_are_chosen_in_the_multiples_asked_for(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, uniform: bool
) -> None:
    report = run(
        tiny_llama,
        calibration_file,
        tmp_path / "o",
        sparsity=0.5,
        uniform=uniform,
        mlp_multiple_of=32,
        kv_multiple_of=2,
        compensate="none",
    )
    widths = [(la.num_key_value_heads, la.intermediate_size) for la in report.layers]
    assert all(kv % 2 == 0 and mlp % 32 == 0 for kv, mlp in widths), widths
    assert report.sparsity.achieved > 0.3  # the budget is still met, in coarser steps
    got = compact_perplexity(tmp_path / "o", calibration_file)
    assert got == pytest.approx(report.perplexity.after, rel=1e-5)  # the export is still exact


def test_bf16_mixed_scores_sub_models_in_bf16_and_measures_in_fp32(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    """The sub-models' losses come from bf16 forwards, so the importances move a little, but they rank
    the units as fp32's do; the evaluations and fits are fp32's exactly."""
    fp32 = run(tiny_llama, calibration_file, tmp_path / "fp32", compensate="none")
    mixed = run(tiny_llama, calibration_file, tmp_path / "mixed", compensate="none", precision="bf16-mixed")
    assert mixed.precision == "bf16-mixed"
    assert mixed.perplexity.before == fp32.perplexity.before
    first = torch.tensor([u.importance for u in fp32.units])
    second = torch.tensor([u.importance for u in mixed.units])
    assert not torch.equal(first, second)
    ranks = [values.argsort().argsort().double() for values in (first, second)]
    assert float(torch.corrcoef(torch.stack(ranks))[0, 1]) > 0.9  # Spearman's rank correlation


@pytest.mark.parametrize("native", [True, False])
def test_bf16_mixed_on_a_cpu_that_emulates_bf16_warns(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(pruning.engine.stages, "cpu_computes_bf16", lambda: native)
    events: list[Any] = []
    report = run(
        tiny_llama,
        calibration_file,
        tmp_path / "o",
        on_event=events.append,
        method="wanda-sp",
        precision="bf16-mixed",
    )
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert report.precision == "bf16-mixed"
    assert any("emulates bf16" in w for w in warnings) is not native


def test_recovery_text_too_short_fails_the_job_before_scoring(
    tiny_llama: Path, calibration_file: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "def add(a, b): return a + b"}) + "\n")
    events: list[Any] = []
    with pytest.raises(DataError, match="short.jsonl gives 0 sequences of 32 tokens to train on"):
        run(
            tiny_llama,
            calibration_file,
            tmp_path / "out",
            events.append,
            recover="distill",
            recovery_data=short,
        )
    stages = [event["stage"] for event in events if event["type"] == "stage"]
    assert "data" in stages and "scoring" not in stages, stages
