"""Small pieces: the streamed tar, model references, GPU discovery, the job-duration feed."""

from __future__ import annotations

import io
import sys
import tarfile
import types
from pathlib import Path

import pytest

from service.modelref import ModelRefError, resolve_model
from service.objects.artifacts import stream_tar
from service.objects.local import LocalStorage
from service.worker.job_runner import JobEvents


def test_stream_tar_round_trip(tmp_path: Path) -> None:
    files = {"a.json": b"{}", "empty": b"", "big.bin": bytes(range(256)) * 5000}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    data = b"".join(stream_tar(LocalStorage(tmp_path), [(name, name) for name in sorted(files)], "ckpt"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {  # type: ignore[union-attr]
            f"ckpt/{name}": content for name, content in files.items()
        }


def test_model_refs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "org" / "m").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (models / "registered").symlink_to(tmp_path / "elsewhere")  # operator-made: allowed
    assert resolve_model("org/m", models) == (models / "org" / "m").resolve()
    assert resolve_model("registered", models) == (tmp_path / "elsewhere").resolve()
    for bad in ("..", "org/..", "/abs", "a\\b", "org//m", ".hidden", ""):
        with pytest.raises(ModelRefError):
            resolve_model(bad, models)


def test_progress_events_are_throttled(db_url: str) -> None:
    import time

    from service.store import Store
    from service.store.tables import JobRow

    store = Store(db_url)
    store.create_job(
        JobRow(
            id="job_t",
            owner="o",
            status="queued",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=time.time(),
            progress={},
            attempts=0,
            computing=False,
        )
    )
    sink = JobEvents(store, "job_t", min_interval_s=60)
    for i in range(1, 101):
        sink(
            {"type": "progress", "stage": "scoring", "round": 1, "rounds": 1, "fraction": i / 100, "eta_s": 1}
        )
    sink({"type": "metric", "name": "perplexity_after", "value": 3.0})
    kinds = [(e.type, e.data.get("fraction")) for e in store.events("job_t", 0, 1000)]
    assert kinds == [("status", None), ("progress", 0.01), ("progress", 1.0), ("metric", None)]
    store.close()


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


class _FinishedJobs:
    """A store stand-in answering `finished_since` from a list of (id, finished_at, seconds)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, float, float]] = []
        self.asked: list[float | None] = []

    def finished_since(self, after: float | None) -> list[tuple[str, float, float]]:
        self.asked.append(after)
        return [job for job in self.jobs if after is None or job[1] > after]


def test_duration_feed_observes_each_job_once() -> None:
    import time

    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import DurationFeed

    registry = CollectorRegistry()
    feed = DurationFeed(Histogram("d", "d", buckets=(10.0, float("inf")), registry=registry), overlap_s=60)
    store = _FinishedJobs()
    now = time.time()
    store.jobs = [("a", now - 500, 2.0), ("b", now - 100, 20.0)]
    feed.feed(store)  # type: ignore[arg-type]
    feed.feed(store)  # type: ignore[arg-type]
    # committed late, stamped before the newest job already seen: still inside the overlap, so counted
    store.jobs.append(("c", now - 130, 5.0))
    feed.feed(store)  # type: ignore[arg-type]
    assert store.asked == [None, pytest.approx(now - 160), pytest.approx(now - 160)]
    assert registry.get_sample_value("d_count") == 3 and registry.get_sample_value("d_sum") == 27.0
    assert registry.get_sample_value("d_bucket", {"le": "10.0"}) == 2
    assert set(feed.seen) == {"b", "c"}  # ids older than the overlap are forgotten


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
