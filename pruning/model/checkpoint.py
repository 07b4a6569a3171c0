"""Read a safetensors checkpoint tensor by tensor, memory-mapped, without building a model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
SINGLE_NAME = "model.safetensors"


class CheckpointReader:
    """The tensors of a checkpoint, shard by shard; only the tensor being read is materialised."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        index_path = self.model_dir / INDEX_NAME
        if index_path.is_file():
            index = json.loads(index_path.read_text())
            self.index_metadata: dict[str, Any] = index.get("metadata", {})
            self.weight_map: dict[str, str] = index["weight_map"]
            self.sharded = True
        elif (self.model_dir / SINGLE_NAME).is_file():
            with safe_open(self.model_dir / SINGLE_NAME, framework="pt") as handle:
                self.weight_map = dict.fromkeys(handle.keys(), SINGLE_NAME)
            self.index_metadata = {}
            self.sharded = False
        else:
            raise FileNotFoundError(f"{self.model_dir} has no safetensors weights ({SINGLE_NAME} or index)")

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
