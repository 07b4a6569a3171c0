"""The GPUs a worker gives to jobs, as NVML lists them (no torch in the worker), and which of them the
operator's CUDA_VISIBLE_DEVICES leaves visible."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from service.settings import Settings


def gpu_info() -> list[dict[str, Any]]:
    """GPUs as NVML sees them (no torch in the worker); empty without nvidia-ml-py or an NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return []
    try:
        return [device for index in range(pynvml.nvmlDeviceGetCount()) for device in _devices(pynvml, index)]
    except pynvml.NVMLError:
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _devices(nvml: Any, index: int) -> list[dict[str, Any]]:
    """A GPU, or in MIG mode its MIG instances: CUDA runs jobs on those, not on the GPU itself."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    gpu = _gpu(nvml, handle, index)
    instances = [
        {**_gpu(nvml, mig, index), "mig": slot, "parent_uuid": gpu["uuid"]}
        for slot, mig in _mig_handles(nvml, handle)
    ]
    return instances or [gpu]


def _mig_handles(nvml: Any, handle: Any) -> list[tuple[int, Any]]:
    """(slot, handle) of each MIG instance of a GPU in MIG mode; none for any other GPU."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        if current != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except (nvml.NVMLError, AttributeError):  # a GPU without MIG, or bindings without its calls
        return []
    found = []
    for slot in range(slots):
        with contextlib.suppress(nvml.NVMLError):  # an empty slot
            found.append((slot, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)))
    return found


def _gpu(nvml: Any, handle: Any, index: int) -> dict[str, Any]:
    """One device: NVML's index (nvidia-smi's), memory in bytes, and the UUID that names it to CUDA."""
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        "index": index,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_used_bytes": int(memory.used),
        "memory_total_bytes": int(memory.total),
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def visible_gpus(gpus: list[dict[str, Any]], cuda_visible_devices: str | None) -> list[dict[str, Any]]:
    """The devices of `gpus` (as `gpu_info` lists them) that CUDA_VISIBLE_DEVICES leaves visible, in its
    order; all of them when it is unset.

    Entries are NVML indices (nvidia-smi's), GPU UUIDs (`GPU-...`, or a prefix that names one GPU) or MIG
    instance UUIDs (`MIG-...`); a GPU in MIG mode named by index or UUID brings its MIG instances. As in
    CUDA, the list ends at the first entry that names no device, so `""` or `-1` hides every GPU.
    """
    if cuda_visible_devices is None:
        return list(gpus)
    visible: list[dict[str, Any]] = []
    for entry in cuda_visible_devices.split(","):
        named = _named_by(gpus, entry.strip())
        if not named:
            break
        visible += [gpu for gpu in named if gpu not in visible]
    return visible


def own_gpus(settings: Settings) -> list[dict[str, Any]]:
    """The GPUs a worker gives to jobs: NVML's, less those the operator's CUDA_VISIBLE_DEVICES hides;
    none for a worker told to run jobs on the CPU (it then takes only jobs that ask for no GPU)."""
    if settings.device == "cpu":
        return []
    return visible_gpus(gpu_info(), os.getenv("CUDA_VISIBLE_DEVICES"))


def gpus_now(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`gpus` with the memory in use now; as first seen where NVML no longer answers."""
    if not gpus:
        return []
    now = {gpu["uuid"]: gpu for gpu in gpu_info()}
    return [now.get(gpu["uuid"], gpu) for gpu in gpus]


def _named_by(gpus: list[dict[str, Any]], entry: str) -> list[dict[str, Any]]:
    """The devices one CUDA_VISIBLE_DEVICES entry names; none for an entry CUDA would stop at."""
    if entry.isdigit():
        return [gpu for gpu in gpus if gpu["index"] == int(entry)]
    if entry.startswith("MIG-"):
        return [gpu for gpu in gpus if gpu["uuid"] == entry]
    if entry.startswith("GPU-"):
        physical = {_physical_uuid(gpu) for gpu in gpus if _physical_uuid(gpu).startswith(entry)}
        if len(physical) != 1:  # a prefix must name exactly one GPU
            return []
        return [gpu for gpu in gpus if _physical_uuid(gpu) in physical]
    return []


def _physical_uuid(gpu: dict[str, Any]) -> str:
    return str(gpu.get("parent_uuid", gpu["uuid"]))
