"""BERT-family encoders: exact export (uniform and per-layer, emptied blocks included) and distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from pruning import load_pruned, prune
from pruning.errors import UsageError
from pruning.export.hf import export_pruned
from pruning.model.adapters import UnitKind, adapter_for
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from tests.tiny import make_tiny_encoder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("bert") / "model")


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_compact_encoder_matches_masked(tiny_bert: Path, tmp_path: Path, uniform: bool) -> None:
    loaded = load_model(tiny_bert, "fp32", torch.device("cpu"), AutoModel)
    adapter = adapter_for("bert")
    space = build_unit_space(loaded.model, adapter, None)
    assert [g.count for g in space.groups] == [4, 48, 4, 48]  # 4 heads; 96 channels in blocks of 2
    assert space.params[0] == 4 * 16 * 64 and space.params[4] == 2 * 2 * 64
    keep = torch.ones(space.size, dtype=torch.bool)
    for layer in range(2):
        attn, mlp = space.group_of(layer, UnitKind.ATTN), space.group_of(layer, UnitKind.MLP)
        if uniform:
            keep[attn.offset + layer] = False
            keep[mlp.offset + 3 * layer : mlp.offset + 3 * layer + 5] = False
    if not uniform:
        keep[space.slice(space.group_of(0, UnitKind.ATTN))] = False  # layer 0: no attention left
        keep[space.slice(space.group_of(1, UnitKind.MLP))] = False  # layer 1: no MLP left
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(5, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        expected = loaded.model(ids).last_hidden_state
    export_pruned(tiny_bert, tmp_path / "out", adapter, space, keep, uniform)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_fwdprune.FwdPrunedBertModel"
    for compact in (
        load_pruned(tmp_path / "out"),
        AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True),
    ):
        with torch.no_grad():
            assert torch.allclose(compact(ids).last_hidden_state, expected, atol=1e-5)


def test_distill_prune_reports_embedding_cosine(tiny_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"def f{i}(a, b):\n    return a + b * {i}\n" for i in range(200)))
    report = prune(
        model=str(tiny_bert),
        data=data,
        sparsity=0.3,
        out_dir=tmp_path / "out",
        seq_len=16,
        num_samples=8,
        eval_samples=4,
        precision="fp32",
        device="cpu",
        options=dict(rounds=2, samples_per_round=16, scoring_sequences=2),
    )
    cosine = report.embedding_cosine
    assert cosine is not None and cosine.before == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < cosine.after < 1.0
    assert report.perplexity is None and report.calibration_loss.objective == "distill"
    assert abs(report.sparsity.achieved - 0.3) <= report.sparsity.max_unit_fraction


def test_encoders_have_no_next_token_loss(tiny_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("def f(a, b):\n    return a + b\n" * 100)
    with pytest.raises(UsageError, match="no next-token loss"):
        prune(
            model=str(tiny_bert),
            data=data,
            sparsity=0.3,
            out_dir=tmp_path / "o",
            seq_len=16,
            num_samples=4,
            eval_samples=2,
            objective="lm",
            device="cpu",
        )


def test_ls_refit_encoder_exported_exactly(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from pruning.model.data import load_calibration

    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"def f{i}(a, b):\n    return a + b * {i}\n" for i in range(400)))
    report = prune(
        model=str(tiny_bert),
        data=data,
        sparsity=0.3,
        out_dir=tmp_path / "out",
        seq_len=16,
        num_samples=48,
        eval_samples=4,
        precision="fp32",
        device="cpu",
        uniform=False,
        compensate="ls",
        options=dict(rounds=2, samples_per_round=16, scoring_sequences=2),
    )
    assert report.compensation == "ls"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = load_calibration(tokenizer, data, 16, 48, 4, wrap=True).evaluation  # the report's held-out ids
    dense = AutoModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(
            load_pruned(tmp_path / "out")(ids).last_hidden_state.mean(1),
            dense(ids).last_hidden_state.mean(1),
            dim=-1,
        )
    assert float(cosine.mean()) == pytest.approx(report.embedding_cosine.after, abs=1e-5)
