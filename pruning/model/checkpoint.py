"""Read a safetensors checkpoint tensor by tensor, memory-mapped, without building a model.

The reader reads the file transformers loads: the one config.json names in `transformers_weights`, else
`model.safetensors` where it exists (an index beside it is then ignored, as transformers ignores it),
else the shards `model.safetensors.index.json` names. A checkpoint's file names come from whoever made
it, so each is checked before anything is opened: a single plain file name ending in `.safetensors`,
naming a file directly inside the model folder; anything else is refused as an unsupported model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pruning.checkpoint_config import read_config
from pruning.errors import UnsupportedModelError

INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
SINGLE_NAME = "model.safetensors"
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# characters no file name of a checkpoint has: path separators (POSIX, Windows), a Windows drive's colon
UNSAFE_NAME_CHARS = frozenset("/\\:")
MAX_INDEX_BYTES = 1 << 26  # a shard index maps every tensor to its shard: a few MiB for the largest models
SHOWN_CHARS = 200  # of a refused name quoted back in a message


def plain_file_name(name: object, suffix: str, what: str) -> str:
    """`name` where it is one plain path component ending in `suffix`: no separator, not `.` or `..` nor
    hidden (no leading dot), not absolute, not empty, no NUL or other control character. Else refused:
    `what` says where the name came from."""
    if (
        not isinstance(name, str)
        or not name.endswith(suffix)
        or name.startswith(".")
        or any(char in UNSAFE_NAME_CHARS or ord(char) < 32 or ord(char) == 127 for char in name)
    ):
        raise UnsupportedModelError(
            f"{what} names {_shown(name)}, which is not a plain {suffix} file name in the model "
            "folder; refused"
        )
    return name


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def read_shard_index(model_dir: Path, name: str = INDEX_NAME) -> tuple[dict[str, str], dict[str, Any]]:
    """(weight_map, metadata) of the shard index `name` in `model_dir`, every shard name checked with
    `plain_file_name`."""
    try:
        with (model_dir / name).open("rb") as handle:
            raw = handle.read(MAX_INDEX_BYTES + 1)
    except OSError as err:
        raise UnsupportedModelError(f"{name} cannot be read ({err.strerror or type(err).__name__})") from err
    if len(raw) > MAX_INDEX_BYTES:
        raise UnsupportedModelError(f"{name} is larger than {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, nested or numbered past the parser
        raise UnsupportedModelError(
            f"{name} is not a readable JSON shard index ({type(err).__name__})"
        ) from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UnsupportedModelError(f"{name} has no weight_map of tensor names to shard files")
    for shard in weight_map.values():
        plain_file_name(shard, SHARD_SUFFIX, name)
    metadata = index.get("metadata")
    return dict(weight_map), dict(metadata) if isinstance(metadata, dict) else {}


def explicit_weights_name(model_dir: Path) -> str | None:
    """The weights file config.json names in `transformers_weights` (transformers loads that one before
    any other), checked; None where it names none."""
    if not (model_dir / "config.json").is_file():
        return None
    name = read_config(model_dir).get("transformers_weights")
    if name is None:
        return None
    suffix = INDEX_SUFFIX if isinstance(name, str) and name.endswith(INDEX_SUFFIX) else SHARD_SUFFIX
    return plain_file_name(name, suffix, "config.json's transformers_weights")


def check_checkpoint_files(model_dir: Path) -> str | None:
    """Refuse a checkpoint whose weight file names (config.json's `transformers_weights`, those of the
    shard indexes) are anything but plain file names, so that they name files directly inside
    `model_dir`: before transformers or the export opens any of them. Every index present is checked,
    read or not. Returns config.json's `transformers_weights`."""
    explicit = explicit_weights_name(model_dir)
    for index in {INDEX_NAME, explicit or INDEX_NAME}:
        if index.endswith(INDEX_SUFFIX) and (model_dir / index).is_file():
            read_shard_index(model_dir, index)
    return explicit


def _refuse_missing(model_dir: Path, name: str, what: str) -> None:
    """Refuse `name` (a plain file name, so directly inside the folder) unless it is a file there; the
    file itself may be a symlink, as a Hugging Face cache snapshot's are."""
    if not (model_dir / name).is_file():
        raise UnsupportedModelError(f"{what} names {_shown(name)}, which is not a file in the model folder")


def weights_name(model_dir: Path) -> str | None:
    """The file transformers loads the weights from (see the module's docstring), every name checked;
    None where the folder has no safetensors weights."""
    explicit = check_checkpoint_files(model_dir)
    if explicit is not None:
        _refuse_missing(model_dir, explicit, "config.json's transformers_weights")
        return explicit
    for name in (SINGLE_NAME, INDEX_NAME):
        if (model_dir / name).is_file():
            return name
    return None


class CheckpointReader:
    """The tensors of a checkpoint, shard by shard; only the tensor being read is materialised."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        name = weights_name(self.model_dir)
        if name is None:
            raise FileNotFoundError(f"{self.model_dir} has no safetensors weights ({SINGLE_NAME} or index)")
        if name.endswith(INDEX_SUFFIX):
            self.weight_map, self.index_metadata = read_shard_index(self.model_dir, name)
            for shard in sorted(set(self.weight_map.values())):
                _refuse_missing(self.model_dir, shard, name)
            self.sharded = True
        else:
            with safe_open(self.model_dir / name, framework="pt") as handle:
                self.weight_map = dict.fromkeys(handle.keys(), name)
            self.index_metadata = {}
            self.sharded = False

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def shard_tensors(self, shard: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor stored in `shard`, in file order."""
        with safe_open(self.model_dir / shard, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, handle.get_tensor(name)

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.model_dir / self.weight_map[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def header(self, name: str) -> tuple[list[int], str]:
        """(shape, safetensors dtype such as "BF16") of a stored tensor, read from the header only."""
        with safe_open(self.model_dir / self.weight_map[name], framework="pt") as handle:
            tensor = handle.get_slice(name)
            return tensor.get_shape(), tensor.get_dtype()

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of a tensor, from the safetensors header (no tensor is read)."""
        return SAFETENSORS_DTYPES[self.header(name)[1]]

    def find(self, suffix: str) -> str | None:
        """The stored name ending in `suffix` (module names may lack or add a prefix)."""
        if suffix in self.weight_map:
            return suffix
        matches = [
            name for name in self.weight_map if name.endswith("." + suffix) or suffix.endswith("." + name)
        ]
        return matches[0] if len(matches) == 1 else None
