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
MAX_SIZE = (1 << 31) - 1  # past any model's width, count or vocabulary, and what 32-bit indices hold
# the widths and counts the engine builds a model's units from: each a whole number of at least 1
SIZES = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "moe_intermediate_size",
    "vocab_size",
)
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim")  # null or absent: the family's own rule
EXPERT_COUNTS = ("num_experts", "num_local_experts")  # transformers writes either name
# what a GGUF file states in 32-bit fields: counts and lengths as uint32, reals as float32
MAX_UINT32, MAX_FLOAT32 = (1 << 32) - 1, 3.4028234663852886e38
GGUF_SIZES = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
# the rope kinds `pruning.export.gguf` writes, and the settings each reads
GGUF_ROPE_SETTINGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": (
        "rope_theta",
        "factor",
        "original_max_position_embeddings",
        "low_freq_factor",
        "high_freq_factor",
    ),
}
GGUF_32_BITS = " (export_format gguf writes it in 32 bits)"


def read_config(model_dir: Path) -> dict[str, Any]:
    """`model_dir`/config.json as a JSON object. UnsupportedModelError for one that is missing,
    unreadable, larger than MAX_CONFIG_BYTES, not UTF-8 JSON, nested deeper than MAX_DEPTH, holding an
    integer past Python's conversion limit, or not an object."""
    path, name = model_dir / "config.json", f"{model_dir.name}/config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{model_dir.name} has no config.json")
    config = read_json(path, name, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{name} must hold a JSON object; it holds {_kind(config)}")
    if _deeper_than(config, MAX_DEPTH):
        raise UnsupportedModelError(f"{name} nests deeper than {MAX_DEPTH} levels")
    return config


def read_json(path: Path, name: str, max_bytes: int) -> Any:
    """The JSON value in the file at `path` (called `name` in errors). UnsupportedModelError for a file
    that is unreadable, larger than `max_bytes`, not UTF-8 JSON, nested past the parser's recursion or
    holding an integer past Python's conversion limit."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as err:
        raise UnsupportedModelError(f"{name} cannot be read ({err.strerror or type(err).__name__})") from err
    if len(raw) > max_bytes:
        raise UnsupportedModelError(f"{name} is larger than {max_bytes} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UnsupportedModelError(f"{name} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except json.JSONDecodeError as err:
        raise UnsupportedModelError(f"{name} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise UnsupportedModelError(f"{name} nests deeper than {MAX_DEPTH} levels") from err
    except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UnsupportedModelError(f"{name} holds an integer longer than the JSON reader converts") from err


def check_sizes(config: dict[str, Any], experts: bool) -> None:
    """Refuse sizes no model has, before any work: widths and counts that are not whole numbers of at
    least 1 (zero heads, a negative width, "64"), query heads that KV heads do not divide, a hidden size
    that the heads do not divide where no head_dim states the head size, and with `experts` (a mixture of
    experts) more experts routed per token than a layer has. Each is an UnsupportedModelError naming the
    field; a field the config leaves out keeps the family's default, which transformers fills in."""
    for field in SIZES:
        if field in config:
            _whole(config, field)
    for field in OPTIONAL_SIZES:
        if config.get(field) is not None:
            _whole(config, field)
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads is not None and kv is not None and heads % kv:
        raise UnsupportedModelError(
            f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
        )
    hidden = config.get("hidden_size")
    if config.get("head_dim") is None and hidden is not None and heads is not None and hidden % heads:
        raise UnsupportedModelError(
            f"config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}, and no "
            "head_dim states the head size"
        )
    for field in ("dtype", "torch_dtype"):
        if not isinstance(config.get(field), str | None):
            raise UnsupportedModelError(f"config.json: {field} must be a name such as bfloat16")
    if experts:
        _check_experts(config)


def _check_experts(config: dict[str, Any]) -> None:
    routed = _whole(config, "num_experts_per_tok") if "num_experts_per_tok" in config else None
    for field in EXPERT_COUNTS:
        if field not in config:
            continue
        count = _whole(config, field)
        if routed is not None and routed > count:
            raise UnsupportedModelError(
                f"config.json: num_experts_per_tok {routed} is more than the {count} experts of a layer "
                f"({field})"
            )


def check_gguf_fields(config: dict[str, Any]) -> None:
    """Refuse, before any work, a config lacking what `pruning.export.gguf` writes into the file's
    header: the widths and counts, a context length and a sliding window that fit its 32-bit fields, the
    norm's epsilon, and rope settings of a kind it writes (default, linear, llama3) with every number
    that kind reads. Each is an UnsupportedModelError naming the field."""
    for field in (*GGUF_SIZES, "max_position_embeddings", "rms_norm_eps"):
        if field not in config:
            raise UnsupportedModelError(f"export_format gguf needs config.json's {field}; it has none")
    for field in GGUF_SIZES:
        _whole(config, field)
    _whole(config, "max_position_embeddings", MAX_UINT32, GGUF_32_BITS)
    if config.get("sliding_window") is not None:
        _whole(config, "sliding_window", MAX_UINT32, GGUF_32_BITS)
    _positive_real(config, "rms_norm_eps", "config.json")
    rope = _rope_settings(config)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if not isinstance(kind, str) or kind not in GGUF_ROPE_SETTINGS:
        kinds = ", ".join(GGUF_ROPE_SETTINGS)
        raise UnsupportedModelError(f"export_format gguf writes {kinds} rope; this model's is {quoted(kind)}")
    for field in GGUF_ROPE_SETTINGS[kind]:
        if field not in rope:
            raise UnsupportedModelError(
                f"export_format gguf needs {field} in the model's {kind} rope settings"
            )
    for field in ("rope_theta", *GGUF_ROPE_SETTINGS[kind]):
        if field in rope:
            _positive_real(rope, field, "config.json's rope settings")
    if kind == "llama3" and rope["low_freq_factor"] == rope["high_freq_factor"]:
        raise UnsupportedModelError(
            "export_format gguf needs the llama3 rope's low_freq_factor and high_freq_factor to differ"
        )


def _rope_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The rope settings as `pruning.export.gguf.tensors.rope_parameters` reads them: a transformers 5
    config's `rope_parameters`, else an older one's `rope_scaling` and `rope_theta` (default 10000)."""
    if config.get("rope_parameters"):
        rope = config["rope_parameters"]
        if not isinstance(rope, dict):
            raise UnsupportedModelError("config.json: rope_parameters must be an object")
        return rope
    scaling = config.get("rope_scaling")
    if not isinstance(scaling, dict | None):
        raise UnsupportedModelError("config.json: rope_scaling must be an object or null")
    return {**(scaling or {}), "rope_theta": config.get("rope_theta", 10000.0)}


def _positive_real(settings: dict[str, Any], field: str, where: str) -> float:
    """settings[field], refused unless a positive number a 32-bit float holds (not NaN, infinite or a
    boolean)."""
    value = settings[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_FLOAT32:
        raise UnsupportedModelError(
            f"{where}: {field} must be a positive number within a 32-bit float's range; it is {quoted(value)}"
        )
    return float(value)


def _whole(config: dict[str, Any], field: str, maximum: int = MAX_SIZE, why: str = "") -> int:
    """config[field], refused unless a whole number from 1 to `maximum` (a boolean is not one)."""
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise UnsupportedModelError(
            f"config.json: {field} must be a whole number from 1 to {maximum}{why}; it is {quoted(value)}"
        )
    return value


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
