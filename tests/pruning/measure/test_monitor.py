import mmap
import time
from pathlib import Path

import pytest
import torch

from pruning.measure.monitor import StageMonitor, anonymous_rss
from pruning.measure.objectives import ForwardCounter


def test_stages_record_time_tokens_and_rss() -> None:
    monitor = StageMonitor(torch.device("cpu"))
    monitor.counter = ForwardCounter()
    with monitor.stage("scoring"):
        monitor.counter.tokens += 300
        time.sleep(0.05)
    with monitor.stage("export"):
        pass
    with monitor.stage("scoring"):  # a stage met twice accumulates
        monitor.counter.tokens += 20
    summary = monitor.summary()
    assert summary["forward_tokens_by_stage"] == {"scoring": 320, "export": 0}
    assert summary["stage_s"]["scoring"] >= 0.05
    assert summary["total_s"] == round(sum(monitor.stage_s.values()), 3)
    assert summary["peak_host_rss_bytes"]["scoring"] > 10 * 2**20
    assert summary["peak_gpu_bytes"] == {}


@pytest.mark.skipif(anonymous_rss() is None, reason="RssAnon is read from /proc/self/status (Linux only)")
def test_anonymous_rss_sees_an_allocation_and_not_a_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    size = 256 * 2**20
    path.write_bytes(b"\1" * size)
    monitor = StageMonitor(torch.device("cpu"))
    # file-backed pages: RSS grows, anonymous memory does not
    with (
        monitor.stage("read_mapped"),
        path.open("rb") as file,
        mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
    ):
        assert sum(mapped[i] for i in range(0, size, 4096)) == size // 4096  # touch every page
        time.sleep(
            0.05
        )  # mapped until the sampler has seen it: the stage's last sample comes after unmapping
    with monitor.stage("allocate"):
        block = torch.ones(size, dtype=torch.uint8)
        time.sleep(0.05)
        del block
    summary = monitor.summary()
    grown = summary["host_anon_growth_bytes"]
    assert grown == {
        stage: summary["peak_host_anon_bytes"][stage] - summary["host_anon_at_start_bytes"][stage]
        for stage in ("read_mapped", "allocate")
    }
    assert grown["allocate"] >= 0.9 * size
    assert grown["read_mapped"] < 0.25 * size
    assert (
        summary["peak_host_rss_bytes"]["read_mapped"]
        >= summary["host_anon_at_start_bytes"]["read_mapped"] + 0.9 * size
    )
