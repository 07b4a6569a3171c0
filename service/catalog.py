"""The models this host can prune, as a job names them: the models dir's entries and the Hub ids in the
Hugging Face cache, each described from its config.json and its safetensors headers (read, never loaded;
torch-free, as the API process is).

A models-dir entry is a folder (or a symlink to one) holding config.json, directly under the models dir
or one folder down (`org/name`), as `service.modelref` resolves names. A Hub id is listed at `main` when
the cache holds that ref, else at its most recent cached commit (which a job then names as `revision`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pruning.checkpoint_checks import checked_model_type
from pruning.checkpoint_config import read_config
from pruning.checkpoint_files import check_weights, read_header, stored_tensors
from pruning.errors import FwdpruneError
from pruning.families import FAMILIES
from service.modelref import ModelRefError, model_name_parts

MAX_MODELS = 500  # of each source: a listing stays one page and its header reads stay bounded
DEFAULT_REF = "main"


@dataclass(frozen=True)
class ModelEntry:
    id: str
    source: str  # "models_dir" or "hub_cache"
    revision: str | None
    model_type: str | None
    family: str | None
    parameters: int | None
    supported: bool
    reason: str | None


def list_models(models_dir: Path, hf_cache_dir: Path | None) -> list[ModelEntry]:
    """Every model of the models dir, then of the HF cache, each source sorted by name."""
    local = [describe(name, path, "models_dir") for name, path in models_dir_entries(models_dir)]
    cached = [describe(repo, path, "hub_cache", ref) for repo, ref, path in hub_cache_entries(hf_cache_dir)]
    return local + cached


def models_dir_entries(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every model under `models_dir`: names only `service.modelref` would resolve."""
    if not models_dir.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    for child in sorted(models_dir.iterdir()):
        if (child / "config.json").is_file():
            found.append((child.name, child))
        elif child.is_dir() and not child.is_symlink():  # a symlink is only followed as the last component
            found += [(f"{child.name}/{inner.name}", inner) for inner in sorted(child.iterdir())]
    models = [(name, path) for name, path in found if (path / "config.json").is_file() and _named(name)]
    return models[:MAX_MODELS]


def _named(name: str) -> bool:
    try:
        model_name_parts(name)
    except ModelRefError:
        return False
    return True


def hub_cache_entries(cache_dir: Path | None) -> list[tuple[str, str | None, Path]]:
    """(repo id, revision or None for main, snapshot folder) of every cached model repository."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    entries: list[tuple[str, str | None, Path]] = []
    for repo in sorted(cache.repos, key=lambda repo: repo.repo_id):
        if repo.repo_type != "model" or not repo.revisions or not _named(repo.repo_id):
            continue
        main = [rev for rev in repo.revisions if DEFAULT_REF in rev.refs]
        chosen = main[0] if main else max(repo.revisions, key=lambda rev: rev.last_modified)
        revision = None if main else chosen.commit_hash
        entries.append((repo.repo_id, revision, Path(chosen.snapshot_path)))
    return entries[:MAX_MODELS]


def describe(name: str, folder: Path, source: str, revision: str | None = None) -> ModelEntry:
    """A model as the listing shows it; an unreadable or unsupported one says why, and is still listed."""
    model_type: str | None = None
    parameters: int | None = None
    try:
        config = read_config(folder)
        raw_type = config.get("model_type")
        model_type = raw_type if isinstance(raw_type, str) else None
        parameters = stored_parameters(folder)
        checked_model_type(config)
        check_weights(folder, config)
        reason = None
    except FwdpruneError as err:
        reason = str(err)
    return ModelEntry(
        id=name,
        source=source,
        revision=revision,
        model_type=model_type,
        family=FAMILIES[model_type].adapter if model_type in FAMILIES else None,
        parameters=parameters,
        supported=reason is None,
        reason=reason,
    )


def stored_parameters(folder: Path) -> int | None:
    """Parameters the checkpoint's safetensors weights hold, from their headers; None without any."""
    found = stored_tensors(folder)
    if found is None:
        return None
    weight_map, _ = found
    total = 0
    for file_name in sorted(set(weight_map.values())):
        header = read_header(folder / file_name)
        total += sum(math.prod(entry["shape"]) for entry in header.values())
    return total
