"""Find a checkpoint and load it at the requested precision; never the network."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning.errors import ModelNotFoundError, UsageError
from pruning.model.checkpoint import check_checkpoint_files

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_model_dir(model: str) -> Path:
    """A local checkpoint directory, or the snapshot of a Hub id already in the local cache."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local} has no config.json")
        return local.resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise ModelNotFoundError(
            f"{model!r} is not a local checkpoint directory nor a Hub id in the local cache"
        ) from err


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for but CUDA is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: int8 on CUDA (the memory-lean path), fp32 on a CPU: sub-models scored in bf16, even where
    the CPU computes it natively, ranked SmolLM2-135M's units worse than fp32 did (docs/quality.md,
    "bf16 on a CPU"), so bf16-mixed is asked for, not chosen."""
    if precision != "auto":
        return precision
    return "int8" if device.type == "cuda" else "fp32"


CPUINFO = Path("/proc/cpuinfo")
# AMX tiles (Sapphire Rapids on) or AVX-512 BF16 dot products
NATIVE_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}
# bf16 is worth it where its matmuls beat fp32's by this much (native: 2-4x; emulated: 100x slower)
BF16_MIN_SPEEDUP = 1.5


@functools.lru_cache(maxsize=1)
def cpu_computes_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 matmuls natively: its flags say so (Linux x86; elsewhere assumed
    not) and a short timed matmul confirms it (a virtual machine may report flags it does not run)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flag_lines = (line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags"))
    if not NATIVE_BF16_FLAGS & set(next(flag_lines, "").split()):
        return False
    return matmul_seconds(torch.float32) > BF16_MIN_SPEEDUP * matmul_seconds(torch.bfloat16)


def matmul_seconds(dtype: torch.dtype, size: int = 256, repeats: int = 8) -> float:
    """The best time of a [size, size] @ [size, size] matmul in `dtype` on the CPU, after a warm-up."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return best


def scoring_autocast(precision: str) -> torch.dtype | None:
    """The dtype of the passes bf16-mixed runs under autocast (the sub-models' forwards, the `ls` fits'
    layer passes, the recovery's training): bf16 for bf16-mixed, None (as loaded) else."""
    return torch.bfloat16 if precision == "bf16-mixed" else None


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


# Weight formats from torchao, for scoring on hardware or software where they beat bitsandbytes' int8:
# int8 weights dequantized in the matmul (activations stay bf16), and FP8 weights and activations with
# one scale per row (Hopper and Ada matmul units). The output projection stays in the load dtype, as
# bitsandbytes leaves it.
TORCHAO_FORMATS = ("int8-weight-only", "fp8")
FP8_SCALE_FLOOR = 1e-12  # the least absolute maximum an activation row's FP8 scale is taken from


def torchao_config(precision: str, device: torch.device) -> Any:
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8WeightOnlyConfig,
            PerRow,
        )
    except ImportError as err:
        raise UsageError(f"precision {precision} needs torchao: pip install 'fwdprune[torchao]'") from err
    if precision == "int8-weight-only":
        return Int8WeightOnlyConfig()
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise UsageError("precision fp8 needs a CUDA GPU of compute capability 8.9 or later (Ada, Hopper)")
    # A row of zeros is common here (a sub-model or a pruned layer with every head of a layer dropped
    # feeds o_proj zeros): without a floor its scale is 0 and the row quantizes to 0/0 = NaN.
    return Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), activation_value_lb=FP8_SCALE_FLOOR
    )


def quantize_linear_layers(model: Any, config: Any) -> None:
    """Every nn.Linear but the output projection, in the torchao format `config` names."""
    from torchao.quantization import quantize_

    output = model.get_output_embeddings()
    quantize_(
        model,
        config,
        filter_fn=lambda module, _: isinstance(module, torch.nn.Linear) and module is not output,
    )


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_dir: Path
    device: torch.device
    precision: str  # the resolved precision, never "auto"


def load_model(
    model_dir: Path,
    precision: str,
    device: torch.device,
    auto_class: Any = None,
    max_memory: dict[int, int] | None = None,
) -> LoadedModel:
    """Load for inference, on `device`, or with `max_memory` (bytes per GPU index) spread across those
    GPUs (`pruning.runtime.devices`; inputs then go to `device`, the first). int8 quantizes linear layers with
    bitsandbytes as they are read; the torchao formats quantize the decoder's linear layers once loaded."""
    check_checkpoint_files(model_dir)  # a shard index naming files outside the folder is refused unread
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    auto_class = auto_class or AutoModelForCausalLM
    precision = resolve_precision(precision, device)
    kwargs: dict[str, Any] = {"device_map": {"": str(device)}}
    if max_memory is not None:  # accelerate places whole decoder layers in order, within each GPU's bytes
        kwargs = {"device_map": "auto", "max_memory": max_memory}
    if precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        # bitsandbytes computes int8 matmuls with fp16 activations; fp32 elsewhere on CPU
        kwargs["dtype"] = torch.float16 if device.type == "cuda" else torch.float32
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    elif precision in TORCHAO_FORMATS:
        quantization = torchao_config(precision, device)  # before loading: a missing torchao fails fast
        kwargs["dtype"] = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        kwargs["dtype"] = DTYPES["fp32" if precision == "bf16-mixed" else precision]
    model = auto_class.from_pretrained(model_dir, **kwargs)
    model.eval()
    model.requires_grad_(False)
    if precision in TORCHAO_FORMATS:
        quantize_linear_layers(model, quantization)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return LoadedModel(model, tokenizer, model_dir, device, precision)
