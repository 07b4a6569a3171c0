"""Surgery: write the compact checkpoint by slicing the original weights tensor by tensor.

The original safetensors are memory-mapped and read one tensor at a time, each sliced as soon as it is
read; each output shard is written as soon as it is complete, so host memory stays near one pruned
shard plus one tensor and the full-precision model is never built. Shards keep the input's grouping
under names of the export's own (`model.safetensors`, or `model-00001-of-00004.safetensors`...): no file
is ever written under a name the input chose.

Only fwdprune's own code ships: no `.py` file of the input is copied, and `auto_map` (which makes
`trust_remote_code=True` import a module, from beside the weights or from another Hub repository) is
removed from every JSON file that travels, config.json included; the export sets it only to its own
`modeling_fwdprune.py` (or, for the Nemotron-NAS layout, its own `modeling_decilm.py`). Every file is
written with the mode a new file gets under the process's umask (0644 under the usual 022).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pruning.export.remote_code import modeling_fwdprune
from pruning.families import FAMILIES
from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind
from pruning.model.checkpoint import INDEX_NAME, SINGLE_NAME, CheckpointReader
from pruning.model.units import UnitSpace

# The files of the original checkpoint that travel with the pruned weights: generation settings, the
# tokenizer in each of its formats, the chat template and the model's license terms; JSON files lose their
# `auto_map` (FOREIGN_CODE_KEYS) on the way. Nothing else is copied: no code (CODE_SUFFIXES: the input's
# configuration_*.py, modeling_*.py, tokenization_*.py would run wherever the checkpoint is loaded with
# trust_remote_code), not `original/` (Llama-3.x's second copy of its weights), not weights in other
# formats, not a subfolder of any kind. config.json, the shard index, the remote code and README.md (the
# model card) are the export's own.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer*",  # tokenizer.json, tokenizer_config.json, tokenizer.model (.v3), ...
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "*.tiktoken",
    "tekken.json",
    "chat_template.jinja",
    "chat_template.json",
    "LICENSE*",
    "USE_POLICY*",
    "NOTICE*",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".pyw", ".pyi", ".so")
# the keys of a JSON file that name code to import (`auto_map`: a module beside the weights, or
# "repo--module.Class" in another Hub repository; `custom_pipelines`: a pipeline's), and config.json's
# `transformers_weights` (a weights file of the input's naming, which the export does not write)
FOREIGN_CODE_KEYS = ("auto_map", "custom_pipelines")
FOREIGN_CONFIG_KEYS = (*FOREIGN_CODE_KEYS, "transformers_weights")
MODELING_FILE = "modeling_fwdprune.py"


def export_pruned(
    model_dir: Path,
    out_dir: Path,
    adapter: FamilyAdapter,
    space: UnitSpace,
    keep: torch.Tensor,
    uniform: bool,
    replacements: dict[str, torch.Tensor] | None = None,
    config_updates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Slice every prunable tensor to the kept units (keep: [U] bool); returns the new config.

    `replacements` maps tensor names to full-size tensors that replace or add to the original ones
    before slicing (compensated weights, new output biases).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = space.kept_shapes(keep)
    write_weights(
        model_dir, out_dir, adapter, space, keep, replacements, lambda name: _emptied(adapter, name, shapes)
    )
    config = _write_config(model_dir, out_dir, adapter, shapes, uniform, config_updates)
    copy_side_files(model_dir, out_dir)
    return config


def write_weights(
    model_dir: Path,
    out_dir: Path,
    adapter: FamilyAdapter,
    space: UnitSpace,
    keep: torch.Tensor,
    replacements: dict[str, torch.Tensor] | None,
    absent: Callable[[str], bool],
) -> None:
    """Write every tensor sliced to the kept units (keep: [U] bool), shard by shard, leaving out those
    for which `absent(name)` holds (the tensors of removed modules). Each input shard becomes one output
    shard of the export's own name (`shard_name`)."""
    reader = CheckpointReader(model_dir)
    kept = space.kept_indices(keep)
    replacements = dict(replacements or {})
    weight_map: dict[str, str] = {}
    total_bytes = 0
    shards = reader.shards
    for number, shard in enumerate(shards, start=1):
        out_name = shard_name(number, len(shards))
        sliced: dict[str, torch.Tensor] = {}
        # each tensor is sliced as soon as it is read, so only the kept part of the shard accumulates
        for name, tensor in reader.shard_tensors(shard):
            _add_sliced(sliced, adapter, name, replacements.pop(name, tensor), kept, absent)
            del tensor  # before the next read, or two whole tensors are alive at once
        # new tensors (e.g. an output bias the original lacked) go beside their module's weight
        for name in [n for n in replacements if reader.weight_map.get(_sibling_weight(n)) == shard]:
            _add_sliced(sliced, adapter, name, replacements.pop(name), kept, absent)
        save_shard(sliced, out_dir / out_name)
        weight_map.update(dict.fromkeys(sliced, out_name))
        total_bytes += sum(t.numel() * t.element_size() for t in sliced.values())
    if replacements:
        raise ValueError(f"replacement tensors with no home in the checkpoint: {sorted(replacements)}")
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def shard_name(number: int, count: int) -> str:
    """The export's name for its shard `number` (from 1) of `count`: transformers' own naming."""
    return SINGLE_NAME if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file with the mode every other file gets: safetensors writes a private
    temporary file (mode 0600) and renames it into place, so the mode is set here from the umask."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, new_file_mode())


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the process's umask (read where Linux
    shows it, so the umask is never changed, not even for a moment, under other threads)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
        mask = next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _add_sliced(
    sliced: dict[str, torch.Tensor],
    adapter: FamilyAdapter,
    name: str,
    tensor: torch.Tensor,
    kept: dict[tuple[int, str], torch.Tensor],
    absent: Callable[[str], bool],
) -> None:
    """Put the kept part of `tensor` into `sliced` under its new name (index_select copies, so the whole
    tensor is not kept alive by a view); tensors of removed modules and experts are left out."""
    target = adapter.renamed(name, kept)
    if target is None or absent(name):
        return
    part = _slice(adapter, name, tensor, kept)
    if part.numel() > 0:
        sliced[target] = part.contiguous()


def _sibling_weight(name: str) -> str:
    return name.rsplit(".", 1)[0] + ".weight"


def _emptied(adapter: FamilyAdapter, name: str, shapes: list[LayerShape]) -> bool:
    found = adapter.emptied_module(name)
    if found is None:
        return False
    layer, kind = found
    shape = shapes[layer]
    return shape.num_kv_heads == 0 if kind == UnitKind.ATTN else shape.mlp_removed


def _slice(
    adapter: FamilyAdapter, name: str, tensor: torch.Tensor, kept: dict[tuple[int, str], torch.Tensor]
) -> torch.Tensor:
    found = adapter.rule_for(name)
    if found is None:
        return tensor
    rule, layer = found
    return tensor.index_select(rule.dim, kept[(layer, rule.axis)])


def _write_config(
    model_dir: Path,
    out_dir: Path,
    adapter: FamilyAdapter,
    shapes: list[LayerShape],
    uniform: bool,
    updates: dict[str, Any] | None,
) -> dict[str, Any]:
    config = without_foreign_code(json.loads((model_dir / "config.json").read_text()), FOREIGN_CONFIG_KEYS)
    config = adapter.shrink_config(config, shapes, uniform)
    config.update(updates or {})
    if "fwdprune_layers" in config:
        class_name = FAMILIES[config["model_type"]].pruned_class
        auto = "AutoModelForCausalLM" if adapter.causal_lm else "AutoModel"
        config["auto_map"] = {auto: f"modeling_fwdprune.{class_name}"}
        config["architectures"] = [class_name]
        shutil.copyfile(modeling_fwdprune.__file__, out_dir / MODELING_FILE)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def without_foreign_code(config: dict[str, Any], keys: tuple[str, ...] = FOREIGN_CODE_KEYS) -> dict[str, Any]:
    """`config` (a JSON file's object) without the keys that name code to import, or `keys`."""
    return {key: value for key, value in config.items() if key not in keys}


def is_side_file(path: Path) -> bool:
    """Whether `path`, in a checkpoint directory, travels with the pruned weights (SIDE_FILES): never
    weights, never code."""
    name = path.name
    return (
        path.is_file()
        and any(fnmatch.fnmatchcase(name, pattern) for pattern in SIDE_FILES)
        and not name.lower().endswith(WEIGHT_SUFFIXES + CODE_SUFFIXES)
    )


def copy_side_files(model_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer, generation config and license files beside the weights, JSON files without
    their `auto_map`; a file the export wrote itself is never replaced."""
    for path in sorted(model_dir.iterdir()):
        target = out_dir / path.name
        if is_side_file(path) and not target.exists():
            _copy_side_file(path, target)


def _copy_side_file(path: Path, target: Path) -> None:
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            content = None  # not JSON to transformers either: it names no code
        if isinstance(content, dict) and any(key in content for key in FOREIGN_CODE_KEYS):
            target.write_text(json.dumps(without_foreign_code(content), indent=2, ensure_ascii=False) + "\n")
            return
    shutil.copyfile(path, target)


def load_pruned(out_dir: str | Path, **kwargs: Any) -> Any:
    """Load a checkpoint written by `export_pruned`, uniform or not, without trust_remote_code."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out_dir = Path(out_dir)
    config = AutoConfig.from_pretrained(out_dir)
    if getattr(config, "fwdprune_layers", None):
        model_class = getattr(modeling_fwdprune, FAMILIES[config.model_type].pruned_class)
        return model_class.from_pretrained(out_dir, **kwargs)
    causal = any(name.endswith("ForCausalLM") for name in getattr(config, "architectures", None) or [])
    return (AutoModelForCausalLM if causal else AutoModel).from_pretrained(out_dir, **kwargs)
