from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import FAMILY_CONFIGS, make_tiny_causal_lm, write_calibration_jsonl


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny_causal_lm(root / family, family) for family in FAMILY_CONFIGS}


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibration_jsonl(tmp_path_factory.mktemp("data") / "calib.jsonl")
