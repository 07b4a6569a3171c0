"""config.json's sizes against the weights' headers, read without torch: a config stating more layers, a
wider model or a larger vocabulary than its weights hold is refused before anything is built."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pruning.checkpoint_files import check_weights, read_header, stored_tensors
from pruning.errors import UnsupportedModelError
from tests.tiny import make_tiny_causal_lm, make_tiny_encoder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {
        "sharded": make_tiny_causal_lm(root / "sharded"),  # 60 KB shards and an index
        "single": make_tiny_causal_lm(root / "single", max_shard_size="100MB"),  # model.safetensors
        "encoder": make_tiny_encoder(root / "encoder"),
    }


def _with_config(model: Path, out: Path, **changes: Any) -> Path:
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **changes}))
    return out


@pytest.mark.parametrize("name", ["sharded", "single", "encoder"])
def test_a_checkpoint_whose_config_matches_its_weights_passes(models: dict[str, Path], name: str) -> None:
    check_weights(models[name])
    found = stored_tensors(models[name])
    assert found is not None and any(".layers.1." in t or ".layer.1." in t for t in found[0])


@pytest.mark.parametrize("name", ["sharded", "single", "encoder"])
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"num_hidden_layers": 10**6},
            "states num_hidden_layers 1000000, and the weights .* hold the blocks numbered 0-1",
        ),
        ({"num_hidden_layers": 1}, "num_hidden_layers 1"),
        ({"vocab_size": 321}, "vocab_size 321"),
        ({"hidden_size": 128}, "hidden_size 128"),
    ],
    ids=["a-million-layers", "fewer-layers", "vocabulary", "hidden-size"],
)
def test_sizes_the_weights_do_not_have_are_refused(
    models: dict[str, Path], tmp_path: Path, name: str, changes: dict[str, Any], message: str
) -> None:
    model = _with_config(models[name], tmp_path / "model", **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        check_weights(model)


def test_a_folder_without_safetensors_weights_is_left_to_the_loader(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10**6}))
    check_weights(tmp_path)


def _framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "shorter than its header"),
        (struct.pack("<Q", 10**12), "states a header of"),
        (struct.pack("<Q", 100) + b"{}", "ends inside its header"),
        (_framed(b"[1,2]"), "not a JSON object"),
        (_framed(b"\xff\xfe{}"), "no readable safetensors header"),
        (_framed(json.dumps({"w": {"dtype": "F32", "shape": [-1]}}).encode()), "no shape"),
    ],
    ids=["short", "huge-length", "truncated", "an-array", "not-utf8", "negative-shape"],
)
def test_a_header_that_is_not_one_is_an_unsupported_model(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UnsupportedModelError, match=message):
        read_header(path)


def test_the_check_imports_no_torch(models: dict[str, Path]) -> None:
    """The API process runs it at submit, and imports no torch."""
    code = (
        "import sys; from pathlib import Path; from pruning.checkpoint_files import check_weights; "
        f"check_weights(Path({str(models['single'])!r})); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
