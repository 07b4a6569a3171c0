"""GPU discovery through NVML: none without it or a driver, each GPU's memory and UUID, MIG
instances in place of their GPU."""

from __future__ import annotations

import sys
import types

import pytest


def test_gpu_info_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.worker import gpu_info

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert gpu_info() == []


def test_gpu_info_when_nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")
    from service.worker import gpu_info

    def no_driver() -> None:
        raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert gpu_info() == []


def test_gpu_info_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.worker import gpu_info

    class NVMLError(Exception):
        pass

    memory = types.SimpleNamespace(used=3 << 30, total=80 << 30)
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: memory,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_info() == [
        {
            "index": i,
            "uuid": f"GPU-{i}",
            "name": "NVIDIA H100",
            "memory_used_bytes": 3 << 30,
            "memory_total_bytes": 80 << 30,
        }
        for i in range(2)
    ]


def test_gpu_info_lists_mig_instances_in_place_of_their_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU 1 is in MIG mode with instances in slots 0 and 2 (slot 1 is empty): CUDA runs jobs on those."""
    from service.worker import gpu_info

    class NVMLError(Exception):
        pass

    def mig_handle(parent: int, slot: int) -> str:
        if slot == 1:
            raise NVMLError("not found")
        return f"{parent}/{slot}"

    sizes = {0: 80 << 30, "1/0": 40 << 30, "1/2": 20 << 30}
    uuids = {0: "GPU-0", 1: "GPU-1", "1/0": "MIG-a", "1/2": "MIG-b"}
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_DEVICE_MIG_ENABLE=1,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMigMode=lambda h: (int(h == 1), int(h == 1)),
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 3,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=0, total=sizes.get(h, 80 << 30)),
        nvmlDeviceGetUUID=lambda h: uuids[h],
        nvmlDeviceGetName=lambda h: "NVIDIA A100",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    listed = [(gpu["index"], gpu["uuid"], gpu.get("mig"), gpu.get("parent_uuid")) for gpu in gpu_info()]
    assert listed == [(0, "GPU-0", None, None), (1, "MIG-a", 0, "GPU-1"), (1, "MIG-b", 2, "GPU-1")]
