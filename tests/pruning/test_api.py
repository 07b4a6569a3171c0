from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruning import PruneSpec, load_pruned, prune
from pruning.methods import METHODS
from pruning.spec import UnsupportedModelError

SMALL = dict(seq_len=32, num_samples=8, eval_samples=4, precision="fp32", device="cpu",
             options=dict(rounds=2, samples_per_round=16, scoring_sequences=2, masks_per_forward=8))


def run(model: Path, data: Path, out: Path, **overrides) -> dict:  # type: ignore[no-untyped-def]
    fields = {**SMALL, **overrides}
    if fields.get("method", "bonsai") != "bonsai":
        fields["options"] = {}
    return prune(PruneSpec(model=str(model), data=data, sparsity=fields.pop("sparsity", 0.4), out_dir=out,
                           **fields))


def test_report_and_checkpoint(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    report = prune(PruneSpec(model=str(tiny_models["llama"]), data=calibration_file, sparsity=0.4,
                             out_dir=tmp_path / "out", **SMALL), on_event=events.append)
    assert json.loads((tmp_path / "out" / "pruning_report.json").read_text()) == report
    sparsity = report["sparsity"]
    assert abs(sparsity["achieved"] - 0.4) <= sparsity["max_unit_fraction"]
    params = report["params"]
    assert params["prunable_before"] - params["prunable_after"] == pytest.approx(
        sparsity["achieved"] * params["prunable_before"])
    compact = load_pruned(tmp_path / "out")
    assert sum(p.numel() for p in compact.parameters()) == params["total_after"]
    assert math.isfinite(report["perplexity"]["before"]) and math.isfinite(report["perplexity"]["after"])
    assert report["forward_tokens"] > 0 and report["forward_passes"] > 0
    assert set(report["stage_s"]) >= {"load", "data", "scoring", "export"}
    assert len(report["units"]) == sum(1 for _ in report["units"]) and "importance" in report["units"][0]
    assert len(report["method_details"]["rounds"]) == 2
    stages = [e["stage"] for e in events if e["type"] == "stage"]
    assert stages[0] == "load" and stages[-1] == "done"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["fraction"] == 1.0 and progress[-1]["rounds"] == 2


def test_same_seed_same_result(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    first = run(tiny_models["qwen2"], calibration_file, tmp_path / "a")
    second = run(tiny_models["qwen2"], calibration_file, tmp_path / "b")
    assert [u["kept"] for u in first["units"]] == [u["kept"] for u in second["units"]]
    assert first["perplexity"]["after"] == second["perplexity"]["after"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_uniform(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path,
                              method: str) -> None:
    report = run(tiny_models["mistral"], calibration_file, tmp_path / method, method=method, uniform=True)
    widths = {(la["num_key_value_heads"], la["intermediate_size"]) for la in report["layers"]}
    assert len(widths) == 1
    AutoModelForCausalLM.from_pretrained(tmp_path / method)  # stock config, no remote code


def test_int8_on_cpu_close_to_fp32(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    report = run(tiny_models["llama"], calibration_file, tmp_path / "int8", precision="int8")
    assert report["precision"] == "int8"
    compact = load_pruned(tmp_path / "int8", dtype=torch.float32)
    ids = torch.randint(0, 320, (1, 16))
    assert torch.isfinite(compact(ids).logits).all()
    # int8 scoring perturbs losses only slightly: perplexities agree within a few percent
    fp32 = run(tiny_models["llama"], calibration_file, tmp_path / "fp32")
    assert report["perplexity"]["before"] == pytest.approx(fp32["perplexity"]["before"], rel=0.05)


def test_unsupported_architecture_refused_before_loading(tmp_path: Path, calibration_file: Path) -> None:
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="supported model types: llama, mistral, qwen2, qwen3"):
        prune(model=str(tmp_path / "gpt2"), data=calibration_file, sparsity=0.3, out_dir=tmp_path / "o")
