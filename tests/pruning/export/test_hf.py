"""Exactness: the compact checkpoint computes exactly what the masked fp32 model computes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import pruning
from pruning.engine.reporting import count_checkpoint_params
from pruning.export.hf import copy_side_files, export_pruned
from pruning.measure.monitor import StageMonitor, anonymous_rss
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import UnitSpace, build_unit_space
from tests.pruning.conftest import MULTI_GROUP_DENSE_FAMILIES
from tests.tiny import TinyModel, make_tiny_causal_lm

CPU = torch.device("cpu")


def uniform_keep(space: UnitSpace, kv_keep: int, mlp_drop: int) -> torch.Tensor:
    """Every layer keeps `kv_keep` KV groups (different ones per layer) and loses `mlp_drop` MLP units."""
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer in range(space.num_layers):
        attn, mlp = space.group_of(layer, UnitKind.ATTN), space.group_of(layer, UnitKind.MLP)
        order = torch.randperm(attn.count, generator=torch.Generator().manual_seed(layer + 1))
        keep[attn.offset + order[kv_keep:]] = False
        dropped = torch.randperm(mlp.count, generator=torch.Generator().manual_seed(10 + layer))[:mlp_drop]
        keep[mlp.offset + dropped] = False
    return keep


def global_keep(space: UnitSpace) -> torch.Tensor:
    """Unequal widths: layer 0 loses ALL attention and some MLP, layer 1 ALL MLP and one KV group."""
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[space.slice(space.group_of(0, UnitKind.ATTN))] = False
    keep[space.slice(space.group_of(1, UnitKind.MLP))] = False
    attn1 = space.group_of(1, UnitKind.ATTN)
    keep[space.slice(attn1)] = True
    keep[attn1.offset + 1] = False
    assert bool(keep[space.slice(space.group_of(0, UnitKind.MLP))].any())
    return keep


def extra_removed(family: str, space: UnitSpace, keep: torch.Tensor) -> int:
    """Parameters removed beyond the units' projection weights: q/k/v biases (qwen2), q/k norms of an
    emptied attention block (qwen3)."""
    extra = 0
    for layer in range(space.num_layers):
        attn = space.group_of(layer, UnitKind.ATTN)
        gone = int((~keep[space.slice(attn)]).sum())
        if family == "qwen2":
            extra += gone * (space.group_size[layer] + 2) * space.head_dim
        if family == "qwen3" and gone == attn.count:
            extra += 2 * space.head_dim
    return extra


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", MULTI_GROUP_DENSE_FAMILIES)
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_compact_model_matches_masked_model(
    tiny_models: dict[str, Path], tmp_path: Path, family: str, uniform: bool
) -> None:
    source = tiny_models[family]
    loaded = load_model(source, "fp32", CPU)
    adapter = adapter_for(loaded.model.config.model_type)
    space = build_unit_space(loaded.model, adapter, None)
    if uniform:
        kv = loaded.model.config.num_key_value_heads
        allowed = adapter.uniform_kv_counts(loaded.model.config)
        assert allowed == ([1, 2, 4] if kv == 4 else [1, 2])
        keep = uniform_keep(space, max(c for c in allowed if c < kv), mlp_drop=5)
    else:
        keep = global_keep(space)
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, :6]
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        expected = loaded.model(ids).logits
        expected_tokens = loaded.model.generate(
            prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
        )
    assert not torch.allclose(expected, loaded.model(ids).logits, atol=1e-3)  # the masks matter

    out = tmp_path / "out"
    config = export_pruned(source, out, adapter, space, keep, uniform)
    written = json.loads((out / "config.json").read_text())
    assert written == config
    shapes = space.kept_shapes(keep)
    if uniform:
        assert "auto_map" not in written and "fwdprune_layers" not in written
        assert not (out / "modeling_fwdprune.py").exists()
        assert (
            written["num_attention_heads"],
            written["num_key_value_heads"],
            written["intermediate_size"],
        ) == (shapes[0].num_heads, shapes[0].num_kv_heads, shapes[0].intermediate)
        compacts = [AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)]
    else:
        assert (out / "modeling_fwdprune.py").is_file()
        assert written["fwdprune_layers"][0]["num_key_value_heads"] == 0
        assert written["fwdprune_layers"][1]["intermediate_size"] == 0
        compacts = [
            AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True),
            pruning.load_pruned(out, dtype=torch.float32),
        ]
    for compact in compacts:
        assert compact.dtype == torch.float32
        with torch.no_grad():
            logits = compact(ids).logits
            assert logits.shape == expected.shape
            assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()
            tokens = compact.generate(
                prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
            )
        assert tokens.shape == (1, 14)
        assert torch.equal(tokens, expected_tokens)

        # parameter count: dense minus exactly what the removed units account for
        removed = int(space.params[~keep].sum()) + extra_removed(family, space, keep)
        assert num_params(compact) == num_params(loaded.model) - removed
        assert count_checkpoint_params(out) == num_params(compact)
        layer_attn = compact.model.layers[1 if not uniform else 0].self_attn
        assert layer_attn.o_proj.weight.shape == (64, shapes[1 if not uniform else 0].num_heads * 16)

    # shards keep the input's grouping under the export's own names, the index points into them, the
    # tokenizer travels unchanged
    count = len(list(source.glob("*.safetensors")))
    assert count > 1
    shard_names = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in out.glob("*.safetensors")) == shard_names
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for shard in shard_names:
        with safe_open(out / shard, framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(n for n, s in index["weight_map"].items() if s == shard)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert not (out / "pruning_report.json").exists()


def test_uniform_export_refuses_unequal_widths(
    llama_fp32: TinyModel, tiny_llama: Path, tmp_path: Path
) -> None:
    _, adapter, space = llama_fp32
    with pytest.raises(ValueError, match="equal widths"):
        export_pruned(tiny_llama, tmp_path / "x", adapter, space, global_keep(space), True)


def test_export_with_nothing_removed_is_the_original(
    llama_fp32: TinyModel, tiny_llama: Path, tmp_path: Path
) -> None:
    model, adapter, space = llama_fp32
    export_pruned(
        tiny_llama, tmp_path / "same", adapter, space, torch.ones(space.size, dtype=torch.bool), True
    )
    compact = AutoModelForCausalLM.from_pretrained(tmp_path / "same", dtype=torch.float32)
    ids = torch.randint(1, 320, (1, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(compact(ids).logits, model(ids).logits)


def _export_heap_growth(src: Path, out: Path) -> int:
    """Bytes of anonymous memory the export adds at its peak; run in a fresh process, where the heap
    has no free space left behind by earlier work to hide the growth."""
    loaded = load_model(src, "fp32", CPU)
    adapter = adapter_for("llama")
    space = build_unit_space(loaded.model, adapter, None)
    del loaded
    keep = torch.rand(space.size, generator=torch.Generator().manual_seed(0)) > 0.5
    monitor = StageMonitor(CPU)
    with monitor.stage("export"):
        export_pruned(src, out, adapter, space, keep, False)
    summary = monitor.summary()
    return int(summary["host_anon_growth_bytes"]["export"])


@pytest.mark.skipif(anonymous_rss() is None, reason="RssAnon is read from /proc/self/status (Linux only)")
def test_export_holds_about_half_a_shard_not_the_whole_shard(tmp_path: Path) -> None:
    # two ~50 MB shards, half the units go: reading a whole shard before slicing grew the heap by ~0.9 of
    # a shard (the read copies + the sliced copies); slicing each tensor as it is read, by ~0.5
    src = make_tiny_causal_lm(
        tmp_path / "m", "llama", hidden_size=512, intermediate_size=4096, layers=4, max_shard_size="60MB"
    )
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        grown = pool.apply(_export_heap_growth, (src, tmp_path / "o"))
    largest_shard = max(path.stat().st_size for path in src.glob("*.safetensors"))
    assert largest_shard > 40 * 2**20
    assert 0.2 * largest_shard < grown < 0.7 * largest_shard


def test_only_the_checkpoints_side_files_travel(tmp_path: Path) -> None:
    """A Llama-3.x-style directory: its tokenizer, generation config, chat template and license travel;
    its code, `original/` (a second copy of the weights), weights in other formats and other folders do
    not."""
    source, out = tmp_path / "model", tmp_path / "out"
    travel = [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "LICENSE",
        "USE_POLICY.md",
    ]
    stay = [
        "config.json",  # rewritten by the export
        "configuration_custom.py",  # code: only fwdprune's own ships
        "modeling_custom.py",
        "tokenization_custom.py",
        "tokenizer_custom.py",
        "tokenizer_custom.pyc",
        "modeling_fwdprune.py",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "README.md",  # the export writes its own model card
        ".gitattributes",
        "original/consolidated.00.pth",
        "original/params.json",
        "original/tokenizer.model",
        "pytorch_model.bin",
        "training_args.bin",
        "model.pt",
        "flax_model.msgpack",
        "tf_model.h5",
        "model.gguf",
        "onnx/model.onnx",
        "runs/events.out",
        "notes.txt",
    ]
    for name in travel + stay:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(name.encode())
    out.mkdir()
    (out / "config.json").write_text("{}")  # what the export wrote first is kept
    copy_side_files(source, out)
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert copied == sorted([*travel, "config.json"])
    assert all((out / name).read_bytes() == name.encode() for name in travel)
    assert (out / "config.json").read_text() == "{}"


def test_json_side_files_travel_without_the_code_they_name(tmp_path: Path) -> None:
    """`auto_map` (a module beside the weights or in another Hub repo) and `custom_pipelines` leave every
    JSON side file, however the key is spelled in JSON; a file naming no code travels byte for byte."""
    source, out = tmp_path / "model", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    plain = '{"eos_token": "</s>",   "model_max_length": 2048}\n'
    (source / "special_tokens_map.json").write_text(plain)
    (source / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "X", "auto_map": {"AutoTokenizer": ["evil/repo--tok.Evil", None]}})
    )
    (source / "generation_config.json").write_text(
        '{"\\u0061uto_map": {"AutoConfig": "c.C"}, "do_sample": true}'
    )
    (source / "chat_template.json").write_text(
        json.dumps({"custom_pipelines": {}, "chat_template": "{{ x }}"})
    )
    copy_side_files(source, out)
    assert (out / "special_tokens_map.json").read_text() == plain
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"tokenizer_class": "X"}
    assert json.loads((out / "generation_config.json").read_text()) == {"do_sample": True}
    assert json.loads((out / "chat_template.json").read_text()) == {"chat_template": "{{ x }}"}
