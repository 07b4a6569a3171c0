"""The checkpoint reader reads what transformers loads, and only files directly inside the model folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning.errors import UnsupportedModelError
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import load_model
from tests.hostile import hostile_index_model, sha256, victim_file
from tests.tiny import make_tiny_causal_lm

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def merged_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose weights are one `model.safetensors`."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("merged") / "llama", "llama", max_shard_size="10MB")


def write_index(model_dir: Path, shards: dict[str, object]) -> None:
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": shards})
    )


HOSTILE_NAMES = [
    "../outside.safetensors",
    "sub/model.safetensors",
    "sub\\model.safetensors",
    "..",
    "",
    ".hidden.safetensors",
    "model\x00.safetensors",
    "C:model.safetensors",
    "model.bin",
    "model.safetensors.index.json",
    None,
    ["model.safetensors"],
]


@pytest.mark.parametrize("name", ["victim", *HOSTILE_NAMES], ids=repr)
def test_an_index_naming_anything_but_a_plain_file_in_the_folder_is_refused(
    merged_llama: Path, tmp_path: Path, name: object
) -> None:
    """Refused though a merged model.safetensors (what transformers loads) lies beside the index, so
    the index would be ignored: a folder whose index points outside itself is not read at all."""
    model = tmp_path / "model"
    shutil.copytree(merged_llama, model)
    victim = victim_file(tmp_path / "elsewhere", merged_llama)
    before = sha256(victim)
    if name == "victim":
        name = str(victim)
    write_index(model, {"model.embed_tokens.weight": name, "lm_head.weight": "model.safetensors"})
    with pytest.raises(UnsupportedModelError, match="model.safetensors.index.json names"):
        CheckpointReader(model)
    with pytest.raises(UnsupportedModelError, match="model.safetensors.index.json names"):
        load_model(model, "fp32", CPU)
    assert sha256(victim) == before


def test_the_hostile_index_of_a_merged_checkpoint_is_refused_before_loading(tmp_path: Path) -> None:
    victim = victim_file(
        tmp_path / "elsewhere", make_tiny_causal_lm(tmp_path / "other", max_shard_size="10MB")
    )
    model = hostile_index_model(tmp_path / "model", str(victim))
    with pytest.raises(UnsupportedModelError, match=victim.name):
        load_model(model, "fp32", CPU)
    with pytest.raises(UnsupportedModelError):
        CheckpointReader(model)


def test_the_merged_file_is_read_where_transformers_reads_it(merged_llama: Path, tmp_path: Path) -> None:
    """model.safetensors and an index both present: transformers loads model.safetensors, and so does
    the reader; the index (here, naming shards of other weights) is ignored."""
    model = tmp_path / "model"
    shutil.copytree(merged_llama, model)
    merged = load_file(model / "model.safetensors")
    other = {name: torch.zeros_like(tensor) for name, tensor in merged.items()}
    save_file(other, str(model / "model-00001-of-00001.safetensors"))
    write_index(model, dict.fromkeys(other, "model-00001-of-00001.safetensors"))
    reader = CheckpointReader(model)
    assert not reader.sharded and reader.shards == ["model.safetensors"]
    assert set(reader.weight_map) == set(merged)
    for name, tensor in merged.items():
        assert torch.equal(reader.get(name), tensor)
    loaded = load_model(model, "fp32", CPU).model
    assert torch.equal(loaded.lm_head.weight, merged["lm_head.weight"])


def test_an_index_naming_a_missing_shard_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00009-of-00009.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="not a file in the model folder"):
        CheckpointReader(model)


def test_a_hugging_face_cache_snapshot_reads_through_its_symlinks(tiny_llama: Path, tmp_path: Path) -> None:
    """A snapshot's files are symlinks to ../../blobs/<hash>: the names are plain, the files outside."""
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    blobs = tmp_path / "models--org--tiny" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in tiny_llama.iterdir():
        blob = blobs / sha256(path)
        shutil.copyfile(path, blob)
        os.symlink(Path("../../blobs") / blob.name, snapshot / path.name)
    reader = CheckpointReader(snapshot)
    original = CheckpointReader(tiny_llama)
    assert reader.sharded and reader.weight_map == original.weight_map
    assert torch.equal(reader.get("lm_head.weight"), original.get("lm_head.weight"))


def test_the_weights_file_config_json_names_is_the_one_read(merged_llama: Path, tmp_path: Path) -> None:
    """config.json's `transformers_weights` names the file transformers loads, before model.safetensors;
    it too must be a plain file name in the folder."""
    model = tmp_path / "model"
    shutil.copytree(merged_llama, model)
    tensors = load_file(model / "model.safetensors")
    save_file({name: t + 1 for name, t in tensors.items()}, str(model / "chosen.safetensors"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "transformers_weights": "chosen.safetensors"}))
    reader = CheckpointReader(model)
    assert reader.shards == ["chosen.safetensors"]
    assert torch.equal(reader.get("lm_head.weight"), tensors["lm_head.weight"] + 1)

    (model / "config.json").write_text(
        json.dumps({**config, "transformers_weights": "../chosen.safetensors"})
    )
    with pytest.raises(UnsupportedModelError, match="transformers_weights"):
        CheckpointReader(model)
    with pytest.raises(UnsupportedModelError, match="transformers_weights"):
        load_model(model, "fp32", CPU)
