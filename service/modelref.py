"""Turn a job's `model` into a checkpoint directory without letting it name arbitrary paths.

A model is either a name under the models dir (one or more plain path components) or a Hub id found in
the local HF cache, at a revision (default: main), or downloaded into it where the worker allows that.
Absolute paths, `..`, and intermediate symlinks are refused; the last component may be a symlink because
only the operator can put entries into the models dir (that is how a model is registered without copying
it). The API checks a name's form (and, on a single host, that it resolves); the worker that runs the
job resolves it on its own disks.
"""

from __future__ import annotations

import re
from pathlib import Path

from pruning.checkpoint_checks import read_model_type
from pruning.errors import ModelNotFoundError

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelRefError(ModelNotFoundError):
    """The model name is not one this server can resolve (or not one it may)."""


# What a download skips: weights in formats the engine does not read (it loads safetensors only), and
# `original/`, where Llama-3.x repositories keep a second full copy of the weights for Meta's own code
FOREIGN_WEIGHTS = (
    "*.pth",
    "*.bin",
    "*.pt",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.ot",
    "*.gguf",
    "original/*",
)


def model_name_parts(name: str) -> list[str]:
    """The components of a well-formed model name; ModelRefError for anything that could name a path."""
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
    return parts


def resolve_model(
    name: str,
    models_dir: Path,
    hf_cache_dir: Path | None = None,
    *,
    revision: str | None = None,
    allow_download: bool = False,
) -> Path:
    """The model's directory: the models dir first, then a Hub id's snapshot at `revision` in the HF
    cache, fetched into it from the Hub when `allow_download` and not cached."""
    parts = model_name_parts(name)
    local = _local_model(parts, models_dir)
    if local is not None:
        return local
    if _HUB_ID.match(name):
        snapshot = _hub_snapshot(name, revision, hf_cache_dir, allow_download)
        if snapshot is not None:
            return snapshot
    at = f" at revision {revision!r}" if revision else ""
    fetched = " and could not be downloaded from the Hub" if allow_download else ""
    raise ModelRefError(
        f"model {name!r} is neither in the server's models dir nor in its Hugging Face cache{at}{fetched}"
    )


def resolve_checkpoint(
    name: str,
    revision: str | None,
    models_dir: Path,
    hf_cache_dir: Path | None,
    allow_download: bool = False,
) -> Path:
    """`resolve_model`, then its `model_type` checked: a checkpoint the engine can prune.

    Raises the engine's ModelNotFoundError (a ModelRefError) or UnsupportedModelError, so a job fails
    with `model_not_found` or `unsupported_model`.
    """
    model_dir = resolve_model(
        name, models_dir, hf_cache_dir, revision=revision, allow_download=allow_download
    )
    read_model_type(model_dir)
    return model_dir


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


def _hub_snapshot(
    repo_id: str, revision: str | None, cache_dir: Path | None, allow_download: bool
) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=not allow_download,
                ignore_patterns=list(FOREIGN_WEIGHTS),
            )
        )
    # not cached (LocalEntryNotFoundError), no such repo or revision on the Hub, no network, an invalid
    # id: to the job all of them mean "not found"
    except Exception:
        return None
