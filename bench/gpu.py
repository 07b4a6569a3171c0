"""GPU benchmark: time and memory of pruning 7B/8B-shaped Llamas, and what the pruned model buys at inference.

    python -m bench.gpu                                  # llama2-7b then llama3-8b, int8 + bf16
    python -m bench.gpu --shape llama3-8b --precisions int8 --samples-per-round 256
    python -m bench.gpu --shape tiny                     # CPU smoke test of the whole script

Weights are random and the calibration text is stdlib Python source: the numbers are about speed and
memory, never quality. Steps, each in its own spawned process (`bench.isolate`) so each gets clean GPU and
host memory figures and one that hangs past --step-timeout-s is killed without losing the others:
  1. the device's bf16 matmul rate, the MFU denominator (`bench.peak_flops`)
  per shape:
  2. the checkpoint, sharded bf16 safetensors + a byte-level BPE tokenizer, under --work-dir
     (`bench.synthetic`)
  3. per precision: probe, then `pruning.prune` to 50% uniform with bonsai at the engine's default options
     unless --samples-per-round / --masks-per-forward say otherwise (`bench.prune_speed`)
  4. dense vs pruned prefill and greedy-decode tokens/s at batch 1, 8 and 32 (`bench.inference`)
Prints a table and writes bench/results/gpu-<device>.json (--out), rewritten after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import inference, peak_flops, prune_speed
from bench.isolate import log, run_isolated
from bench.synthetic import SHAPES, build_checkpoint, checkpoint_bytes_estimate, checkpoint_ready, dir_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = "llama2-7b,llama3-8b"
DISK_PER_CHECKPOINT = 2.2  # free disk a shape needs, in checkpoints: itself, a pruned copy, headroom
SPEEDUP_KEYS = ("prefill_speedup", "decode_speedup", "prefill_speedup_by_batch", "decode_speedup_by_batch")
CONFIG_KEYS = (
    "total_s",
    "stage_s",
    "peak_gpu_bytes",
    "peak_host_rss_bytes",
    "forward_tokens",
    "scoring_tokens_per_s",
    "mfu",
    "batched_vs_single_ratio",
    "prefill_speedup",
    "decode_speedup",
)


def slug(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").split())


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


class Results:
    """Everything measured so far, and the JSON file that holds it."""

    def __init__(self, args: argparse.Namespace, device_name: str, peak: dict[str, Any]) -> None:
        self.args, self.out, self.began = args, args.out, time.monotonic()
        self.peak_flops: float | None = peak.get("bf16_flops")
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.run = {
            "started": started,
            "shapes": args.shapes,
            "precisions": args.precisions,
            "options": args.options,
            "peak_bf16_flops": self.peak_flops,
        }
        self.data: dict[str, Any] = {
            "device": device_name,
            "started": started,
            "settings": settings(args),
            "versions": versions(),
            "peak_flops": peak,
            "shapes": {},
            "configs": [],
            "inference": {},
            "skipped": [],
            "runs": [self.run],
        }
        if args.append and self.out.is_file():  # one JSON from several invocations
            self.merge(json.loads(self.out.read_text()))

    def merge(self, earlier: dict[str, Any]) -> None:
        for key in ("shapes", "inference"):
            self.data[key] = {**earlier.get(key, {}), **self.data[key]}
        for key in ("configs", "skipped"):
            self.data[key] = earlier.get(key, []) + self.data[key]
        self.data["runs"] = earlier.get("runs", [{"started": earlier.get("started")}]) + self.data["runs"]

    def new_config(self, shape_name: str, precision: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "device": self.data["device"],
            "model": shape_name,
            "precision": precision,
            "status": "running",
            **dict.fromkeys(CONFIG_KEYS),
            "peak_bf16_flops": self.peak_flops,
            "options_asked": self.args.options,
            "num_samples_asked": self.args.num_samples,
            "compensate_asked": self.args.compensate,
            "budget_asked": self.args.budget,
        }
        self.data["configs"].append(config)
        self.save()
        return config

    def skip(self, step: str, reason: str) -> None:
        log(f"skip {step}: {reason}")
        self.data["skipped"].append({"step": step, "reason": reason})
        self.save()

    def save(self) -> None:
        self.run["elapsed_s"] = round(time.monotonic() - self.began, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        partial.replace(self.out)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sparsity": prune_speed.SPARSITY,
        "uniform": True,
        "method": "bonsai",
        "num_samples": args.num_samples,
        "compensate": args.compensate,
        "budget": args.budget,
        "eval_samples": prune_speed.EVAL_SAMPLES,
        "seq_len": prune_speed.SEQ_LEN,
        "options": args.options,
        "step_timeout_s": args.step_timeout_s,
        "mfu_definition": "2 * flop_params * scoring_tokens_per_s / peak_bf16_flops (flop_params: "
        "all but the input embedding; masks do not skip compute; int8 against the "
        "bf16 rate too; peak_bf16_flops: the bf16 matmul rate measured in the same "
        "run)",
        "inference": {
            "batches": list(inference.INFER_BATCHES),
            "prefill_len": inference.PREFILL_LEN,
            "decode_prompt": inference.DECODE_PROMPT,
            "decode_new": inference.DECODE_NEW,
            "speedup_batch": inference.HEADLINE_BATCH,
        },
    }


def run_shape(results: Results, shape_name: str) -> None:
    """Build (or reuse) the checkpoint, prune it at each precision, then time dense vs pruned inference."""
    args = results.args
    model_dir, data_path = args.work_dir / shape_name, args.work_dir / "calib.jsonl"
    needed = DISK_PER_CHECKPOINT * checkpoint_bytes_estimate(SHAPES[shape_name])
    free = shutil.disk_usage(args.work_dir).free + (dir_bytes(model_dir) if model_dir.exists() else 0)
    if free < needed:
        results.skip(shape_name, f"{free / 1e9:.0f} GB free on {args.work_dir}, {needed / 1e9:.0f} GB needed")
        return

    log(f"{shape_name}: checkpoint")
    built = run_isolated(
        build_checkpoint,
        {
            "shape_name": shape_name,
            "model_dir": str(model_dir),
            "data_path": str(data_path),
            "device": args.device,
        },
        args.step_timeout_s,
        lambda kind, payload: None,
    )
    results.data["shapes"][shape_name] = {**built, "config": SHAPES[shape_name]}
    results.save()
    if not checkpoint_ready(model_dir):
        results.skip(f"{shape_name}/*", f"no checkpoint: {built.get('error')}")
        return

    pruned: Path | None = None
    for precision in args.precisions:
        out_dir = args.work_dir / f"{shape_name}-pruned-{precision}"
        if run_precision(results, shape_name, precision, model_dir, data_path, out_dir) == "ok":
            if pruned is not None:  # one pruned copy per shape is enough for inference, and disk is finite
                shutil.rmtree(pruned, ignore_errors=True)
            pruned = out_dir

    if args.no_inference:
        results.skip(f"{shape_name}/inference", "--no-inference")
    elif pruned is None:
        results.skip(f"{shape_name}/inference", "no pruned checkpoint")
    else:
        run_inference(results, shape_name, model_dir, pruned)
    if pruned is not None and not args.keep_outputs:
        shutil.rmtree(pruned, ignore_errors=True)


def run_precision(
    results: Results, shape_name: str, precision: str, model_dir: Path, data_path: Path, out_dir: Path
) -> str:
    """One `prune_speed.prune_step`, recorded as a configuration; returns its status."""
    args = results.args
    config = results.new_config(shape_name, precision)

    def on_message(kind: str, payload: Any) -> None:
        if kind == "probe":  # saved at once: the ratio survives a prune that is later killed
            config.update(probe=payload, batched_vs_single_ratio=payload["batched_vs_single"]["ratio"])
            results.save()

    log(f"{shape_name}/{precision}: prune")
    config.update(
        run_isolated(
            prune_speed.prune_step,
            {
                "shape_name": shape_name,
                "model_dir": str(model_dir),
                "data_path": str(data_path),
                "out_dir": str(out_dir),
                "precision": precision,
                "device": args.device,
                "options": args.options,
                "peak_flops": results.peak_flops,
                "num_samples": args.num_samples,
                "compensate": args.compensate,
                "budget": args.budget,
                "run_probe": not args.no_probe,
            },
            args.step_timeout_s,
            on_message,
        )
    )
    if config["status"] != "ok":
        results.skip(f"{shape_name}/{precision}", f"{config['status']}: {config.get('error')}")
    results.save()
    log(f"{shape_name}/{precision}: {config['status']}")
    return str(config["status"])


def run_inference(results: Results, shape_name: str, model_dir: Path, pruned_dir: Path) -> None:
    log(f"{shape_name}: inference, dense vs {pruned_dir.name}")
    entry: dict[str, Any] = {"pruned_from": pruned_dir.name, "status": "running"}
    results.data["inference"][shape_name] = entry

    def on_message(kind: str, payload: Any) -> None:
        entry[kind] = payload
        results.save()

    step_args = {"dense_dir": str(model_dir), "pruned_dir": str(pruned_dir), "device": results.args.device}
    entry.update(run_isolated(inference.inference_step, step_args, results.args.step_timeout_s, on_message))
    if entry["status"] != "ok":
        results.skip(f"{shape_name}/inference", f"{entry['status']}: {entry.get('error')}")
        return
    # uniform pruning gives every precision the same shapes, so one measurement serves all of them
    for config in results.data["configs"]:
        if config["model"] == shape_name:
            for key in SPEEDUP_KEYS:
                config[key] = entry[key]
    results.save()


def fmt(value: Any, spec: str, scale: float | None = None) -> str:
    """`value` formatted by `spec` (divided by `scale`), or a dash as wide where nothing was measured."""
    if value is None:
        return "-".rjust(int(spec.split(".")[0].rstrip("df") or 0))
    return format(value / scale if scale else value, spec)


def print_table(data: dict[str, Any]) -> None:
    gb = 1e9
    header = (
        f"{'model':<10} {'prec':<5} {'status':<8} {'total s':>8} {'score s':>8} {'spr':>4} "
        f"{'tok/s':>9} {'mfu':>6} {'gpu GB':>7} {'dev GB':>7} {'rss GB':>7} {'exp+GB':>6} {'b/s x':>6} "
        f"{'prefill x':>9} {'decode x':>8}"
    )
    print(header)
    print("-" * len(header))
    for c in data["configs"]:
        print(
            f"{c['model']:<10} {c['precision']:<5} {c['status']:<8} {fmt(c['total_s'], '8.1f')} "
            f"{fmt((c['stage_s'] or {}).get('scoring'), '8.1f')} "
            f"{fmt((c.get('options') or {}).get('samples_per_round'), '4d')} "
            f"{fmt(c['scoring_tokens_per_s'], '9.0f')} {fmt(c['mfu'], '6.3f')} "
            f"{fmt(c.get('peak_gpu_bytes_max'), '7.2f', gb)} "
            f"{fmt(c.get('device_used_bytes_max'), '7.2f', gb)} "
            f"{fmt(c.get('peak_host_rss_bytes_max'), '7.2f', gb)} "
            f"{fmt(c.get('export_host_anon_growth_bytes'), '6.2f', gb)} "
            f"{fmt(c['batched_vs_single_ratio'], '6.2f')} "
            f"{fmt(c['prefill_speedup'], '9.2f')} {fmt(c['decode_speedup'], '8.2f')}"
        )
    peak = data["peak_flops"].get("bf16_flops")
    print(
        f"bf16 matmul peak (MFU denominator): {fmt(peak, '.2f', 1e12)} TFLOP/s; prefill x and decode x at "
        f"batch {data['settings']['inference']['speedup_batch']}"
    )
    for shape, entry in data["inference"].items():
        if entry.get("status") == "ok":
            print(
                f"{shape}: prefill x{entry['prefill_speedup_by_batch']}, "
                f"decode x{entry['decode_speedup_by_batch']} (by batch, pruned/dense); "
                f"disk {entry['dense_bytes_on_disk'] / gb:.2f} GB -> "
                f"{entry['pruned_bytes_on_disk'] / gb:.2f} GB"
            )
    for skipped in data["skipped"]:
        print(f"skipped {skipped['step']}: {skipped['reason']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()  # does not create a CUDA context
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default=DEFAULT_SHAPES, help=f"comma list from {', '.join(SHAPES)}")
    parser.add_argument("--precisions", help="comma list; default int8,bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    parser.add_argument(
        "--samples-per-round", type=int, help="bonsai's samples_per_round (default: the engine's)"
    )
    parser.add_argument(
        "--masks-per-forward", type=int, help="bonsai's masks_per_forward (default: the engine's)"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=prune_speed.NUM_SAMPLES,
        help="calibration sequences; enough of them make compensate auto pick the least-squares refit",
    )
    parser.add_argument("--compensate", default="auto", choices=["auto", "none", "bias", "ls"])
    parser.add_argument("--budget", default="auto", choices=["auto", "fast", "standard", "thorough"])
    parser.add_argument("--no-probe", action="store_true", help="skip the batched-vs-single probe")
    parser.add_argument(
        "--step-timeout-s",
        type=float,
        help="kill a step still running after this many seconds (default: no limit)",
    )
    parser.add_argument("--no-inference", action="store_true", help="skip the dense-vs-pruned inference step")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the pruned checkpoints")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fwdprune-bench"))
    parser.add_argument("--out", type=Path, help="default bench/results/gpu-<device>.json")
    parser.add_argument("--append", action="store_true", help="add this run's results to an existing --out")
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shape.split(",") if s]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda but CUDA is not available")
    args.precisions = (args.precisions or ("int8,bf16" if args.device == "cuda" else "fp32")).split(",")
    asked = {"samples_per_round": args.samples_per_round, "masks_per_forward": args.masks_per_forward}
    args.options = {name: value for name, value in asked.items() if value is not None}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log(f"{args.device}: bf16 matmul peak")
    peak = run_isolated(
        peak_flops.measure_peak_flops,
        {"device": args.device},
        args.step_timeout_s,
        lambda kind, payload: None,
    )
    name = peak.get("device_name", args.device)
    args.out = args.out or REPO / "bench" / "results" / f"gpu-{slug(name)}.json"
    results = Results(args, name, peak)
    log(
        f"{name}: {fmt(peak.get('bf16_flops'), '.2f', 1e12)} TFLOP/s bf16; shapes {args.shapes}, "
        f"precisions {args.precisions}, options {args.options or 'the engine defaults'} -> {args.out}"
    )
    if peak["status"] != "ok":
        results.skip("peak_flops", f"{peak['status']}: {peak.get('error')}; mfu not computed")
    for shape_name in args.shapes:
        run_shape(results, shape_name)
    results.save()
    print_table(results.data)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
