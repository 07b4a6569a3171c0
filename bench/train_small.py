"""Small models of the families no package ships weights for, trained here on the webcode task, so the
families benchmark (`bench.families`) prunes learned weights rather than random ones.

Each family's model (4 layers, hidden 192, pycoder-28m's 8192-token tokenizer) is trained from scratch
on `webcode-calib.jsonl` in 256-token sequences for a fixed budget of CPU time (the process's, over all
its threads, so a machine shared with other work trains the same model, only later; AdamW, the learning
rate warmed up and then cosine-decayed over that budget), and saved with its tokenizer under
~/.cache/fwdprune/trained/<family>/ (or $FWDPRUNE_MODEL_CACHE/trained/<family>/), with `train_log.json`
(steps, tokens, final training loss, perplexity on `webcode-dev.jsonl`). A model already there is reused.

    python -m bench.train_small --family gemma3_text [--cpu-minutes 20] [--threads 2]
    python -m bench.train_small --family qwen3_moe --shared ../shared
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from bench import smollm2

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SEQ_LEN = 256
BATCH = 8
PEAK_LR = 2e-3
WARMUP = 0.05  # fraction of the budget spent warming the learning rate up

COMMON: dict[str, Any] = dict(
    vocab_size=8192,
    hidden_size=192,
    num_hidden_layers=4,
    max_position_embeddings=1024,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
FAMILIES: dict[str, dict[str, Any]] = {
    # Gemma 3's shape in small: one KV group per layer, q/k norms, sliding and global layers (5:1 in the
    # real models, 1:1 here), a query scalar apart from the head size, tied embeddings
    "gemma3_text": dict(
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=48,
        intermediate_size=768,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        query_pre_attn_scalar=48,
        tie_word_embeddings=True,
    ),
    # Phi-3's: fused qkv and gate/up projections, multi-head attention (as in Phi-3-mini)
    "phi3": dict(
        num_attention_heads=6,
        num_key_value_heads=6,
        intermediate_size=768,
        tie_word_embeddings=False,
    ),
    # Qwen3-MoE's: 8 experts, 2 routed per token, normalized top-k weights, a load-balancing loss
    "qwen3_moe": dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        intermediate_size=768,
        moe_intermediate_size=192,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        tie_word_embeddings=False,
    ),
}


def default_cache() -> Path:
    return smollm2.default_cache() / "trained"


def token_sequences(tokenizer: Any, path: Path) -> Any:
    """[N, SEQ_LEN] token ids: every record's text, each followed by EOS, cut into whole sequences."""
    import torch

    ids: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            ids.extend(tokenizer(json.loads(line)["text"])["input_ids"])
            ids.append(tokenizer.eos_token_id or 0)
    count = len(ids) // SEQ_LEN
    return torch.tensor(ids[: count * SEQ_LEN]).view(count, SEQ_LEN)


def learning_rate(fraction: float) -> float:
    """Linear warm-up over the first WARMUP of the time, then cosine decay to a tenth of the peak."""
    if fraction < WARMUP:
        return PEAK_LR * fraction / WARMUP
    progress = min(1.0, (fraction - WARMUP) / (1.0 - WARMUP))
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(family: str, shared: Path, out: Path, minutes: float, threads: int, seed: int = 0) -> Path:
    """Train `family`'s small model for `minutes` of CPU time and save it to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer_dir = shared / "models" / "pycoder-28m"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    train_ids = token_sequences(tokenizer, shared / "data" / "webcode-calib.jsonl")
    dev_ids = token_sequences(tokenizer, shared / "data" / "webcode-dev.jsonl")[:64]
    config = AutoConfig.for_model(family, **COMMON, **FAMILIES[family])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, weight_decay=0.1, betas=(0.9, 0.95))
    budget_s, began, step, loss = minutes * 60.0, time.process_time(), 0, float("nan")
    wall = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    while (elapsed := time.process_time() - began) < budget_s:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(elapsed / budget_s)
        batch = train_ids[torch.randint(0, train_ids.shape[0], (BATCH,), generator=generator)]
        output = model(input_ids=batch, labels=batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss, step = float(output.loss.detach()), step + 1
        if step % 50 == 0:
            print(f"{family} step {step} loss {loss:.3f} ({elapsed / 60:.1f} CPU min)", flush=True)
    model.eval()
    model.config.output_router_logits = False  # a training-time switch; inference never needs it
    log = {
        "family": family,
        "cpu_minutes": minutes,
        "wall_minutes": round((time.perf_counter() - wall) / 60.0, 1),
        "threads": threads,
        "steps": step,
        "tokens": step * BATCH * SEQ_LEN,
        "train_sequences": int(train_ids.shape[0]),
        "final_train_loss": round(loss, 4),
        "dev_perplexity": round(dev_perplexity(model, dev_ids), 3),
        "params": sum(p.numel() for p in model.parameters()),
    }
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    (staged / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    staged.rename(out)
    print(json.dumps(log), flush=True)
    return out


def dev_perplexity(model: Any, ids: Any) -> float:
    import torch

    with torch.no_grad():
        losses = [
            float(model(input_ids=ids[i : i + 8], labels=ids[i : i + 8]).loss) for i in range(0, len(ids), 8)
        ]
    return math.exp(sum(losses) / len(losses))


def materialize(family: str, shared: Path = SHARED, minutes: float = 20.0, threads: int = 2) -> Path:
    """The trained checkpoint of `family`, trained first if the cache does not hold it."""
    out = default_cache() / family
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return train(family, shared, out, minutes, threads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU time to train for (at most 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with data/ and models/")
    args = parser.parse_args()
    print(materialize(args.family, args.shared, min(args.cpu_minutes, 30.0), args.threads))


if __name__ == "__main__":
    main()
