"""Surgery: write the compact checkpoint by slicing the original weights tensor by tensor.

The original safetensors are memory-mapped and read one tensor at a time, each sliced as soon as it is
read; each output shard is written as soon as it is complete, so host memory stays near one pruned
shard plus one tensor and the full-precision model is never built. Shards keep the input's names and
grouping.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pruning.export.remote_code import modeling_fwdprune
from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind
from pruning.model.checkpoint import INDEX_NAME, CheckpointReader
from pruning.model.units import UnitSpace

# The files of the original checkpoint that travel with the pruned weights, as they are: generation
# settings, the tokenizer in each of its formats, the chat template, the model's own (remote) code and its
# license terms. Nothing else is copied: not `original/` (Llama-3.x's second copy of its weights), not
# weights in other formats, not a subfolder of any kind. config.json, the shard index and README.md (the
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
    "*.py",  # configuration_*.py, modeling_*.py, tokenization_*.py named by the config's auto_map
    "LICENSE*",
    "USE_POLICY*",
    "NOTICE*",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
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
    for which `absent(name)` holds (the tensors of removed modules)."""
    reader = CheckpointReader(model_dir)
    kept = space.kept_indices(keep)
    replacements = dict(replacements or {})
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for shard in reader.shards:
        sliced: dict[str, torch.Tensor] = {}
        # each tensor is sliced as soon as it is read, so only the kept part of the shard accumulates
        for name, tensor in reader.shard_tensors(shard):
            _add_sliced(sliced, adapter, name, replacements.pop(name, tensor), kept, absent)
            del tensor  # before the next read, or two whole tensors are alive at once
        # new tensors (e.g. an output bias the original lacked) go beside their module's weight
        for name in [n for n in replacements if reader.weight_map.get(_sibling_weight(n)) == shard]:
            _add_sliced(sliced, adapter, name, replacements.pop(name), kept, absent)
        save_file(sliced, str(out_dir / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(sliced, shard))
        total_bytes += sum(t.numel() * t.element_size() for t in sliced.values())
    if replacements:
        raise ValueError(f"replacement tensors with no home in the checkpoint: {sorted(replacements)}")
    if reader.sharded:
        index = {"metadata": {**reader.index_metadata, "total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


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
    config = json.loads((model_dir / "config.json").read_text())
    config = adapter.shrink_config(config, shapes, uniform)
    config.update(updates or {})
    if "fwdprune_layers" in config:
        class_name = modeling_fwdprune.PRUNED_CLASSES[config["model_type"]]
        auto = "AutoModelForCausalLM" if adapter.causal_lm else "AutoModel"
        config["auto_map"] = {auto: f"modeling_fwdprune.{class_name}"}
        config["architectures"] = [class_name]
        shutil.copyfile(modeling_fwdprune.__file__, out_dir / MODELING_FILE)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def is_side_file(path: Path) -> bool:
    """Whether `path`, in a checkpoint directory, travels with the pruned weights (SIDE_FILES)."""
    name = path.name
    return (
        path.is_file()
        and any(fnmatch.fnmatchcase(name, pattern) for pattern in SIDE_FILES)
        and not name.endswith(WEIGHT_SUFFIXES)
    )


def copy_side_files(model_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer, generation config, remote code and license files beside the weights."""
    for path in sorted(model_dir.iterdir()):
        target = out_dir / path.name
        if is_side_file(path) and not target.exists():
            shutil.copyfile(path, target)


def load_pruned(out_dir: str | Path, **kwargs: Any) -> Any:
    """Load a checkpoint written by `export_pruned`, uniform or not, without trust_remote_code."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out_dir = Path(out_dir)
    config = AutoConfig.from_pretrained(out_dir)
    if getattr(config, "fwdprune_layers", None):
        model_class = getattr(modeling_fwdprune, modeling_fwdprune.PRUNED_CLASSES[config.model_type])
        return model_class.from_pretrained(out_dir, **kwargs)
    causal = any(name.endswith("ForCausalLM") for name in getattr(config, "architectures", None) or [])
    return (AutoModelForCausalLM if causal else AutoModel).from_pretrained(out_dir, **kwargs)
