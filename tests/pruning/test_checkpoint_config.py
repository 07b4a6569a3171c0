"""What a checkpoint's config.json rules out is refused before any work: by the API at submit
(tests/service/routers/test_hostile_*.py) and by the engine before it loads the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import pruning.engine.stages
from pruning import prune
from pruning.errors import UnsupportedModelError, UsageError
from pruning.export.formats import EXPORTERS, nemotron
from pruning.export.remote_code import modeling_decilm
from pruning.spec import PruneSettings

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 512}


@pytest.mark.parametrize(
    "config",
    [
        LLAMA,
        {**LLAMA, "intermediate_size": 96},
        {**LLAMA, "intermediate_size": 256},
        {**LLAMA, "model_type": "mixtral"},
        {**LLAMA, "model_type": "phi3"},
        {**LLAMA, "model_type": "qwen2"},
    ],
)
def test_nemotron_nas_is_refused_at_submit_as_its_export_refuses_it(config: dict[str, Any]) -> None:
    """The API's torch-free refusal is the one the export makes, with widths the remote code agrees on."""
    assert nemotron.FFN_WIDTH_MULTIPLE == modeling_decilm.FFN_WIDTH_MULTIPLE
    try:
        nemotron.refuse_inexpressible(config)
        outcome = None
    except UsageError as err:
        outcome = str(err)
    settings = PruneSettings(sparsity=0.3, export_format="nemotron-nas")
    if outcome is None:
        EXPORTERS["nemotron-nas"].refuse(config["model_type"], settings, config)
    else:
        with pytest.raises(UsageError, match=outcome):
            EXPORTERS["nemotron-nas"].refuse(config["model_type"], settings, config)


def _with_config(model: Path, out: Path, **changes: Any) -> Path:
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **changes}))
    return out


@pytest.mark.parametrize(
    ("changes", "fields", "error", "message"),
    [
        ({"max_position_embeddings": -1}, {"export_format": "gguf"}, UnsupportedModelError, "max_position"),
        (
            {"max_position_embeddings": 2**70},
            {"export_format": "gguf"},
            UnsupportedModelError,
            "max_position",
        ),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            {"export_format": "gguf"},
            UnsupportedModelError,
            "original_max_position_embeddings",
        ),
        ({"num_experts_per_tok": 9}, {}, UnsupportedModelError, "num_experts_per_tok"),
        ({"num_attention_heads": 0}, {}, UnsupportedModelError, "num_attention_heads"),
        # sizes the weights do not have: read from the safetensors headers, nothing built from them
        ({"num_hidden_layers": 10**6}, {}, UnsupportedModelError, "num_hidden_layers 1000000"),
        ({"vocab_size": 321}, {}, UnsupportedModelError, "vocab_size 321"),
    ],
    ids=[
        "gguf-negative-context",
        "gguf-huge-context",
        "gguf-rope-keys",
        "mixtral-top-k",
        "zero-heads",
        "a-million-layers",
        "a-vocabulary-the-embedding-lacks",
    ],
)
def test_the_engine_refuses_what_the_config_rules_out_before_loading(
    tiny_models: dict[str, Path],
    calibration_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    fields: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(pruning.engine.stages, "load_model", fail)
    family = "mixtral" if "num_experts_per_tok" in changes else "llama"
    model = _with_config(tiny_models[family], tmp_path / "model", **changes)
    with pytest.raises(error, match=message):
        prune(model=str(model), data=calibration_file, sparsity=0.3, out_dir=tmp_path / "out", **fields)
    assert not (tmp_path / "out").exists()
