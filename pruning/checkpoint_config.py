"""A checkpoint's config.json, read without trusting it and without torch: the API reads it at submit
time, the engine before it loads anything.

A model folder is input like any other. Its config.json may hold no JSON object at all, nest without
end or hold an integer longer than Python converts; `read_config` turns each into an
UnsupportedModelError (code `unsupported_model`) with a one-line message, so that every entry point
answers it as the user error it is: a 422 from the API, exit status 2 from the CLI, a job failed with
that code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruning.errors import UnsupportedModelError

MAX_CONFIG_BYTES = 1 << 24  # a config.json is a few KiB; one naming a classifier's labels, some MiB
MAX_DEPTH = 32  # levels of nesting: a real config has three or four; transformers copies it recursively
SHOWN_CHARS = 60  # of a value quoted back in a message


def read_config(model_dir: Path) -> dict[str, Any]:
    """`model_dir`/config.json as a JSON object. UnsupportedModelError for one that is missing,
    unreadable, larger than MAX_CONFIG_BYTES, not UTF-8 JSON, nested deeper than MAX_DEPTH, holding an
    integer past Python's conversion limit, or not an object."""
    path, name = model_dir / "config.json", f"{model_dir.name}/config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{model_dir.name} has no config.json")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise UnsupportedModelError(f"{name} cannot be read ({err.strerror or type(err).__name__})") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise UnsupportedModelError(f"{name} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UnsupportedModelError(f"{name} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except json.JSONDecodeError as err:
        raise UnsupportedModelError(f"{name} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise UnsupportedModelError(f"{name} nests deeper than {MAX_DEPTH} levels") from err
    except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UnsupportedModelError(f"{name} holds an integer longer than the JSON reader converts") from err
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{name} must hold a JSON object; it holds {_kind(config)}")
    if _deeper_than(config, MAX_DEPTH):
        raise UnsupportedModelError(f"{name} nests deeper than {MAX_DEPTH} levels")
    return config


def quoted(value: object) -> str:
    """`value` as a message quotes it: its repr, cut to SHOWN_CHARS characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` levels deep (walked without recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > limit:
            return True
        pending.extend((child, level + 1) for child in children)
    return False
