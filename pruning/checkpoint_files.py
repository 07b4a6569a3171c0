"""A checkpoint's weight files, found and checked without torch: which file transformers loads, that
every name a checkpoint gives is a plain file inside its folder, and that config.json's sizes are the
weights' own. The API checks a model with it at submit, the engine before it builds anything.

The reader reads the file transformers loads: the one config.json names in `transformers_weights`, else
`model.safetensors` where it exists (an index beside it is then ignored, as transformers ignores it),
else the shards `model.safetensors.index.json` names. A checkpoint's file names come from whoever made
it, so each is checked before anything is opened: a single plain file name ending in `.safetensors`,
naming a file directly inside the model folder; anything else is refused as an unsupported model.

The sizes a model is built from come from config.json, and nothing else bounds them: a config stating a
million layers beside the weights of two would have the engine build a million layers. `check_weights`
compares the layer count, hidden size and vocabulary config.json states with what the safetensors
headers hold (8 bytes of header length, then the header's JSON: read, never a tensor), and refuses a
config the weights do not match.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from pruning.checkpoint_config import read_config, read_json
from pruning.errors import UnsupportedModelError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# characters no file name of a checkpoint has: path separators (POSIX, Windows), a Windows drive's colon
UNSAFE_NAME_CHARS = frozenset("/\\:")
MAX_INDEX_BYTES = 1 << 26  # a shard index maps every tensor to its shard: a few MiB for the largest models
MAX_HEADER_BYTES = 100_000_000  # what the safetensors library itself reads at most
SHOWN_CHARS = 200  # of a refused name quoted back in a message
SEPARATORS = re.compile(r"[/\\]")  # of path components, on any host
# a transformer block's tensors: `model.layers.3.` (decoders), `encoder.layer.3.` (BERT and RoBERTa)
LAYER_NAME = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
# the token embedding: `model.embed_tokens.weight`, `bert.embeddings.word_embeddings.weight`
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "word_embeddings.weight")


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
            f"{what} names {_named(name)}, which is not a plain {suffix} file name in the model "
            "folder; refused"
        )
    return name


def _named(name: object) -> str:
    """A refused name as a message quotes it: a path by its last component only (the folders it names
    are the host's, which a job's owner need not learn from it)."""
    if isinstance(name, str) and SEPARATORS.search(name):
        last = SEPARATORS.split(name)[-1]
        return f"a path ending in {_shown(last)}"
    return _shown(name)


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def read_shard_index(model_dir: Path, name: str = INDEX_NAME) -> tuple[dict[str, str], dict[str, Any]]:
    """(weight_map, metadata) of the shard index `name` in `model_dir`, every shard name checked with
    `plain_file_name`."""
    index = read_json(model_dir / name, name, MAX_INDEX_BYTES)
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


def refuse_missing(model_dir: Path, name: str, what: str) -> None:
    """Refuse `name` (a plain file name, so directly inside the folder) unless it is a file there; the
    file itself may be a symlink, as a Hugging Face cache snapshot's are."""
    if not (model_dir / name).is_file():
        raise UnsupportedModelError(f"{what} names {_shown(name)}, which is not a file in the model folder")


def weights_name(model_dir: Path) -> str | None:
    """The file transformers loads the weights from (see the module's docstring), every name checked;
    None where the folder has no safetensors weights."""
    explicit = check_checkpoint_files(model_dir)
    if explicit is not None:
        refuse_missing(model_dir, explicit, "config.json's transformers_weights")
        return explicit
    for name in (SINGLE_NAME, INDEX_NAME):
        if (model_dir / name).is_file():
            return name
    return None


def read_header(path: Path) -> dict[str, Any]:
    """The tensors a safetensors file holds, name -> {"dtype", "shape", "data_offsets"}, from its header
    alone: 8 bytes of little-endian length, then that many bytes of JSON. A header that is not one is an
    UnsupportedModelError naming the file."""
    name = path.name
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise UnsupportedModelError(f"{name} is not a safetensors file (shorter than its header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise UnsupportedModelError(f"{name} states a header of {length} bytes, past any model's")
            raw = handle.read(length)
    except OSError as err:
        raise UnsupportedModelError(f"{name} cannot be read ({err.strerror or type(err).__name__})") from err
    if len(raw) < length:
        raise UnsupportedModelError(f"{name} ends inside its header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise UnsupportedModelError(
            f"{name} has no readable safetensors header ({type(err).__name__})"
        ) from err
    if not isinstance(header, dict):
        raise UnsupportedModelError(f"{name} has no readable safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    for tensor, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise UnsupportedModelError(f"{name}: tensor {_shown(tensor)} has no shape of whole numbers")
    return header


def stored_tensors(model_dir: Path) -> tuple[dict[str, str], str] | None:
    """(tensor name -> file that holds it, the weights' file name) of the weights transformers loads,
    from the shard index or the single file's header; None where the folder has no safetensors
    weights."""
    name = weights_name(model_dir)
    if name is None:
        return None
    if name.endswith(INDEX_SUFFIX):
        weight_map, _ = read_shard_index(model_dir, name)
        for shard in sorted(set(weight_map.values())):
            refuse_missing(model_dir, shard, name)
        return weight_map, name
    return dict.fromkeys(read_header(model_dir / name), name), name


def check_weights(model_dir: Path, config: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint whose config.json states sizes its weights do not have: `num_hidden_layers`
    against the blocks the tensor names number (0 to n-1, each present), `vocab_size` and `hidden_size`
    against the token embedding's shape. Reads the index or the safetensors headers only. A folder
    without safetensors weights is left to the loader. UnsupportedModelError names the field and what
    the weights hold."""
    found = stored_tensors(model_dir)
    if found is None:
        return
    weight_map, source = found
    config = read_config(model_dir) if config is None else config
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and weight_map:
        indices = {int(match.group(1)) for name in weight_map if (match := LAYER_NAME.search(name))}
        if indices != set(range(layers)):
            held = f"the blocks numbered {_ranges(indices)}" if indices else "no numbered blocks"
            raise UnsupportedModelError(
                f"config.json states num_hidden_layers {layers}, and the weights ({source}) hold {held}"
            )
    embeddings = [name for name in weight_map if name.endswith(EMBEDDING_SUFFIXES)]
    if len(embeddings) != 1:
        return
    (embedding,) = embeddings
    entry = read_header(model_dir / weight_map[embedding]).get(embedding)
    shape = entry["shape"] if entry is not None else None
    if shape is None or len(shape) != 2:
        raise UnsupportedModelError(
            f"the weights ({source}) hold no two-dimensional token embedding {_shown(embedding)}"
        )
    for field, stored in (("vocab_size", shape[0]), ("hidden_size", shape[1])):
        stated = config.get(field)
        if isinstance(stated, int) and stated != stored:
            raise UnsupportedModelError(
                f"config.json states {field} {stated}, and the token embedding of the weights ({source}) "
                f"is {shape[0]} x {shape[1]}"
            )


def _ranges(indices: set[int]) -> str:
    """Block numbers as a short list of runs: "0-1", "0-3, 7"."""
    runs: list[str] = []
    ordered = sorted(indices)
    start = previous = ordered[0]
    for index in [*ordered[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        runs.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ", ".join(runs[:8]) + (", ..." if len(runs) > 8 else "")
