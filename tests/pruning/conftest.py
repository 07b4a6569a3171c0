"""Session fixtures: each tiny family is built once, the calibration file written once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import FAMILY_CONFIGS, make_tiny_causal_lm, write_calibration_jsonl

FAMILIES = sorted(FAMILY_CONFIGS)
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> directory of a tiny real checkpoint (sharded safetensors + index + tokenizer)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny_causal_lm(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibration_jsonl(tmp_path_factory.mktemp("data") / "calib.jsonl")


@pytest.fixture(scope="session")
def llama_fp32(tiny_llama: Path):  # type: ignore[no-untyped-def]
    """(model, adapter, unit space) of tiny llama in fp32 on the CPU; tests must not modify the model."""
    from pruning.adapters import adapter_for
    from pruning.loading import load_model
    from pruning.units import build_unit_space

    loaded = load_model(tiny_llama, "fp32", CPU)
    adapter = adapter_for("llama")
    return loaded.model, adapter, build_unit_space(loaded.model, adapter, None)
