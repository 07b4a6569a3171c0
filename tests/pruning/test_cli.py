from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fwdprune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pruning", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_prune_prints_summary(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    result = fwdprune("prune", "--model", str(tiny_models["qwen3"]), "--data", str(calibration_file),
                      "--sparsity", "0.3", "--out", str(tmp_path / "out"), "--seq-len", "32",
                      "--num-samples", "8", "--eval-samples", "4", "--quiet",
                      "-o", "rounds=1", "-o", "samples_per_round=8", "-o", "scoring_sequences=2")
    assert result.returncode == 0, result.stderr
    assert "parameters (prunable)" in result.stdout and "achieved 0.3" in result.stdout
    assert (tmp_path / "out" / "pruning_report.json").is_file()


def test_bad_data_exits_2_without_traceback(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "no text field"}\n')
    result = fwdprune("prune", "--model", str(tiny_models["llama"]), "--data", str(bad), "--sparsity", "0.3",
                      "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_bad_option_exits_2(tiny_models: dict[str, Path], calibration_file: Path, tmp_path: Path) -> None:
    result = fwdprune("prune", "--model", str(tiny_models["llama"]), "--data", str(calibration_file),
                      "--sparsity", "0.3", "--out", str(tmp_path / "out"), "-o", "no_such_option=1")
    assert result.returncode == 2 and "no_such_option" in result.stderr
