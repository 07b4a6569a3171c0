"""GPU benchmark: time and memory of pruning 7B/8B-shaped Llamas, and what the pruned model buys at inference.

    python -m bench.gpu                                  # llama2-7b (then llama3-8b if time remains), int8 + bf16
    python -m bench.gpu --shape llama3-8b --precisions int8
    python -m bench.gpu --shape tiny                     # CPU smoke test of the whole script

Weights are random (std 0.02) and the calibration text is stdlib Python source: the numbers are about speed
and memory, never quality. In order of importance, under `--budget-s`:
  a. build the checkpoint (sharded bf16 safetensors + a byte-level BPE tokenizer) under --work-dir
  b./d. per precision: a probe (load, one timed scoring forward, batched-vs-single masks), then
        `pruning.prune` at 50% uniform with the default bonsai options, `samples_per_round` shrunk only
        if the probe says the defaults do not fit the time left (the budget used is recorded)
  e. dense vs pruned inference speed (prefill and greedy decode, batch 1 and 8) in bf16
  f. the next shape, if time remains
Every step runs in its own spawned process, so each gets clean GPU/host memory figures and a step past the
hard limit can be killed without losing the others. The JSON is rewritten after every step.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                  "max_position_embeddings": 4096},
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "head_dim": 128,
                  "rope_theta": 500000.0, "max_position_embeddings": 8192},
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 2048},
}
SPARSITY, NUM_SAMPLES, EVAL_SAMPLES, SEQ_LEN = 0.5, 32, 8, 256
RATIO_MASKS, RATIO_SEQUENCES = 32, 4  # batched-vs-single: sub-models evaluated, sequences each
PREFILL_LEN, DECODE_PROMPT, DECODE_NEW, INFER_BATCHES = 512, 128, 128, (1, 8)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM), by device name
STDLIB_MODULES = ("typing", "argparse", "inspect", "pathlib", "subprocess", "threading", "logging", "dataclasses",
                  "collections", "enum", "functools", "ast", "difflib", "textwrap", "tarfile", "zipfile",
                  "statistics", "pydoc", "email.message", "json.decoder", "configparser", "calendar", "shutil")
T0 = time.time()  # wall clock shared with children through absolute deadlines


def log(message: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# shapes, sizes and files


def matmul_params(shape: dict[str, Any]) -> int:
    """Parameters that take part in a matmul for every token: all but the input embedding (lm_head counts,
    since the scoring loss runs it on every token). 2x this is the forward FLOPs per token."""
    h, inter, layers, vocab = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "vocab_size"))
    head_dim = shape.get("head_dim", h // shape["num_attention_heads"])
    q = h * shape["num_attention_heads"] * head_dim
    kv = 2 * h * shape["num_key_value_heads"] * head_dim
    return layers * (2 * q + kv + 3 * h * inter) + vocab * h


def checkpoint_bytes_estimate(shape: dict[str, Any]) -> int:
    """bf16 bytes of the whole checkpoint (embedding included)."""
    return 2 * (matmul_params(shape) + shape["vocab_size"] * shape["hidden_size"])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def checkpoint_ready(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in ("config.json", "tokenizer.json")) and any(
        model_dir.glob("*.safetensors"))


def device_name(device: str) -> str:
    """The GPU's name from nvidia-smi, so the parent never opens a CUDA context (it would skew memory)."""
    if device != "cuda":
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "cuda"


def slug(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").split())


# ---------------------------------------------------------------------------------------------------------
# step (a): checkpoint, tokenizer and calibration text (runs in a child process)


def calibration_texts(max_chars: int = 1_500_000) -> list[str]:
    """Python source of big stdlib modules, in ~4k-character documents: real-looking, always available."""
    import inspect

    texts: list[str] = []
    total = 0
    for name in STDLIB_MODULES:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):
            continue
        for start in range(0, len(source), 4000):
            texts.append(source[start : start + 4000])
            total += len(texts[-1])
        if total >= max_chars:
            break
    return texts


def write_calibration(path: Path, texts: list[str]) -> None:
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tmp.rename(path)


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on the calibration text: every id < vocab_size, Llama's special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)  # the alphabet and merges stop short of a 32k/128k vocab: fine
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def build_job(send: Callable[[str, Any], None], shape_name: str, model_dir: str, data_path: str,
              device: str) -> dict[str, Any]:
    """Random-weight checkpoint straight on the device in bf16, saved as 4 GB shards; skipped if present."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    model_dir_p, start = Path(model_dir), time.perf_counter()
    texts = calibration_texts()
    write_calibration(Path(data_path), texts)
    if checkpoint_ready(model_dir_p):
        log(f"build: {model_dir} already present")
        return {"built": False, "checkpoint_bytes": dir_bytes(model_dir_p)}
    partial = model_dir_p.with_name(model_dir_p.name + ".partial")  # renamed when complete: never half-reused
    shutil.rmtree(partial, ignore_errors=True)
    shape = SHAPES[shape_name]
    build_tokenizer(texts, shape["vocab_size"]).save_pretrained(partial)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
                         tie_word_embeddings=False)
    init_start = time.perf_counter()
    with torch.device(device):  # bf16 from the start: no fp32 copy of 7B weights, no host round trip
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.synchronize()
    init_s = time.perf_counter() - init_start
    log(f"build: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params initialised in {init_s:.1f}s")
    save_start = time.perf_counter()
    model.save_pretrained(partial, max_shard_size="4GB")
    save_s = time.perf_counter() - save_start
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(model_dir_p, ignore_errors=True)
    partial.rename(model_dir_p)
    log(f"build: saved {dir_bytes(model_dir_p) / 1e9:.1f} GB in {save_s:.1f}s")
    return {"built": True, "init_s": round(init_s, 2), "save_s": round(save_s, 2),
            "build_s": round(time.perf_counter() - start, 2), "checkpoint_bytes": dir_bytes(model_dir_p)}


# ---------------------------------------------------------------------------------------------------------
# timing and memory helpers (children only)


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any, repeats: int = 1, warmup: bool = True) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after one untimed warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class DeviceMemorySampler:
    """Device-wide used memory (what nvidia-smi shows: every context, fragmentation) per stage, every 50 ms."""

    def __init__(self, device: str) -> None:
        self.enabled = device == "cuda"
        self.stage = "start"
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            stage = self.stage
            self.peak[stage] = max(self.peak.get(stage, 0), total - free)
            self._stop.wait(0.05)

    @contextmanager
    def running(self) -> Iterator[DeviceMemorySampler]:
        if self.enabled:
            self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if self.enabled:
                self._thread.join()


class BudgetExceeded(RuntimeError):
    """Raised from the event sink to stop a prune that would run past the hard limit."""


# ---------------------------------------------------------------------------------------------------------
# steps (b)-(d): probe then prune, one precision per child process


def random_keeps(count: int, units: int, generator: Any, drop: float = 0.2) -> Any:
    import torch

    return (torch.rand(count, units, generator=generator) > drop).double()


def batched_vs_single(runner: Any, masks: Any, units: int, batch: Any, per_forward: int, device: Any) -> dict:
    """The same RATIO_MASKS sub-models, `per_forward` per replicated forward vs one forward each."""
    import torch

    keeps = random_keeps(RATIO_MASKS, units, torch.Generator().manual_seed(1))
    results: dict[str, Any] = {}

    def batched() -> None:
        results["batched"] = torch.cat([_replica_losses(runner, masks, chunk, batch)
                                        for chunk in keeps.split(per_forward)])

    def single() -> None:
        results["single"] = torch.cat([_replica_losses(runner, masks, row[None], batch) for row in keeps])

    batched_s = min(timed(batched, device, repeats=2))
    single_s = min(timed(single, device, repeats=2))
    return {"masks": RATIO_MASKS, "sequences": int(batch.shape[0]), "seq_len": int(batch.shape[1]),
            "masks_per_forward": per_forward, "batched_s": round(batched_s, 4), "single_s": round(single_s, 4),
            "ratio": round(single_s / batched_s, 3),
            # the two paths must agree: a cheap guard that the replicated batch really is per-mask
            "max_loss_diff": float((results["batched"] - results["single"]).abs().max())}


def _replica_losses(runner: Any, masks: Any, keeps: Any, batch: Any) -> Any:
    masks.set(keeps)
    return runner.replica_losses(batch, keeps.shape[0])


def probe(model_dir: str, precision: str, device: str, data_path: str, options: Any) -> dict[str, Any]:
    """Load as prune will, time one scoring forward at the default shape, and measure batched vs single."""
    import torch

    from pruning.adapters import adapter_for
    from pruning.data import load_calibration
    from pruning.evaluation import make_objective
    from pruning.loading import load_model
    from pruning.masking import UnitMasks
    from pruning.spec import read_model_type
    from pruning.units import build_unit_space, default_mlp_block

    adapter = adapter_for(read_model_type(Path(model_dir)))
    dev = torch.device(device)
    start = time.perf_counter()
    loaded = load_model(Path(model_dir), precision, dev, adapter.auto_class())
    synchronize(dev)
    load_s = time.perf_counter() - start
    data = load_calibration(loaded.tokenizer, Path(data_path), SEQ_LEN, NUM_SAMPLES, EVAL_SAMPLES)
    inter = adapter.layer_shapes(loaded.model.config)[0].intermediate
    space = build_unit_space(loaded.model, adapter, math.gcd(default_mlp_block(inter), inter))  # as uniform
    masks = UnitMasks(space)
    runner = make_objective(None, loaded.model, adapter, dev, masks)
    with masks.installed():
        keeps = random_keeps(options.masks_per_forward, space.size, torch.Generator().manual_seed(0))
        batch = data.calibration[: options.scoring_sequences]
        forward_s = min(timed(lambda: _replica_losses(runner, masks, keeps, batch), dev, repeats=2))
        ratio = batched_vs_single(runner, masks, space.size, data.calibration[:RATIO_SEQUENCES],
                                  options.masks_per_forward, dev)
    tokens = options.masks_per_forward * int(batch.numel())
    return {"load_s": round(load_s, 2), "scoring_forward_s": round(forward_s, 4), "scoring_forward_tokens": tokens,
            "probe_tokens_per_s": round(tokens / forward_s, 1), "batched_vs_single": ratio}


def estimate_scoring_s(options: Any, samples_per_round: int, seconds_per_token: float) -> float:
    """Bonsai's scoring forwards: per round, the sub-models' replicated batches and one activation-prior pass
    over the calibration set; +10% and 2 s a round for hooks and the regression."""
    tokens = options.rounds * (samples_per_round * options.scoring_sequences + NUM_SAMPLES) * SEQ_LEN
    return tokens * seconds_per_token * 1.1 + 2.0 * options.rounds


def plan_samples_per_round(options: Any, seconds_per_token: float, allowance_s: float) -> int:
    """The default samples_per_round, or the largest multiple of masks_per_forward under the allowance."""
    step = options.masks_per_forward
    samples = options.samples_per_round
    while samples > step and estimate_scoring_s(options, samples, seconds_per_token) > allowance_s:
        samples -= step
    return samples


def precision_job(send: Callable[[str, Any], None], shape_name: str, model_dir: str, data_path: str,
                  out_dir: str, precision: str, device: str, job_end: float, abort_at: float,
                  samples_per_round: int | None, peak_flops: float | None,
                  masks_per_forward: int | None = None) -> dict[str, Any]:
    """Probe, choose the scoring budget, prune, and summarise one precision of one shape."""
    import torch

    from pruning import PruneSpec, prune
    from pruning.spec import BonsaiOptions

    forced = {"masks_per_forward": masks_per_forward} if masks_per_forward else {}
    defaults = BonsaiOptions(**forced)
    log(f"{shape_name}/{precision}: probe")
    found = probe(model_dir, precision, device, data_path, defaults)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        found["allocated_after_probe_bytes"] = torch.cuda.memory_allocated()  # ~0 unless the probe leaked
    ratio = found["batched_vs_single"]
    log(f"{shape_name}/{precision}: load {found['load_s']}s, {found['probe_tokens_per_s']:.0f} tok/s scoring, "
        f"batched/single {ratio['ratio']}x (loss diff {ratio['max_loss_diff']:.2g})")
    send("probe", found)

    per_token = found["scoring_forward_s"] / found["scoring_forward_tokens"]
    ckpt = dir_bytes(Path(model_dir))
    # load again + two evaluations of (calibration + held-out) + export (reads all, writes half) + slack
    overhead = found["load_s"] + 2 * (NUM_SAMPLES + EVAL_SAMPLES) * SEQ_LEN * per_token * 1.5 + ckpt / 1e9 + 10
    allowance = job_end - time.time() - overhead
    chosen = samples_per_round or plan_samples_per_round(defaults, per_token, allowance)
    options = {**forced, **({"samples_per_round": chosen} if chosen != defaults.samples_per_round else {})}
    estimate = estimate_scoring_s(defaults, chosen, per_token)
    plan = {"samples_per_round": chosen, "samples_per_round_default": defaults.samples_per_round,
            "scoring_allowance_s": round(allowance, 1), "scoring_estimate_s": round(estimate, 1),
            "scoring_estimate_default_s": round(estimate_scoring_s(defaults, defaults.samples_per_round,
                                                                   per_token), 1)}
    log(f"{shape_name}/{precision}: samples_per_round {chosen} (default {defaults.samples_per_round}), "
        f"scoring ≈{estimate:.0f}s of {allowance:.0f}s allowed; defaults would take ≈"
        f"{plan['scoring_estimate_default_s']:.0f}s")
    if estimate + overhead > abort_at - time.time():
        return {"status": "skipped", "reason": f"scoring ≈{estimate:.0f}s + ≈{overhead:.0f}s does not fit the time left",
                "probe": found, "plan": plan}

    spec = PruneSpec(model=model_dir, data=Path(data_path), sparsity=SPARSITY, out_dir=Path(out_dir),
                     precision=precision, device=device, num_samples=NUM_SAMPLES, eval_samples=EVAL_SAMPLES,
                     seq_len=SEQ_LEN, uniform=True, options=options)
    sampler = DeviceMemorySampler(device)
    with sampler.running():
        on_event = event_sink(f"{shape_name}/{precision}", sampler, abort_at)
        try:
            report = prune(spec, on_event)
        except BudgetExceeded as err:
            return {"status": "aborted", "reason": str(err), "probe": found, "plan": plan,
                    "device_used_bytes": sampler.peak}
    return summarise(report, found, plan, sampler.peak, shape_name, peak_flops)


def event_sink(label: str, sampler: DeviceMemorySampler, abort_at: float) -> Callable[[dict[str, Any]], None]:
    """Prints progress, labels the memory sampler's stage, and stops the prune (between forwards) once the
    hard limit is near."""
    last_print = [0.0]
    seen_scoring = [False]

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "stage":
            stage = event["stage"]
            if stage == "evaluate":
                stage = "evaluate_pruned" if seen_scoring[0] else "evaluate_dense"
            seen_scoring[0] |= stage == "scoring"
            sampler.stage = stage
            log(f"{label}: stage {stage}")
        elif event["type"] == "progress":
            if time.time() > abort_at:
                raise BudgetExceeded(f"hard time limit reached during scoring (round {event.get('round')})")
            if time.time() - last_print[0] > 10:
                last_print[0] = time.time()
                log(f"{label}: round {event['round']}/{event['rounds']} {100 * event['fraction']:.0f}% "
                    f"eta {event['eta_s']}s")
        elif event["type"] in ("warning", "metric"):
            log(f"{label}: {event}")

    return on_event


def summarise(report: dict[str, Any], found: dict[str, Any], plan: dict[str, Any], device_used: dict[str, int],
              shape_name: str, peak_flops: float | None) -> dict[str, Any]:
    """The benchmark's view of one prune report."""
    scoring_s = report["stage_s"]["scoring"]
    scoring_tokens = report["forward_tokens_by_stage"]["scoring"]
    tokens_per_s = scoring_tokens / scoring_s
    flop_params = matmul_params(SHAPES[shape_name])
    gpu = report.get("peak_gpu_bytes", {})
    return {
        "status": "ok",
        "total_s": report["total_s"],
        "stage_s": report["stage_s"],
        "peak_gpu_bytes": gpu,
        "peak_gpu_bytes_max": max(gpu.values(), default=None),
        "peak_gpu_reserved_bytes": report.get("peak_gpu_reserved_bytes", {}),
        "device_used_bytes": device_used,
        "device_used_bytes_max": max(device_used.values(), default=None),
        "peak_host_rss_bytes": report["peak_host_rss_bytes"],
        "peak_host_rss_bytes_max": max(report["peak_host_rss_bytes"].values()),
        # RSS counts the mapped shards' pages; the anonymous part is what the process holds itself
        "peak_host_anon_bytes": report.get("peak_host_anon_bytes", {}),
        "host_anon_at_start_bytes": report.get("host_anon_at_start_bytes", {}),
        "export_host_anon_growth_bytes": report.get("host_anon_growth_bytes", {}).get("export"),
        "forward_tokens": report["forward_tokens"],
        "forward_passes": report["forward_passes"],
        "scoring_tokens": scoring_tokens,
        "scoring_tokens_per_s": round(tokens_per_s, 1),
        "flop_params": flop_params,
        "mfu": round(2 * flop_params * tokens_per_s / peak_flops, 4) if peak_flops else None,
        # what scoring with the default options would take at the measured rate
        "scoring_s_projected_default": round(scoring_s * _default_tokens() / scoring_tokens, 1),
        "batched_vs_single_ratio": found["batched_vs_single"]["ratio"],
        "batched_vs_single": found["batched_vs_single"],
        "probe": {k: v for k, v in found.items() if k != "batched_vs_single"},
        "plan": plan,
        "options": report["settings"]["options"],
        "params": report["params"],
        "sparsity": report["sparsity"],
        "layers_after": report["layers"][0],
        "perplexity": report.get("perplexity"),
        "out_dir": report["out_dir"],
    }


def _default_tokens() -> int:
    from pruning.spec import BonsaiOptions

    opts = BonsaiOptions()
    return opts.rounds * (opts.samples_per_round * opts.scoring_sequences + NUM_SAMPLES) * SEQ_LEN


# ---------------------------------------------------------------------------------------------------------
# step (e): inference speed, dense vs pruned (one child for both, loaded one after the other)


def measure_inference(model: Any, device: str) -> dict[str, Any]:
    """Prefill tokens/s ([b, 512] forward, last logits only) and greedy decode tokens/s (128 new tokens after
    a 128-token prompt, generate's own prefill included) at each batch size."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    result: dict[str, Any] = {"prefill_tokens_per_s": {}, "decode_tokens_per_s": {}}
    for batch in INFER_BATCHES:
        prompt = torch.randint(3, vocab, (batch, PREFILL_LEN), generator=generator).to(device)
        with torch.inference_mode():
            forward = lambda p=prompt: model(input_ids=p, use_cache=False, logits_to_keep=1)  # noqa: E731
            forward()  # an extra warm-up: first calls in a process pay for kernel selection and allocation
            seconds = min(timed(forward, device, repeats=5))
        result["prefill_tokens_per_s"][str(batch)] = round(batch * PREFILL_LEN / seconds, 1)

        prompt = torch.randint(3, vocab, (batch, DECODE_PROMPT), generator=generator).to(device)

        def generate(new: int, p: Any = prompt) -> Any:
            return model.generate(input_ids=p, attention_mask=torch.ones_like(p), do_sample=False,
                                  min_new_tokens=new, max_new_tokens=new, pad_token_id=2)

        with torch.inference_mode():
            generate(32)  # warm-up: kernels, cache allocation
            seconds = min(timed(lambda: generate(DECODE_NEW), device, repeats=2, warmup=False))
        result["decode_tokens_per_s"][str(batch)] = round(batch * DECODE_NEW / seconds, 1)
    return result


def inference_job(send: Callable[[str, Any], None], dense_dir: str, pruned_dir: str, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from pruning import load_pruned

    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # bf16 matmuls are slow on CPU
    loaders = {"dense": lambda: AutoModelForCausalLM.from_pretrained(dense_dir, dtype=dtype,
                                                                      device_map={"": device}),
               "pruned": lambda: load_pruned(pruned_dir, dtype=dtype, device_map={"": device})}
    measured: dict[str, Any] = {}
    for name, load in loaders.items():
        model = load().eval()
        log(f"inference: {name} loaded")
        measured[name] = measure_inference(model, device)
        log(f"inference: {name} {measured[name]}")
        send(name, measured[name])
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    speedups = {}
    for metric in ("prefill", "decode"):
        key = f"{metric}_tokens_per_s"
        by_batch = {b: round(measured["pruned"][key][b] / measured["dense"][key][b], 3)
                    for b in measured["dense"][key]}
        speedups[f"{metric}_speedup_by_batch"] = by_batch
        speedups[f"{metric}_speedup"] = by_batch[str(INFER_BATCHES[-1])]  # the batch-8 headline
    return {"status": "ok", "dtype": str(dtype).removeprefix("torch."), **measured, **speedups,
            "dense_bytes_on_disk": dir_bytes(Path(dense_dir)), "pruned_bytes_on_disk": dir_bytes(Path(pruned_dir))}


# ---------------------------------------------------------------------------------------------------------
# the parent: isolation, budget, JSON


def child_main(job_name: str, kwargs: dict[str, Any], messages: Any) -> None:
    """Entry point of a spawned step: runs bench.gpu.<job_name>, sends its messages and its result."""
    global T0
    T0 = kwargs.pop("t0")
    try:
        job = getattr(importlib.import_module("bench.gpu"), job_name)
        result = job(lambda kind, payload: messages.put((kind, payload)), **kwargs)
        messages.put(("done", result))
    except Exception as err:  # reported to the parent, which records it and moves on
        traceback.print_exc()
        messages.put(("done", {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}))
    finally:
        messages.close()
        messages.join_thread()


def run_isolated(job_name: str, kwargs: dict[str, Any], kill_at: float,
                 on_message: Callable[[str, Any], None]) -> dict[str, Any]:
    """Run a job in a fresh spawned process (clean CUDA context and RSS); kill it at `kill_at`."""
    context = mp.get_context("spawn")
    messages = context.Queue()
    worker = importlib.import_module("bench.gpu")  # picklable by module path even when run as __main__
    process = context.Process(target=worker.child_main, args=(job_name, {**kwargs, "t0": T0}, messages))
    process.start()
    result: dict[str, Any] = {"status": "failed", "error": "the process exited without a result"}
    while True:
        try:
            kind, payload = messages.get(timeout=1.0)
        except queue.Empty:
            if time.time() > kill_at:
                process.kill()
                result = {"status": "killed", "error": "ran past the hard time limit"}
                break
            if not process.is_alive() and messages.empty():
                result["exitcode"] = process.exitcode
                break
            continue
        if kind == "done":
            result = payload
            break
        on_message(kind, payload)
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
    return result


class Bench:
    """Budget, results and the JSON file, rewritten after every step."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.args, self.out = args, args.out
        self.deadline = T0 + args.budget_s
        self.hard = T0 + (args.hard_limit_s or args.budget_s + 25)
        self.data: dict[str, Any] = {
            "device": name, "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {"sparsity": SPARSITY, "uniform": True, "num_samples": NUM_SAMPLES,
                         "eval_samples": EVAL_SAMPLES, "seq_len": SEQ_LEN, "method": "bonsai",
                         "mfu_definition": "2 * flop_params * scoring_tokens_per_s / peak_flops "
                                           "(flop_params: all but the input embedding; masks do not skip "
                                           "compute; int8 measured against the bf16 peak too)",
                         "peak_flops": args.peak_flops},
            "versions": versions(), "shapes": {}, "configs": [], "inference": {}, "skipped": []}
        if args.append and self.out.is_file():  # one JSON from several device calls (each under 10 minutes)
            earlier = json.loads(self.out.read_text())
            for key in ("shapes", "inference"):
                self.data[key] = {**earlier.get(key, {}), **self.data[key]}
            for key in ("configs", "skipped"):
                self.data[key] = earlier.get(key, []) + self.data[key]
            self.data["runs"] = earlier.get("runs", [{"started": earlier.get("started"),
                                                      "budget_s": earlier.get("budget_s")}])
            self.data["runs"].append({"started": self.data["started"], "budget_s": args.budget_s})

    def remaining(self) -> float:
        return self.deadline - time.time()

    def skip(self, step: str, reason: str) -> None:
        log(f"skip {step}: {reason}")
        self.data["skipped"].append({"step": step, "reason": reason})
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - T0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".partial")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.out)


def versions() -> dict[str, str]:
    """From package metadata: importing bitsandbytes here would open a CUDA context in the parent."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unavailable"
    return found


def inference_reserve_s(ckpt_bytes: int) -> float:
    """Two bf16 loads from the page cache, prefill and ~6 decode runs of 128 tokens."""
    return 2 * (ckpt_bytes / 1.5e9 + 8) + 35


def run_shape(bench: Bench, shape_name: str, first: bool) -> None:
    args = bench.args
    work = args.work_dir
    model_dir, data_path = work / shape_name, work / "calib.jsonl"
    ckpt_est = checkpoint_bytes_estimate(SHAPES[shape_name])
    if not first:  # (f) a further shape needs a build, one prune and the inference step
        needed = ckpt_est / 0.5e9 + 30 + inference_reserve_s(ckpt_est) + 3 * ckpt_est / 1e9 + 60
        if bench.remaining() < needed:
            bench.skip(shape_name, f"{bench.remaining():.0f}s left, ≈{needed:.0f}s needed")
            return
    free = shutil.disk_usage(work).free + (dir_bytes(model_dir) if model_dir.exists() else 0)
    if free < 2.2 * ckpt_est:
        bench.skip(shape_name, f"{free / 1e9:.0f} GB free on {work}, {2.2 * ckpt_est / 1e9:.0f} GB needed")
        return

    log(f"{shape_name}: build")
    built = run_isolated("build_job", {"shape_name": shape_name, "model_dir": str(model_dir),
                                       "data_path": str(data_path), "device": args.device},
                         bench.hard, lambda kind, payload: None)
    bench.data["shapes"][shape_name] = {**built, "config": SHAPES[shape_name]}
    bench.save()
    if not checkpoint_ready(model_dir):
        bench.skip(f"{shape_name}/*", f"no checkpoint: {built.get('error')}")
        return

    ckpt = dir_bytes(model_dir)
    reserve = 0.0 if args.no_inference else inference_reserve_s(ckpt)
    pruned: list[Path] = []
    precisions = args.precisions
    for index, precision in enumerate(precisions):
        later = len(precisions) - index - 1
        # split what is left (less the inference reserve) evenly between this precision and the later ones
        job_end = time.time() + (bench.remaining() - reserve) / (1 + later)
        if job_end - time.time() < 3 * ckpt / 1e9 + 30:
            bench.skip(f"{shape_name}/{precision}", f"{job_end - time.time():.0f}s window is too short")
            continue
        out_dir = work / f"{shape_name}-pruned-{precision}"
        config = run_precision(bench, shape_name, precision, model_dir, data_path, out_dir, job_end)
        if config.get("status") == "ok":
            for old in pruned:  # keep one pruned copy per shape: disk is 64 GB
                shutil.rmtree(old, ignore_errors=True)
            pruned = [out_dir]

    if args.no_inference:
        bench.skip(f"{shape_name}/inference", "--no-inference")
    elif not pruned:
        bench.skip(f"{shape_name}/inference", "no pruned checkpoint")
    elif bench.hard - time.time() < 0.8 * reserve:
        bench.skip(f"{shape_name}/inference", f"{bench.hard - time.time():.0f}s left, ≈{reserve:.0f}s needed")
    else:
        run_inference(bench, shape_name, model_dir, pruned[0])
    if not args.keep_outputs:
        for path in pruned:
            shutil.rmtree(path, ignore_errors=True)


def run_precision(bench: Bench, shape_name: str, precision: str, model_dir: Path, data_path: Path,
                  out_dir: Path, job_end: float) -> dict[str, Any]:
    args = bench.args
    config: dict[str, Any] = {"device": bench.data["device"], "model": shape_name, "precision": precision,
                              "status": "running", "total_s": None, "stage_s": None, "peak_gpu_bytes": None,
                              "peak_host_rss_bytes": None, "forward_tokens": None, "scoring_tokens_per_s": None,
                              "mfu": None, "batched_vs_single_ratio": None, "prefill_speedup": None,
                              "decode_speedup": None}
    bench.data["configs"].append(config)
    bench.save()

    def on_message(kind: str, payload: Any) -> None:
        if kind == "probe":  # saved at once: the ratio survives a prune that is later killed
            config.update(probe=payload, batched_vs_single_ratio=payload["batched_vs_single"]["ratio"])
            bench.save()

    log(f"{shape_name}/{precision}: window {job_end - time.time():.0f}s")
    result = run_isolated("precision_job", {
        "shape_name": shape_name, "model_dir": str(model_dir), "data_path": str(data_path),
        "out_dir": str(out_dir), "precision": precision, "device": args.device, "job_end": job_end,
        "abort_at": bench.hard - 15, "samples_per_round": args.samples_per_round, "peak_flops": args.peak_flops,
        "masks_per_forward": args.masks_per_forward,
    }, bench.hard, on_message)
    config.update(result)
    if config["status"] != "ok":
        bench.data["skipped"].append({"step": f"{shape_name}/{precision}", "reason": f"{config['status']}: "
                                      f"{config.get('reason') or config.get('error')}"})
    bench.save()
    log(f"{shape_name}/{precision}: {config['status']} {config.get('error') or config.get('reason') or ''}")
    return config


def run_inference(bench: Bench, shape_name: str, model_dir: Path, pruned_dir: Path) -> None:
    log(f"{shape_name}: inference, dense vs {pruned_dir.name}")
    entry: dict[str, Any] = {"pruned_from": pruned_dir.name, "status": "running"}
    bench.data["inference"][shape_name] = entry

    def on_message(kind: str, payload: Any) -> None:
        entry[kind] = payload
        bench.save()

    entry.update(run_isolated("inference_job", {"dense_dir": str(model_dir), "pruned_dir": str(pruned_dir),
                                                "device": bench.args.device}, bench.hard, on_message))
    # uniform pruning gives every precision the same shapes, so one measurement serves all of them
    for config in bench.data["configs"]:
        if config["model"] == shape_name and entry.get("status") == "ok":
            for key in ("prefill_speedup", "decode_speedup", "prefill_speedup_by_batch", "decode_speedup_by_batch"):
                config[key] = entry[key]
    bench.save()


def print_table(data: dict[str, Any]) -> None:
    gb = 1e9
    header = (f"{'model':<10} {'prec':<5} {'status':<8} {'total s':>8} {'score s':>8} {'spr':>4} {'tok/s':>9} "
              f"{'mfu':>6} {'gpu GB':>7} {'dev GB':>7} {'rss GB':>7} {'exp+GB':>6} {'b/s x':>6} {'prefill x':>9} {'decode x':>8}")
    print(header)
    print("-" * len(header))

    def fmt(value: Any, spec: str, scale: float | None = None) -> str:
        if value is None:
            return "-".rjust(int(spec.split(".")[0].rstrip("df")))
        return format(value / scale if scale else value, spec)

    for c in data["configs"]:
        plan = c.get("plan") or {}
        print(f"{c['model']:<10} {c['precision']:<5} {c['status']:<8} {fmt(c['total_s'], '8.1f')} "
              f"{fmt((c['stage_s'] or {}).get('scoring'), '8.1f')} {fmt(plan.get('samples_per_round'), '4d')} "
              f"{fmt(c['scoring_tokens_per_s'], '9.0f')} {fmt(c['mfu'], '6.3f')} "
              f"{fmt(c.get('peak_gpu_bytes_max'), '7.2f', gb)} {fmt(c.get('device_used_bytes_max'), '7.2f', gb)} "
              f"{fmt(c.get('peak_host_rss_bytes_max'), '7.2f', gb)} "
              f"{fmt(c.get('export_host_anon_growth_bytes'), '6.2f', gb)} {fmt(c['batched_vs_single_ratio'], '6.2f')} "
              f"{fmt(c['prefill_speedup'], '9.2f')} {fmt(c['decode_speedup'], '8.2f')}")
    for shape, entry in data["inference"].items():
        if entry.get("status") == "ok":
            print(f"{shape}: prefill x{entry['prefill_speedup_by_batch']}, decode x{entry['decode_speedup_by_batch']}"
                  f" (batch: pruned/dense); disk {entry['dense_bytes_on_disk'] / gb:.2f} GB -> "
                  f"{entry['pruned_bytes_on_disk'] / gb:.2f} GB")
    for skipped in data["skipped"]:
        print(f"skipped {skipped['step']}: {skipped['reason']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()  # does not create a CUDA context
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama2-7b,llama3-8b",
                        help=f"comma list from {', '.join(SHAPES)}; later shapes only if time remains")
    parser.add_argument("--precisions", help="comma list; default int8,bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, help="plan every step to end by then (480; tiny alone: 150)")
    parser.add_argument("--hard-limit-s", type=float, help="kill any step still running then (budget + 25)")
    parser.add_argument("--samples-per-round", type=int, help="force bonsai's samples_per_round (default: "
                        "the engine default, shrunk only if the probe says it will not fit)")
    parser.add_argument("--masks-per-forward", type=int, help="force bonsai's masks_per_forward (memory vs speed)")
    parser.add_argument("--no-inference", action="store_true", help="skip the dense-vs-pruned inference step")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the pruned checkpoints")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fwdprune-bench"))
    parser.add_argument("--peak-flops", type=float, help="for MFU; default 989e12 on H100/H200, else none")
    parser.add_argument("--out", type=Path, help="default bench/results/gpu-<device>[-<shapes>].json")
    parser.add_argument("--append", action="store_true", help="add this run's results to an existing --out")
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shape.split(",") if s]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda but CUDA is not available")
    if args.budget_s is None:  # a tiny-only run is a smoke test: a budget that makes the planner shrink
        args.budget_s = 150.0 if args.shapes == ["tiny"] else 480.0
    args.precisions = (args.precisions or ("int8,bf16" if args.device == "cuda" else "fp32")).split(",")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = device_name(args.device)
    if args.peak_flops is None:
        args.peak_flops = next((f for key, f in PEAK_FLOPS.items() if key in name), None)
    if args.out is None:
        suffix = "" if args.shape == "llama2-7b,llama3-8b" else "-" + "-".join(args.shapes)
        args.out = REPO / "bench" / "results" / f"gpu-{slug(name)}{suffix}.json"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bench = Bench(args, name)
    log(f"{name}: shapes {args.shapes}, precisions {args.precisions}, budget {args.budget_s:.0f}s -> {args.out}")
    for index, shape_name in enumerate(args.shapes):
        run_shape(bench, shape_name, first=index == 0)
    bench.save()
    print_table(bench.data)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
