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


@pytest.fixture(scope="session")
def llama_ids(llama_fp32) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """[8, 16] random token ids for tiny llama (tests must not modify them)."""
    vocab = llama_fp32[0].config.vocab_size
    return torch.randint(0, vocab, (8, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def llama_context(tiny_llama: Path, llama_fp32):  # type: ignore[no-untyped-def]
    """A real ScoringContext on tiny llama in fp32 (lm objective, batches of 3), for given masks and
    calibration token ids: `llama_context(masks, ids)`."""
    from pruning.checkpoint import CheckpointReader
    from pruning.evaluation import make_objective
    from pruning.methods.base import ScoringContext

    model, adapter, space = llama_fp32

    def build(masks, calibration: torch.Tensor) -> ScoringContext:  # type: ignore[no-untyped-def]
        return ScoringContext(model=model, adapter=adapter, space=space, masks=masks,
                              runner=make_objective("lm", model, adapter, CPU, masks), calibration=calibration,
                              checkpoint=CheckpointReader(tiny_llama), uniform=False, target_params=0.0, seed=0,
                              batch_size=3, allowed_counts={})

    return build
