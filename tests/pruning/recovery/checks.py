"""What the recovery tests check alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file


def assert_rolled_back(report: Any, plain: Any, out_dir: Path, plain_dir: Path, events: list[Any]) -> None:
    """`report`'s recovery was rolled back: its job measured and wrote exactly what the job without
    recovery (`plain`, written to `plain_dir`) did, and warned of it."""
    assert report.recovery is not None and report.recovery.rolled_back
    assert report.perplexity is not None and plain.perplexity is not None
    assert report.perplexity.after == pytest.approx(plain.perplexity.after, rel=1e-9)
    for shard in plain_dir.glob("*.safetensors"):
        ours, theirs = load_file(shard), load_file(out_dir / shard.name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(e["type"] == "warning" and "rolled back" in e["message"] for e in events)
