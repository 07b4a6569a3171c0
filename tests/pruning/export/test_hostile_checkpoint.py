"""A model folder from an untrusted publisher: the export writes only names of its own, inside its output
folder, ships only fwdprune's own code, and writes every file with the mode the umask gives."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pruning import prune
from pruning.errors import UnsupportedModelError
from pruning.export.hf import export_pruned
from pruning.export.nemotron import export_nemotron
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from tests.hostile import (
    assert_no_foreign_code,
    foreign_code_model,
    hostile_index_model,
    sha256,
    victim_file,
)
from tests.pruning.export.test_hf import global_keep, uniform_keep
from tests.tiny import TinyModel, make_tiny_causal_lm

CPU = torch.device("cpu")
SMALL: dict[str, Any] = dict(
    seq_len=32,
    num_samples=8,
    eval_samples=4,
    precision="fp32",
    device="cpu",
    options=dict(rounds=1, samples_per_round=8, scoring_sequences=2, masks_per_forward=8),
)


def loaded(model_dir: Path) -> TinyModel:
    model = load_model(model_dir, "fp32", CPU).model
    adapter = adapter_for("llama")
    return TinyModel(model, adapter, build_unit_space(model, adapter, None))


def masked_logits(tiny: TinyModel, keep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    masks = UnitMasks(tiny.space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        return tiny.model(ids).logits


def stock_logits(out: Path, ids: torch.Tensor) -> torch.Tensor:
    compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        return compact(ids).logits


IDS = torch.randint(1, 320, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- the shard index -------------------------------------------------------------------------------


def test_shards_of_any_name_are_written_under_the_exports_own_names(tiny_llama: Path, tmp_path: Path) -> None:
    """A legitimate sharded checkpoint (index, several shards, no merged file) whose shards have names of
    the publisher's choosing: the export keeps each shard's tensors together, under names of its own,
    and stock transformers loads it to the masked model's logits."""
    source = tmp_path / "renamed"
    shutil.copytree(tiny_llama, source)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    renamed = {
        old: f"weights-{chr(ord('z') - i)}.safetensors"
        for i, old in enumerate(sorted(set(index["weight_map"].values())))
    }
    for old, new in renamed.items():
        (source / old).rename(source / new)
    index["weight_map"] = {name: renamed[shard] for name, shard in index["weight_map"].items()}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    tiny = loaded(source)
    keep = uniform_keep(tiny.space, kv_keep=1, mlp_drop=5)
    expected = masked_logits(tiny, keep, IDS)

    out = tmp_path / "out"
    export_pruned(source, out, tiny.adapter, tiny.space, keep, uniform=True)
    count = len(renamed)
    own = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in out.glob("*.safetensors")) == own
    written = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(written.values()) <= set(own)
    # the input's shards in name order become the output's, one for one
    for number, old_name in enumerate(sorted(renamed.values()), start=1):
        with safe_open(source / old_name, framework="pt") as handle:
            names = set(handle.keys())
        assert {n for n, s in written.items() if s == own[number - 1]} == names
    logits = stock_logits(out, IDS)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_an_index_naming_a_file_outside_the_folder_is_refused_and_the_file_left_alone(
    calibration_file: Path, tmp_path: Path, where: str
) -> None:
    """The merged model.safetensors is what transformers loads; an index beside it naming another
    model's shard by absolute path (or ../) would have the export read that file and write over it."""
    model_dir = tmp_path / "models" / "evil"
    victim = victim_file(
        tmp_path / "models" if where == "relative" else tmp_path / "other",
        make_tiny_causal_lm(tmp_path / "like", max_shard_size="10MB"),
    )
    name = str(victim) if where == "absolute" else f"../{victim.name}"
    hostile_index_model(model_dir, name)
    before = sha256(victim)
    space = build_unit_space(AutoModelForCausalLM.from_pretrained(model_dir), adapter_for("llama"), None)
    keep = uniform_keep(space, kv_keep=1, mlp_drop=5)
    with pytest.raises(UnsupportedModelError, match="not a plain .safetensors file name"):
        export_pruned(model_dir, tmp_path / "out", adapter_for("llama"), space, keep, uniform=True)
    assert sha256(victim) == before
    with pytest.raises(UnsupportedModelError, match="not a plain .safetensors file name"):
        prune(model=str(model_dir), data=calibration_file, out_dir=tmp_path / "pruned", sparsity=0.3, **SMALL)
    assert sha256(victim) == before
    assert not (tmp_path / "pruned").exists() or not any((tmp_path / "pruned").iterdir())


def test_the_merged_file_transformers_loads_is_the_one_pruned(tmp_path: Path) -> None:
    """model.safetensors beside an index of other weights: transformers loads model.safetensors, the
    export slices the same tensors and writes one model.safetensors of its own, with no index."""
    source = make_tiny_causal_lm(tmp_path / "merged", max_shard_size="10MB")
    merged = load_file(source / "model.safetensors")
    save_file(
        {n: torch.zeros_like(t) for n, t in merged.items()}, str(source / "model-00001-of-00001.safetensors")
    )
    index = {"metadata": {}, "weight_map": dict.fromkeys(merged, "model-00001-of-00001.safetensors")}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    tiny = loaded(source)
    keep = uniform_keep(tiny.space, kv_keep=1, mlp_drop=5)
    expected = masked_logits(tiny, keep, IDS)
    out = tmp_path / "out"
    export_pruned(source, out, tiny.adapter, tiny.space, keep, uniform=True)
    assert sorted(p.name for p in out.glob("*.safetensors*")) == ["model.safetensors"]
    logits = stock_logits(out, IDS)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()


# -- foreign code ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return foreign_code_model(tmp_path_factory.mktemp("foreign") / "model")


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_the_inputs_code_never_travels(foreign: Path, tmp_path: Path, uniform: bool) -> None:
    tiny = loaded(foreign)
    keep = uniform_keep(tiny.space, kv_keep=1, mlp_drop=5) if uniform else global_keep(tiny.space)
    out = tmp_path / "out"
    config = export_pruned(foreign, out, tiny.adapter, tiny.space, keep, uniform)
    assert "custom_pipelines" not in config
    assert_no_foreign_code(out, foreign)
    if uniform:
        assert "auto_map" not in config and not list(out.glob("*.py"))
        assert torch.allclose(stock_logits(out, IDS), masked_logits(tiny, keep, IDS), atol=1e-5, rtol=0)
    else:
        assert config["auto_map"] == {"AutoModelForCausalLM": "modeling_fwdprune.FwdPrunedLlamaForCausalLM"}
        assert sorted(p.name for p in out.glob("*.py")) == ["modeling_fwdprune.py"]
        compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
        with torch.no_grad():
            logits = compact(IDS).logits
        assert torch.allclose(logits, masked_logits(tiny, keep, IDS), atol=1e-5, rtol=0)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    source_config = json.loads((foreign / "tokenizer_config.json").read_text())
    assert tokenizer_config == {k: v for k, v in source_config.items() if k != "auto_map"}


def test_the_nemotron_export_ships_only_its_own_modeling_code(tmp_path: Path) -> None:
    source = foreign_code_model(tmp_path / "model", intermediate_size=512)  # a width ffn_mult states
    tiny = loaded(source)
    keep = torch.ones(tiny.space.size, dtype=torch.bool)
    keep[tiny.space.slice(tiny.space.group_of(0, UnitKind.ATTN))] = False
    out = tmp_path / "out"
    written = export_nemotron(source, out, tiny.adapter, tiny.space, keep)
    assert written["auto_map"] == {
        "AutoConfig": "modeling_decilm.DeciLMConfig",
        "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
    }
    assert sorted(p.name for p in out.glob("*.py")) == ["modeling_decilm.py"]
    assert_no_foreign_code(out, source)


# -- file modes ------------------------------------------------------------------------------------


def modes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_every_file_is_written_with_the_mode_the_umask_gives(
    tiny_llama: Path, tmp_path: Path, umask: int, mode: int
) -> None:
    tiny = loaded(tiny_llama)
    old = os.umask(umask)
    try:
        export_pruned(tiny_llama, tmp_path / "hf", tiny.adapter, tiny.space, global_keep(tiny.space), False)
    finally:
        os.umask(old)
    written = modes(tmp_path / "hf")
    assert any(name.endswith(".safetensors") for name in written) and "modeling_fwdprune.py" in written
    assert written == dict.fromkeys(written, mode)


def test_a_pruning_job_writes_every_file_0644_and_none_of_the_inputs_code(
    foreign: Path, calibration_file: Path, tmp_path: Path, umask_022: None
) -> None:
    out = tmp_path / "pruned"
    prune(model=str(foreign), data=calibration_file, out_dir=out, sparsity=0.3, uniform=True, **SMALL)
    written = modes(out)
    assert {"config.json", "README.md", "pruning_report.json", "tokenizer_config.json"} <= set(written)
    assert written == dict.fromkeys(written, 0o644)
    assert_no_foreign_code(out, foreign)
