"""The Nemotron-NAS ("DeciLM") export: per-layer widths in the one layout serving engines load natively.

Its config (`model_type: nemotron-nas`) describes each layer in `block_configs`; the loaders read it as:
- attention: one query-head count for the model (`num_attention_heads`) over
  `num_attention_heads // n_heads_in_group` KV heads, or `no_op` (the block is gone). Our attention units
  are KV groups with their query heads, so every layer keeps the same number of groups, or none.
- MLP: `ffn_mult`, whose width is `int(2 * ffn_mult * hidden / 3)` rounded up to a multiple of 256
  (vLLM, SGLang, TensorRT-LLM and llama.cpp all compute it so), or `no_op`. Only multiples of 256 are
  widths it states exactly, so each layer keeps a multiple of 256 channels, or none; a model whose own
  MLP width is not one (pycoder-28m's 1408) keeps at most the largest multiple below it in every layer.
Tensors keep Llama's names; a removed block has none, not even its norm (the engines build no module for
it, so a stray tensor would fail their load). `pruning.selection.width_rules.format_rules` is that layout in
the selector's terms, from the format's `WidthRule` (`pruning.export.formats.nemotron`). The only code
written beside the weights is fwdprune's own `modeling_decilm.py` (the layout's modeling code, vendored in
`pruning.export.remote_code`), the only code config.json's `auto_map` names; nothing of the input's code
travels (`pruning.export.hf`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pruning.errors import UsageError
from pruning.export.formats.nemotron import FFN_WIDTH_MULTIPLE, refuse_inexpressible
from pruning.export.hf import FOREIGN_CONFIG_KEYS, copy_side_files, without_foreign_code, write_weights
from pruning.export.remote_code import modeling_decilm
from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind
from pruning.model.checkpoint import CheckpointReader
from pruning.model.units import UnitSpace

FORMAT = "nemotron-nas"
MODELING_FILE = "modeling_decilm.py"
# tensors of a removed block: its module and the norm in front of it; group 1 is the layer index
BLOCK_TENSORS = {
    UnitKind.ATTN: re.compile(r"layers\.(\d+)\.(self_attn\.|input_layernorm\.)"),
    UnitKind.MLP: re.compile(r"layers\.(\d+)\.(mlp\.|post_attention_layernorm\.)"),
}
OUTPUT_BIASES = ("o_proj.bias", "down_proj.bias")


def export_nemotron(
    model_dir: Path,
    out_dir: Path,
    adapter: FamilyAdapter,
    space: UnitSpace,
    keep: torch.Tensor,
    replacements: dict[str, torch.Tensor] | None = None,
    config_updates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the compact checkpoint (keep: [U] bool) in the Nemotron-NAS layout; returns its config."""
    original = json.loads((model_dir / "config.json").read_text())
    refuse_inexpressible(original)  # as the API refused it at submit
    shapes = space.kept_shapes(keep)
    own = without_foreign_code(original, FOREIGN_CONFIG_KEYS)  # the input's code is never named
    config = decilm_config({**own, **(config_updates or {})}, shapes)  # checks the widths first
    removed = _removed_blocks(shapes)
    _refuse_removed_biases(set(CheckpointReader(model_dir).weight_map) | set(replacements or {}), removed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(
        model_dir, out_dir, adapter, space, keep, replacements, lambda name: _in_removed(name, removed)
    )
    shutil.copyfile(modeling_decilm.__file__, out_dir / MODELING_FILE)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_side_files(model_dir, out_dir)
    return config


def decilm_config(config: dict[str, Any], shapes: list[LayerShape]) -> dict[str, Any]:
    """The DeciLM config of a Llama `config` cut to `shapes`; refuses widths the layout cannot state."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    group_size = heads // (config.get("num_key_value_heads") or heads)  # query heads per KV head
    kept_heads = {s.num_heads for s in shapes if s.num_kv_heads}
    if len(kept_heads) > 1:
        raise ValueError(
            f"{FORMAT} needs the same attention heads in every layer that keeps any: {kept_heads}"
        )
    config = {
        key: value for key, value in config.items() if key not in ("num_key_value_heads", "intermediate_size")
    }
    config.update(
        architectures=["DeciLMForCausalLM"],
        model_type=FORMAT,
        auto_map={
            "AutoConfig": f"{Path(MODELING_FILE).stem}.DeciLMConfig",
            "AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.DeciLMForCausalLM",
        },
        # explicit: with fewer query heads it is no longer hidden_size // num_attention_heads
        head_dim=config.get("head_dim") or hidden // heads,
        num_attention_heads=kept_heads.pop() if kept_heads else heads,
        block_configs=[_block_config(shape, group_size, hidden) for shape in shapes],
    )
    return config


def _block_config(shape: LayerShape, group_size: int, hidden: int) -> dict[str, dict[str, Any]]:
    attention = {
        "n_heads_in_group": group_size if shape.num_kv_heads else None,
        "no_op": shape.num_kv_heads == 0,
        "replace_with_linear": False,
    }
    ffn = {
        "ffn_mult": ffn_mult(shape.intermediate, hidden) if shape.intermediate else None,
        "no_op": shape.intermediate == 0,
        "replace_with_linear": False,
    }
    return {"attention": attention, "ffn": ffn}


def ffn_mult(width: int, hidden: int) -> float:
    """The `ffn_mult` that states MLP `width` exactly (6 decimals, as NVIDIA's configs round it);
    refuses a width no ffn_mult states."""
    mult = round(3 * width / (2 * hidden), 6)
    if modeling_decilm.ffn_mult_to_intermediate_size(mult, hidden) != width:
        raise ValueError(
            f"{FORMAT} cannot state an MLP width of {width}: not a multiple of {FFN_WIDTH_MULTIPLE}"
        )
    return mult


def _removed_blocks(shapes: list[LayerShape]) -> set[tuple[int, UnitKind]]:
    removed = {(layer, UnitKind.ATTN) for layer, s in enumerate(shapes) if s.num_kv_heads == 0}
    return removed | {(layer, UnitKind.MLP) for layer, s in enumerate(shapes) if s.intermediate == 0}


def _in_removed(name: str, removed: set[tuple[int, UnitKind]]) -> bool:
    for kind, pattern in BLOCK_TENSORS.items():
        match = pattern.search(name)
        if match and (int(match.group(1)), kind) in removed:
            return True
    return False


def _refuse_removed_biases(names: set[str], removed: set[tuple[int, UnitKind]]) -> None:
    """A removed block still adds its output projection's bias in the masked model; a `no_op` block has
    nowhere to keep it, so dropping it would change the model's outputs."""
    stranded = sorted(n for n in names if n.endswith(OUTPUT_BIASES) and _in_removed(n, removed))
    if stranded:
        raise UsageError(
            f"export_format {FORMAT} cannot keep the output bias of a removed block ({stranded[0]}); "
            "prune with compensate='ls' or 'none', or export_format='hf'"
        )
