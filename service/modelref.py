"""Turn a job's `model` into a checkpoint directory without letting it name arbitrary paths.

A model is either a name under the models dir (one or more plain path components) or a Hub id found in
the local HF cache. Absolute paths, `..`, and intermediate symlinks are refused; the last component
may be a symlink because only the operator can put entries into the models dir (that is how a model
is registered without copying it).
"""

from __future__ import annotations

import re
from pathlib import Path

from pruning.errors import ModelNotFoundError

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelRefError(ModelNotFoundError):
    """The model name is not one this server can resolve (or not one it may)."""


def resolve_model(name: str, models_dir: Path, hf_cache_dir: Path | None = None) -> Path:
    parts = name.split("/")
    if (
        not name
        or name.startswith(("/", "~"))
        or "\\" in name
        or any(not _COMPONENT.match(p) for p in parts)
        or any(p in (".", "..") for p in parts)
    ):
        raise ModelRefError(
            "model must be a model name under the server's models dir or a Hub id "
            "(plain name components; no absolute paths or '..')"
        )
    local = _local_model(parts, models_dir)
    if local is not None:
        return local
    if _HUB_ID.match(name):
        cached = _hub_cache(name, hf_cache_dir)
        if cached is not None:
            return cached
    raise ModelRefError(f"model {name!r} is neither in the server's models dir nor in its Hugging Face cache")


def _local_model(parts: list[str], models_dir: Path) -> Path | None:
    root = models_dir.resolve()
    path = root
    for i, part in enumerate(parts):
        path = path / part
        last = i == len(parts) - 1
        if path.is_symlink() and not last:
            raise ModelRefError("model path goes through a symlink inside the models dir; refused")
        if not path.exists():
            return None
    resolved = path.resolve()
    if not path.is_symlink() and not resolved.is_relative_to(root):
        raise ModelRefError("model path escapes the models dir")
    return resolved if resolved.is_dir() else None


def _hub_cache(repo_id: str, cache_dir: Path | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached (LocalEntryNotFoundError), or an invalid id: both mean "not found"
        return None
