import time

import torch

from pruning.evaluation import ForwardCounter
from pruning.monitor import StageMonitor


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
