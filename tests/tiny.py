"""Tiny real checkpoints built from configs, for tests that must not touch the network.

Each is a genuine Hugging Face checkpoint (config, sharded safetensors with an index, tokenizer), with
random weights, so the whole engine (loading, hooks, export) runs on it exactly as on a large model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pruning.model.adapters import FamilyAdapter
    from pruning.model.units import UnitSpace

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
    "The quick brown fox jumps over the lazy dog.",
    "async def fetch(client, url):\n    return await client.get(url)\n",
]

FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    # Llama with grouped-query attention: 4 query heads over 2 KV heads.
    "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2, sliding_window=64),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2),
    # plain multi-head attention
    "llama-mha": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4),
    # Gemma 3's small shape: 4 query heads in one KV group, a sliding-window layer then a global one, the
    # attention scale from a query scalar unlike the head size, tied embeddings
    "gemma3": dict(
        model_type="gemma3_text",
        num_attention_heads=4,
        num_key_value_heads=1,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=32,
        tie_word_embeddings=True,
    ),
    # Phi-3's fused qkv_proj and gate_up_proj, with grouped-query attention (as Phi-4-mini) and a partial
    # rotary embedding
    "phi3": dict(
        model_type="phi3",
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
    ),
    # mixtures of experts: 6 experts of 32 channels, 2 routed per token, the top-k weights as the softmax
    # gives them (Qwen3-MoE's norm_topk_prob off); Mixtral's 4 experts of the MLP's width, renormalised
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=False,
    ),
    "mixtral": dict(
        model_type="mixtral",
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
}


class TinyModel(NamedTuple):
    """A loaded tiny checkpoint with its family adapter and unit space."""

    model: Any  # a transformers PreTrainedModel
    adapter: FamilyAdapter
    space: UnitSpace


def calibration_text(lines: int = 200) -> str:
    return "\n".join(CORPUS[i % len(CORPUS)] + f"# line {i}" for i in range(lines))


def write_calibration_jsonl(path: Path, records: int = 60) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(records):
            handle.write(json.dumps({"text": calibration_text(8 + i % 5)}) + "\n")
    return path


def save_tiny_tokenizer(out_dir: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(out_dir)


def make_tiny_causal_lm(
    out_dir: Path,
    family: str = "llama",
    *,
    hidden_size: int = 64,
    intermediate_size: int = 96,
    layers: int = 2,
    head_dim: int = 16,
    seed: int = 0,
    max_shard_size: str = "60KB",
    bf16: bool = False,
) -> Path:
    """Save a tiny random causal LM of `family` (see FAMILY_CONFIGS) with a tokenizer to `out_dir`, in
    float32 or (`bf16`) bfloat16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(FAMILY_CONFIGS[family])
    model_type = fields.pop("model_type")
    defaults: dict[str, Any] = dict(
        vocab_size=320,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        head_dim=head_dim,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    config = AutoConfig.for_model(model_type, **{**defaults, **fields})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random init is near-degenerate (tiny std); widen it so units differ clearly in importance
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:  # matrices, and experts stored as [experts, out, in]
                param.normal_(0.0, 0.3 / param.shape[-1] ** 0.5 * (1.0 + torch.rand(()).item()))
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bf16:
        model = model.bfloat16()
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    save_tiny_tokenizer(out_dir)
    return out_dir


def make_tiny_encoder(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 96,
    seed: int = 0,
) -> Path:
    """Save a tiny random BERT encoder with a WordPiece tokenizer (vocab from CORPUS) to `out_dir`."""
    import re

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in CORPUS for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (out_dir / "vocab.txt").write_text(
        "\n".join(specials + words + list("abcdefghijklmnopqrstuvwxyz0123456789")) + "\n"
    )
    tokenizer = BertTokenizerFast(vocab=str(out_dir / "vocab.txt"))
    tokenizer.save_pretrained(out_dir)
    # the saved tokenizer may number added tokens past the vocab file; leave room for them
    config = BertConfig(
        vocab_size=len(tokenizer) + 16,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3 / param.shape[1] ** 0.5 * (1.0 + torch.rand(()).item()))
    model.save_pretrained(out_dir)
    return out_dir
