"""What every decoder family's tests check: the compact checkpoint computes what the masked model computed
(logits to 1e-5 in fp32, greedy generation with the cache token for token), and `pruning.prune` end to
end writes a checkpoint whose perplexity is the report's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from pruning import load_pruned, prune
from pruning.export.hf import export_pruned
from pruning.model.adapters import adapter_for
from pruning.model.data import load_calibration
from pruning.model.loading import load_model
from pruning.model.masking import UnitMasks
from pruning.model.units import build_unit_space
from tests.tiny import TinyModel

CPU = torch.device("cpu")
BONSAI = dict(rounds=2, samples_per_round=16, scoring_sequences=2, masks_per_forward=8)
SMALL: dict[str, Any] = dict(seq_len=32, num_samples=8, eval_samples=4, device="cpu")


def load_tiny(source: Path, precision: str = "fp32") -> TinyModel:
    loaded = load_model(source, precision, CPU)
    adapter = adapter_for(loaded.model.config.model_type)
    return TinyModel(loaded.model, adapter, build_unit_space(loaded.model, adapter, None))


def masked_outputs(tiny: TinyModel, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of two random sequences, greedy continuation of a prompt with the cache) of the model
    masked to `keep`."""
    ids, prompt = sample_inputs(tiny.model.config.vocab_size)
    masks = UnitMasks(tiny.space)
    with torch.no_grad(), masks.installed():
        masks.set(keep.double())
        logits = tiny.model(ids).logits
        tokens = tiny.model.generate(
            prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
        )
    assert not torch.allclose(logits, tiny.model(ids).logits, atol=1e-3)  # the masks matter
    return logits, tokens


def sample_inputs(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    return ids, ids[:1, :6]


def assert_compact_matches(compact: Any, logits: torch.Tensor, tokens: torch.Tensor) -> None:
    ids, prompt = sample_inputs(compact.config.vocab_size)
    with torch.no_grad():
        got = compact(ids).logits
        assert torch.allclose(got, logits, atol=1e-5, rtol=0), (got - logits).abs().max()
        generated = compact.generate(
            prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
        )
    assert torch.equal(generated, tokens)


def export_and_compare(source: Path, out: Path, keep: torch.Tensor, uniform: bool) -> list[Any]:
    """Export `source` pruned to `keep` and check every way of loading it against the masked model;
    returns the loaded compact models (stock loader for uniform widths, remote code and `load_pruned`
    otherwise)."""
    tiny = load_tiny(source)
    logits, tokens = masked_outputs(tiny, keep)
    export_pruned(source, out, tiny.adapter, tiny.space, keep, uniform)
    if uniform:
        assert not (out / "modeling_fwdprune.py").exists()
        compacts = [AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)]
    else:
        compacts = [
            AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True),
            load_pruned(out, dtype=torch.float32),
        ]
    for compact in compacts:
        assert_compact_matches(compact, logits, tokens)
    return compacts


def prune_tiny(source: Path, data: Path, out: Path, **overrides: Any) -> Any:
    fields: dict[str, Any] = {**SMALL, "sparsity": 0.4, "precision": "fp32", **overrides}
    if fields.get("method", "bonsai") == "bonsai":
        fields.setdefault("options", BONSAI)
    return prune(model=str(source), data=data, out_dir=out, **fields)


def compact_perplexity(out: Path, data: Path, num_samples: int = SMALL["num_samples"]) -> float:
    """Perplexity of the exported checkpoint on the report's held-out sequences (those after the job's
    `num_samples` calibration ones), from plain logits."""
    model = load_pruned(out, dtype=torch.float32)
    ids = load_calibration(AutoTokenizer.from_pretrained(out), data, 32, num_samples, 4).evaluation
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return math.exp(float(nll.double().mean()))


def keep_of(report: Any) -> torch.Tensor:
    return torch.tensor([u.kept for u in report.units])
