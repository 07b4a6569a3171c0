"""Read a safetensors checkpoint tensor by tensor, memory-mapped, without building a model.

The reader reads the file transformers loads, every file name checked before anything is opened
(`pruning.checkpoint_files`, which finds and checks them without torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from pruning.checkpoint_files import (
    INDEX_NAME,
    INDEX_SUFFIX,
    SINGLE_NAME,
    check_checkpoint_files,
    plain_file_name,
    read_shard_index,
    refuse_missing,
    weights_name,
)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


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
                refuse_missing(self.model_dir, shard, name)
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


__all__ = [
    "INDEX_NAME",
    "SAFETENSORS_DTYPES",
    "SINGLE_NAME",
    "CheckpointReader",
    "check_checkpoint_files",
    "plain_file_name",
    "read_shard_index",
    "weights_name",
]
