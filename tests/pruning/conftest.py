"""Session fixtures: each tiny family is built once, the calibration file written once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pruning.measure.objectives import make_objective
from pruning.measure.probe import CalibrationProbe, OutputWeights
from pruning.model.adapters import adapter_for
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from tests.tiny import FAMILY_CONFIGS, TinyModel, make_tiny_causal_lm, write_calibration_jsonl

FAMILIES = sorted(FAMILY_CONFIGS)
# the families shaped like Llama's tests assume: several KV groups per layer, a dense MLP in every layer
# (the others have tests of their own under tests/pruning/model/adapters/)
MULTI_GROUP_DENSE_FAMILIES = [
    family
    for family in FAMILIES
    if FAMILY_CONFIGS[family].get("num_key_value_heads", 2) >= 2
    and not {"num_experts", "num_local_experts"} & set(FAMILY_CONFIGS[family])
]
CPU = torch.device("cpu")
ProbeFactory = Callable[[UnitMasks, torch.Tensor], CalibrationProbe]


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
def llama_fp32(tiny_llama: Path) -> TinyModel:
    """Tiny llama in fp32 on the CPU with its adapter and unit space; tests must not modify the model."""
    loaded = load_model(tiny_llama, "fp32", CPU)
    adapter = adapter_for("llama")
    return TinyModel(loaded.model, adapter, build_unit_space(loaded.model, adapter, None))


@pytest.fixture(scope="session")
def llama_ids(llama_fp32: TinyModel) -> torch.Tensor:
    """[8, 16] random token ids for tiny llama (tests must not modify them)."""
    vocab = llama_fp32.model.config.vocab_size
    return torch.randint(0, vocab, (8, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def llama_probe(tiny_llama: Path, llama_fp32: TinyModel) -> ProbeFactory:
    """A real CalibrationProbe on tiny llama in fp32 (lm objective, batches of 3) for given masks and
    calibration token ids: `llama_probe(masks, ids)`."""
    model, adapter, _ = llama_fp32

    def build(masks: UnitMasks, calibration: torch.Tensor) -> CalibrationProbe:
        objective = make_objective("lm", model, adapter, CPU, masks)
        return CalibrationProbe(
            objective, masks, OutputWeights(CheckpointReader(tiny_llama)), calibration, batch_size=3
        )

    return build
