"""Model references: a name resolves under the models dir and never outside it; and what a worker
downloads from the Hub for a job: the files a checkpoint is loaded from, never the repository's weights
in other formats or Llama-3.x's second copy under `original/`."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from service.modelref import FOREIGN_WEIGHTS, ModelRefError, resolve_model

# A Llama-3.1-8B-Instruct repository (`original/` and all), with files other repositories hold beside it
REPOSITORY = [
    ".gitattributes",
    "LICENSE",
    "README.md",
    "USE_POLICY.md",
    "config.json",
    "generation_config.json",
    "model-00001-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "chat_template.jinja",
    "modeling_custom.py",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "pytorch_model-00001-of-00002.bin",
    "training_args.bin",
    "model.pt",
    "flax_model.msgpack",
    "tf_model.h5",
    "model.ckpt",
    "model-q4_k_m.gguf",
    "onnx/model.onnx",
]


def test_a_download_skips_foreign_weights_and_the_original_folder() -> None:
    """The same filter huggingface_hub.snapshot_download applies to `ignore_patterns`."""
    kept = list(filter_repo_objects(REPOSITORY, ignore_patterns=list(FOREIGN_WEIGHTS)))
    assert kept == [
        ".gitattributes",
        "LICENSE",
        "README.md",
        "USE_POLICY.md",
        "config.json",
        "generation_config.json",
        "model-00001-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "chat_template.jinja",
        "modeling_custom.py",
    ]


def test_model_refs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "org" / "m").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (models / "registered").symlink_to(tmp_path / "elsewhere")  # operator-made: allowed
    assert resolve_model("org/m", models) == (models / "org" / "m").resolve()
    assert resolve_model("registered", models) == (tmp_path / "elsewhere").resolve()
    for bad in ("..", "org/..", "/abs", "a\\b", "org//m", ".hidden", ""):
        with pytest.raises(ModelRefError):
            resolve_model(bad, models)
