"""What a pruned model buys at inference: dense vs pruned prefill and greedy-decode tokens/s.

    python -m bench.gpu --shape llama2-7b        # runs `inference_step` once per shape, after the prunes

Both checkpoints are loaded one after the other in one process, in bf16 on CUDA (fp32 on CPU, where bf16
matmuls are slow), with Hugging Face's own forward and `generate`. At each batch size in INFER_BATCHES:
  prefill  a [batch, PREFILL_LEN] forward that keeps only the last logits, best of 5 after two warm-ups
  decode   DECODE_NEW greedy tokens after a DECODE_PROMPT-token prompt (generate's own prefill included),
           best of 2 after a shorter warm-up generation
Speedups are pruned tokens/s over dense tokens/s, per batch size.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from bench.isolate import log, send
from bench.synthetic import dir_bytes
from bench.timing import timed

PREFILL_LEN, DECODE_PROMPT, DECODE_NEW, WARMUP_NEW = 512, 128, 128, 32
INFER_BATCHES = (1, 8, 32)
HEADLINE_BATCH = 8  # the batch whose speedups are each configuration's prefill_speedup and decode_speedup


def prefill_tokens_per_s(model: Any, prompt: Any, device: str) -> float:
    import torch

    def forward() -> Any:
        return model(input_ids=prompt, use_cache=False, logits_to_keep=1)

    with torch.inference_mode():
        forward()  # a warm-up besides timed's: the first calls pay for kernel selection and allocation
        seconds = min(timed(forward, device, repeats=5))
    return prompt.numel() / seconds


def decode_tokens_per_s(model: Any, prompt: Any, device: str) -> float:
    import torch

    def generate(new_tokens: int) -> Any:
        return model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=2,
        )

    with torch.inference_mode():
        generate(WARMUP_NEW)  # kernels and the cache's allocation, at a fraction of the timed run's cost
        seconds = min(timed(lambda: generate(DECODE_NEW), device, repeats=2, warmup=False))
    return prompt.shape[0] * DECODE_NEW / seconds


def measure(model: Any, device: str) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s of `model` at each batch size, on random prompts (ids past the
    special tokens)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    result: dict[str, dict[str, float]] = {"prefill_tokens_per_s": {}, "decode_tokens_per_s": {}}
    for batch in INFER_BATCHES:
        prompt = torch.randint(3, vocab, (batch, PREFILL_LEN), generator=generator).to(device)
        result["prefill_tokens_per_s"][str(batch)] = round(prefill_tokens_per_s(model, prompt, device), 1)
        prompt = torch.randint(3, vocab, (batch, DECODE_PROMPT), generator=generator).to(device)
        result["decode_tokens_per_s"][str(batch)] = round(decode_tokens_per_s(model, prompt, device), 1)
    return result


def speedups(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """Pruned over dense, per batch, and at HEADLINE_BATCH."""
    found: dict[str, Any] = {}
    for metric in ("prefill", "decode"):
        key = f"{metric}_tokens_per_s"
        by_batch = {batch: round(pruned[key][batch] / dense[key][batch], 3) for batch in dense[key]}
        found[f"{metric}_speedup_by_batch"] = by_batch
        found[f"{metric}_speedup"] = by_batch[str(HEADLINE_BATCH)]
    return found


def inference_step(dense_dir: str, pruned_dir: str, device: str) -> dict[str, Any]:
    """Dense then pruned, each loaded, measured, sent to the parent and freed before the next."""
    import torch
    from transformers import AutoModelForCausalLM

    from pruning import load_pruned

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    loaders = {
        "dense": lambda: AutoModelForCausalLM.from_pretrained(
            dense_dir, dtype=dtype, device_map={"": device}
        ),
        "pruned": lambda: load_pruned(pruned_dir, dtype=dtype, device_map={"": device}),
    }
    measured: dict[str, Any] = {}
    for name, load in loaders.items():
        model = load().eval()
        measured[name] = measure(model, device)
        log(f"inference: {name} {measured[name]}")
        send(name, measured[name])
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {
        "status": "ok",
        "dtype": str(dtype).removeprefix("torch."),
        **measured,
        **speedups(measured["dense"], measured["pruned"]),
        "dense_bytes_on_disk": dir_bytes(Path(dense_dir)),
        "pruned_bytes_on_disk": dir_bytes(Path(pruned_dir)),
    }
