from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pruning.cli import main
from pruning.report import PruneReport
from tests.hostile import assert_no_foreign_code, foreign_code_model, hostile_index_model, sha256, victim_file
from tests.tiny import make_tiny_causal_lm

REPO = Path(__file__).resolve().parents[2]


def fwdprune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pruning", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_prune_prints_the_summary_table(tiny_llama: Path, calibration_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fwdprune(
        "prune",
        "--model",
        str(tiny_llama),
        "--data",
        str(calibration_file),
        "--sparsity",
        "0.3",
        "--out",
        str(out),
        "--seq-len",
        "32",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--num-samples",
        "8",
        "--eval-samples",
        "4",
        "--options",
        "rounds=2",
        "--options",
        "samples_per_round=16",
        "--options",
        "scoring_sequences=2,masks_per_forward=8",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "[fwdprune] load" in result.stderr and "[fwdprune] done" in result.stderr
    report = PruneReport.read(out / "pruning_report.json")
    assert report.settings["options"]["rounds"] == 2 and report.settings["options"]["masks_per_forward"] == 8
    lines = result.stdout.splitlines()
    assert re.match(r"\s+before\s+after\s*$", lines[0])
    rows = {re.split(r"\s{2,}", line.strip())[0]: line.split()[-2:] for line in lines[1:5]}
    params = report.params
    assert rows["parameters (total)"] == [f"{params.total_before:,}", f"{params.total_after:,}"]
    assert rows["parameters (prunable)"] == [
        f"{params.prunable_before:,}",
        f"{params.prunable_after:,}",
    ]
    ppl = report.perplexity
    before, after = (float(x) for x in rows["perplexity (held-out)"])
    assert before == pytest.approx(ppl.before, abs=1e-3) and after == pytest.approx(ppl.after, abs=1e-3)
    loss = next(v for k, v in rows.items() if k.startswith("calibration loss"))
    assert float(loss[0]) == pytest.approx(report.calibration_loss.before, abs=1e-4)
    assert (
        f"sparsity: target 0.300, achieved {report.sparsity.achieved:.4f} | method bonsai | fp32 on cpu"
        in lines[5]
    )
    widths = ", ".join(
        f"{la.num_key_value_heads}/{la.num_attention_heads}/{la.intermediate_size}" for la in report.layers
    )
    assert lines[6] == f"kept per layer (kv groups / heads / MLP channels): {widths}"
    assert lines[7] == f"report: {out / 'pruning_report.json'}"


def test_bad_data_exits_2_with_a_clear_error(tiny_llama: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "no text field"}\n')
    result = fwdprune(
        "prune",
        "--model",
        str(tiny_llama),
        "--data",
        str(bad),
        "--sparsity",
        "0.3",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.returncode == 2, result.stderr
    assert "error: bad.jsonl line 1: expected an object with a string `text` field" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unsupported_model_and_bad_option_exit_2(calibration_file: Path, tmp_path: Path) -> None:
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = fwdprune(
        "prune",
        "--model",
        str(tmp_path / "gpt2"),
        "--data",
        str(calibration_file),
        "--sparsity",
        "0.3",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert result.returncode == 2 and "error: model_type 'gpt2' is not supported" in result.stderr
    assert "Traceback" not in result.stderr
    result = fwdprune(
        "prune",
        "--model",
        str(tmp_path / "gpt2"),
        "--data",
        str(calibration_file),
        "--sparsity",
        "0.3",
        "--out",
        str(tmp_path / "out"),
        "--options",
        "no_such_option=1",
    )
    assert result.returncode == 2 and "error: invalid settings" in result.stderr
    assert "no_such_option" in result.stderr and "Traceback" not in result.stderr


DEEP = 200_000


@pytest.mark.parametrize(
    "config",
    [
        b"[1, 2]",
        b'"llama"',
        b"null",
        b'{"model_type": ["llama"]}',
        b'{"model_type": {"llama": 1}}',
        b'{"model_type": "llama", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"model_type": "llama", "hidden_size": ' + b"9" * 10_000 + b"}",
        b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 0}',
        b'{"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 5}',
    ],
    ids=["list", "string", "null", "type-list", "type-object", "deep", "huge-integer", "zero-heads", "top-k"],
)
def test_a_malformed_config_exits_2_with_one_line(
    config: bytes, calibration_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_bytes(config)
    args = ["--data", str(calibration_file), "--sparsity", "0.3", "--out", str(tmp_path / "out")]
    code = main(["prune", "--model", str(tmp_path / "model"), *args, "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "config.json" in captured.err or "model_type" in captured.err


def test_a_shard_index_naming_a_file_outside_the_model_exits_2_and_touches_nothing(
    calibration_file: Path, tmp_path: Path
) -> None:
    victim = victim_file(
        tmp_path / "elsewhere", make_tiny_causal_lm(tmp_path / "like", max_shard_size="10MB")
    )
    before = sha256(victim)
    model = hostile_index_model(tmp_path / "evil", str(victim))
    result = fwdprune(
        "prune",
        "--model",
        str(model),
        "--data",
        str(calibration_file),
        "--sparsity",
        "0.3",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        f"error: model.safetensors.index.json names a path ending in {victim.name!r}, which is not a "
        "plain .safetensors file name in the model folder; refused"
    ], result.stderr
    assert result.stdout == ""
    assert sha256(victim) == before


def test_prune_ships_none_of_the_models_code_and_writes_files_0644(
    calibration_file: Path, tmp_path: Path
) -> None:
    model = foreign_code_model(tmp_path / "model")
    out = tmp_path / "out"
    old = os.umask(0o022)  # the CLI's process inherits it
    try:
        result = fwdprune(
            "prune",
            "--model",
            str(model),
            "--data",
            str(calibration_file),
            "--sparsity",
            "0.3",
            "--uniform",
            "--out",
            str(out),
            "--seq-len",
            "32",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--num-samples",
            "8",
            "--eval-samples",
            "4",
            "--options",
            "rounds=1,samples_per_round=8,scoring_sequences=2,masks_per_forward=8",
            "--quiet",
        )
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert_no_foreign_code(out, model)
    written = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert any(name.endswith(".safetensors") for name in written)
    assert written == dict.fromkeys(written, 0o644)


def test_recovery_data_without_a_recovery_exits_2(
    calibration_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", str(calibration_file), "--recovery-data", str(calibration_file), "--sparsity", "0.3"]
    code = main(["prune", "--model", str(tmp_path / "no-model"), *args, "--out", str(tmp_path / "out")])
    assert code == 2
    assert (
        "recovery_data is text for the recovery to train on, and recover is none" in capsys.readouterr().err
    )
