"""Time and memory of `pruning.prune` on one checkpoint at one precision, and what its scoring forwards
achieve.

    python -m bench.gpu --shape llama2-7b --precisions int8,bf16      # runs `prune_step` once per precision

Two parts, in one process:
  probe  load the model as prune does, time one scoring forward at the options' shape (sub-models per
         forward x scoring sequences), and compare the same RATIO_MASKS sub-models evaluated
         `masks_per_forward` per replicated forward against one forward each (batched-vs-single ratio)
  prune  `pruning.prune` to SPARSITY uniform with bonsai at the engine's default options (or the ones asked
         for), with its per-stage time, GPU and host memory, plus the device's used memory every 50 ms
Scoring tokens/s is the scoring stage's forward tokens over its time; MFU is 2 x matmul parameters x that
rate over the bf16 matmul rate measured by `bench.peak_flops` (int8 against that rate too).
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.isolate import log, send
from bench.synthetic import SHAPES, matmul_params
from bench.timing import synchronize, timed

SPARSITY, NUM_SAMPLES, EVAL_SAMPLES, SEQ_LEN = 0.5, 32, 8, 256
RATIO_MASKS, RATIO_SEQUENCES = 32, 4  # batched-vs-single: sub-models evaluated, sequences each
PROGRESS_EVERY_S = 10.0


class DeviceMemorySampler:
    """Device-wide used memory (what nvidia-smi shows: every context, fragmentation) per stage, sampled
    every 50 ms."""

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


def random_keeps(count: int, units: int, seed: int, drop: float = 0.2) -> Any:
    import torch

    return (torch.rand(count, units, generator=torch.Generator().manual_seed(seed)) > drop).double()


def replica_losses(runner: Any, masks: Any, keeps: Any, batch: Any) -> Any:
    masks.set(keeps)
    return runner.replica_losses(batch, keeps.shape[0])


def batched_vs_single(runner: Any, masks: Any, units: int, batch: Any, per_forward: int, device: Any) -> dict:
    """The same RATIO_MASKS sub-models, `per_forward` per replicated forward vs one forward each."""
    import torch

    keeps = random_keeps(RATIO_MASKS, units, seed=1)
    losses: dict[str, Any] = {}

    def batched() -> None:
        losses["batched"] = torch.cat(
            [replica_losses(runner, masks, chunk, batch) for chunk in keeps.split(per_forward)]
        )

    def single() -> None:
        losses["single"] = torch.cat([replica_losses(runner, masks, row[None], batch) for row in keeps])

    batched_s = min(timed(batched, device, repeats=2))
    single_s = min(timed(single, device, repeats=2))
    return {
        "masks": RATIO_MASKS,
        "sequences": int(batch.shape[0]),
        "seq_len": int(batch.shape[1]),
        "masks_per_forward": per_forward,
        "batched_s": round(batched_s, 4),
        "single_s": round(single_s, 4),
        "ratio": round(single_s / batched_s, 3),
        # the two paths must agree: a cheap guard that the replicated batch really is per-mask
        "max_loss_diff": float((losses["batched"] - losses["single"]).abs().max()),
    }


def probe(model_dir: Path, precision: str, device: str, data_path: Path, options: Any) -> dict[str, Any]:
    """Load as prune will, time one scoring forward at the options' shape, and measure batched vs single."""
    import torch

    from pruning.checkpoint_checks import read_model_type
    from pruning.measure.objectives import make_objective
    from pruning.model.adapters import adapter_for
    from pruning.model.data import load_calibration
    from pruning.model.loading import load_model
    from pruning.model.masking import UnitMasks
    from pruning.model.units import build_unit_space, default_mlp_block

    adapter = adapter_for(read_model_type(model_dir))
    dev = torch.device(device)
    start = time.perf_counter()
    loaded = load_model(model_dir, precision, dev, adapter.auto_class())
    synchronize(dev)
    load_s = time.perf_counter() - start
    data = load_calibration(loaded.tokenizer, data_path, SEQ_LEN, NUM_SAMPLES, EVAL_SAMPLES)
    inter = adapter.layer_shapes(loaded.model.config)[0].intermediate
    # the unit space a uniform prune builds
    space = build_unit_space(loaded.model, adapter, math.gcd(default_mlp_block(inter), inter))
    masks = UnitMasks(space)
    runner = make_objective(None, loaded.model, adapter, dev, masks)
    with masks.installed():
        keeps = random_keeps(options.masks_per_forward, space.size, seed=0)
        batch = data.calibration[: options.scoring_sequences]
        forward_s = min(timed(lambda: replica_losses(runner, masks, keeps, batch), dev, repeats=2))
        ratio = batched_vs_single(
            runner, masks, space.size, data.calibration[:RATIO_SEQUENCES], options.masks_per_forward, dev
        )
    tokens = options.masks_per_forward * int(batch.numel())
    return {
        "load_s": round(load_s, 2),
        "scoring_forward_s": round(forward_s, 4),
        "scoring_forward_tokens": tokens,
        "probe_tokens_per_s": round(tokens / forward_s, 1),
        "batched_vs_single": ratio,
    }


def progress_printer(label: str, sampler: DeviceMemorySampler) -> Callable[[Any], None]:
    """prune's event sink: logs the plan, stages and progress, and names the memory sampler's stage."""
    last_print = [0.0]

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "stage":
            sampler.stage = event["stage"]
            log(f"{label}: stage {event['stage']}")
        elif event["type"] == "progress" and time.monotonic() - last_print[0] > PROGRESS_EVERY_S:
            last_print[0] = time.monotonic()
            log(
                f"{label}: {event['stage']} {100 * event['fraction']:.0f}% of the job, "
                f"eta {event['eta_s']:.0f}s"
            )
        elif event["type"] in ("plan", "warning", "metric"):
            log(f"{label}: {event}")

    return on_event


def prune_step(
    shape_name: str,
    model_dir: str,
    data_path: str,
    out_dir: str,
    precision: str,
    device: str,
    options: dict[str, Any],
    peak_flops: float | None,
    num_samples: int = NUM_SAMPLES,
    compensate: str = "auto",
    budget: str = "auto",
    run_probe: bool = True,
) -> dict[str, Any]:
    """Probe, then prune, one precision of one shape; `options` are bonsai's, {} for the engine defaults."""
    import torch

    from pruning import PruneSpec, prune
    from pruning.methods.bonsai.options import BonsaiOptions

    label = f"{shape_name}/{precision}"
    found: dict[str, Any] = {}
    if run_probe:
        log(f"{label}: probe")
        found = probe(
            Path(model_dir), precision, device, Path(data_path), BonsaiOptions.model_validate(options)
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
            found["allocated_after_probe_bytes"] = torch.cuda.memory_allocated()  # ~0 unless the probe leaked
        ratio = found["batched_vs_single"]
        log(
            f"{label}: load {found['load_s']}s, {found['probe_tokens_per_s']:.0f} tok/s scoring, "
            f"batched/single {ratio['ratio']}x (loss diff {ratio['max_loss_diff']:.2g})"
        )
        send("probe", found)  # kept by the parent even if the prune is later killed

    spec = PruneSpec.model_validate(
        {
            "model": model_dir,
            "data": data_path,
            "sparsity": SPARSITY,
            "out_dir": out_dir,
            "precision": precision,
            "device": device,
            "num_samples": num_samples,
            "eval_samples": EVAL_SAMPLES,
            "compensate": compensate,
            "budget": budget,
            "seq_len": SEQ_LEN,
            "uniform": True,
            "options": options,
        }
    )
    sampler = DeviceMemorySampler(device)
    with sampler.running():
        report = json.loads(prune(spec, progress_printer(label, sampler)).to_json())
    return summarise(report, found, sampler.peak, shape_name, peak_flops)


def summarise(
    report: dict[str, Any],
    found: dict[str, Any],
    device_used: dict[str, int],
    shape_name: str,
    peak_flops: float | None,
) -> dict[str, Any]:
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
        "batched_vs_single_ratio": found["batched_vs_single"]["ratio"] if found else None,
        "batched_vs_single": found.get("batched_vs_single"),
        "probe": {k: v for k, v in found.items() if k != "batched_vs_single"},
        "options": report["settings"]["options"],
        "budget": report.get("budget"),
        "num_samples": report["settings"]["num_samples"],
        "compensation": report.get("compensation"),
        "method_details": {k: v for k, v in report.get("method_details", {}).items() if k != "rounds"},
        "params": report["params"],
        "sparsity": report["sparsity"],
        "layers_after": report["layers"][0],
        "perplexity": report.get("perplexity"),
        "out_dir": report["out_dir"],
    }
