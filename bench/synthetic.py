"""Random-weight Llama checkpoints of named shapes, for measuring speed and memory (never quality).

    python -m bench.synthetic tiny /tmp/fwdprune-bench/tiny          # checkpoint + calibration text beside it
    python -m bench.synthetic llama2-7b /tmp/fwdprune-bench/llama2-7b --device cuda

A checkpoint is bf16 safetensors in 4 GB shards (weights std 0.02) with a byte-level BPE tokenizer trained on
the calibration text, which is Python source of big stdlib modules: real-looking and always available.
`bench.gpu` builds its checkpoints with `build_checkpoint` in a child process.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "head_dim": 128,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 2048,
        "max_position_embeddings": 2048,
    },
}
STDLIB_MODULES = (
    "typing",
    "argparse",
    "inspect",
    "pathlib",
    "subprocess",
    "threading",
    "logging",
    "dataclasses",
    "collections",
    "enum",
    "functools",
    "ast",
    "difflib",
    "textwrap",
    "tarfile",
    "zipfile",
    "statistics",
    "pydoc",
    "email.message",
    "json.decoder",
    "configparser",
    "calendar",
    "shutil",
)
CALIBRATION_CHARS, DOCUMENT_CHARS = 1_500_000, 4000
SHARD_SIZE = "4GB"


def matmul_params(shape: dict[str, Any]) -> int:
    """Parameters that take part in a matmul for every token: all but the input embedding (lm_head counts,
    since the scoring loss runs it on every token). 2x this is the forward FLOPs per token."""
    hidden, inter, layers, vocab = (
        shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    )
    head_dim = shape.get("head_dim", hidden // shape["num_attention_heads"])
    q = hidden * shape["num_attention_heads"] * head_dim
    kv = 2 * hidden * shape["num_key_value_heads"] * head_dim
    return layers * (2 * q + kv + 3 * hidden * inter) + vocab * hidden


def checkpoint_bytes_estimate(shape: dict[str, Any]) -> int:
    """bf16 bytes of the whole checkpoint (input embedding included)."""
    return 2 * (matmul_params(shape) + shape["vocab_size"] * shape["hidden_size"])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def checkpoint_ready(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in ("config.json", "tokenizer.json")) and any(
        model_dir.glob("*.safetensors")
    )


def calibration_texts() -> list[str]:
    """Python source of big stdlib modules, in DOCUMENT_CHARS-character documents."""
    import inspect

    texts: list[str] = []
    total = 0
    for name in STDLIB_MODULES:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):
            continue
        for start in range(0, len(source), DOCUMENT_CHARS):
            texts.append(source[start : start + DOCUMENT_CHARS])
            total += len(texts[-1])
        if total >= CALIBRATION_CHARS:
            break
    return texts


def write_calibration(path: Path, texts: list[str]) -> None:
    """One `{"text": ...}` line per document; kept if already there (every shape shares it)."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    partial.rename(path)


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on the calibration text: every id < vocab_size, Llama's special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)  # the alphabet and merges stop short of a 32k/128k vocab: fine
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def build_checkpoint(shape_name: str, model_dir: str, data_path: str, device: str) -> dict[str, Any]:
    """Write the calibration text and the checkpoint (skipped if present); initialised straight on `device`
    in bf16, so a 7B shape never has an fp32 copy or a host round trip."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    model_path, start = Path(model_dir), time.perf_counter()
    texts = calibration_texts()
    write_calibration(Path(data_path), texts)
    if checkpoint_ready(model_path):
        return {"status": "ok", "built": False, "checkpoint_bytes": dir_bytes(model_path)}
    partial = model_path.with_name(model_path.name + ".partial")  # renamed when complete: never half-reused
    shutil.rmtree(partial, ignore_errors=True)
    shape = SHAPES[shape_name]
    build_tokenizer(texts, shape["vocab_size"]).save_pretrained(partial)
    config = LlamaConfig(
        **shape, bos_token_id=1, eos_token_id=2, initializer_range=0.02, tie_word_embeddings=False
    )
    init_start = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.synchronize()
    init_s = time.perf_counter() - init_start
    save_start = time.perf_counter()
    model.save_pretrained(partial, max_shard_size=SHARD_SIZE)
    save_s = time.perf_counter() - save_start
    del model
    gc.collect()
    shutil.rmtree(model_path, ignore_errors=True)
    partial.rename(model_path)
    return {
        "status": "ok",
        "built": True,
        "init_s": round(init_s, 2),
        "save_s": round(save_s, 2),
        "build_s": round(time.perf_counter() - start, 2),
        "checkpoint_bytes": dir_bytes(model_path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    parser.add_argument(
        "--data", type=Path, help="calibration .jsonl (default: calib.jsonl beside model_dir)"
    )
    args = parser.parse_args()
    data = args.data or args.model_dir.parent / "calib.jsonl"
    result = build_checkpoint(args.shape, str(args.model_dir), str(data), args.device)
    print(json.dumps({**result, "model_dir": str(args.model_dir), "data": str(data)}, indent=2))


if __name__ == "__main__":
    main()
