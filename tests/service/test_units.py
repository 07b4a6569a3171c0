"""Small pieces: Range parsing, the streamed tar, model references."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from service.artifacts import RangeNotSatisfiable, parse_range, stream_tar
from service.job_runner import EventSink, summarize
from service.modelref import ModelRefError, resolve_model


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)), ("bytes=90-200", (90, 99)),
    ("bytes=-500", (0, 99)), ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=-", None),
])
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_stream_tar_round_trip(tmp_path: Path) -> None:
    files = {"a.json": b"{}", "empty": b"", "big.bin": bytes(range(256)) * 5000}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    data = b"".join(stream_tar(tmp_path, sorted(files), "ckpt"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {  # type: ignore[union-attr]
            f"ckpt/{name}": content for name, content in files.items()}


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

    from service.db import JobRow
    from service.store import Store

    store = Store(db_url)
    store.create_job(JobRow(id="job_t", owner="o", status="queued", request={}, resolved={}, request_hash="h",
                            metadata_={}, created_at=time.time(), progress={}, attempts=0, computing=False))
    sink = EventSink(store, "job_t", min_interval_s=60)
    for i in range(1, 101):
        sink({"type": "progress", "stage": "scoring", "round": 1, "rounds": 1, "fraction": i / 100, "eta_s": 1})
    sink({"type": "metric", "name": "perplexity_after", "value": 3.0})
    kinds = [(e.type, e.data.get("fraction")) for e in store.events("job_t", 0, 1000)]
    assert kinds == [("status", None), ("progress", 0.01), ("progress", 1.0), ("metric", None)]
    store.close()
    assert summarize({"params": 1, "layers": [], "total_s": 2}) == {"params": 1, "total_s": 2}
