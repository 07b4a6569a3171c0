"""Sub-models scored on two calibration sequences each and on one, side by side in one process.

bonsai's scoring cost is its forward tokens (sub-models × scoring sequences × sequence length): the same
tokens buy twice the sub-models on one sequence as on two. Whether they cost the same time depends on how
well a forward of half the batch (8 masks × 1 sequence instead of 8 × 2) uses the CPU. The same random
sub-models (each unit dropped with bonsai's default probability 0.2) are scored both ways, alternating, in
fp32, 8 per forward as bonsai's rounds score them: tokens per second and seconds per sub-model of each.

    python -m bench.scoring_sequences --models smollm2

Prints a table and writes bench/results/scoring-sequences-cpu.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.bf16_scoring import PER_FORWARD, scoring, scoring_bench
from bench.quality import REPO

SEQUENCES = (2, 1)  # the fast budget's scoring_sequences, and one


def score(model_dir: str, data: Path, sub_models: int, repeats: int, seed: int) -> dict[str, Any]:
    import torch

    from pruning.measure.objectives import make_objective

    setup = scoring(model_dir, data, sub_models, seed)  # SEQUENCES[0] sequences
    masks, ids, keeps = setup.masks, setup.ids, setup.keeps
    objective = make_objective("lm", setup.model, setup.adapter, torch.device("cpu"), masks, None)
    seconds = dict.fromkeys(SEQUENCES, 0.0)
    with masks.installed():
        for count in SEQUENCES:  # warm-up
            masks.set(keeps[:PER_FORWARD])
            objective.replica_losses(ids[:count], PER_FORWARD)
        for _ in range(repeats):
            for count in SEQUENCES:
                began = time.perf_counter()
                for start in range(0, sub_models, PER_FORWARD):
                    forward = keeps[start : start + PER_FORWARD]  # [≤ PER_FORWARD, U]
                    masks.set(forward)
                    objective.replica_losses(ids[:count], forward.shape[0])
                seconds[count] += time.perf_counter() - began
    scored = repeats * sub_models
    row: dict[str, Any] = {"units": masks.space.size, "sub_models": sub_models, "repeats": repeats}
    for count in SEQUENCES:
        row[f"tokens_per_s_{count}"] = round(scored * count * ids.shape[1] / seconds[count], 1)
        row[f"s_per_sub_model_{count}"] = round(seconds[count] / scored, 4)
    # time for the same forward tokens on one sequence as on two
    row["equal_tokens_time_ratio"] = round(row["tokens_per_s_2"] / row["tokens_per_s_1"], 3)
    return row


def describe(name: str, row: dict[str, Any]) -> str:
    return (
        f"{name:8} units {row['units']:5}  tok/s on 2 sequences {row['tokens_per_s_2']:8.1f}  "
        f"on 1 {row['tokens_per_s_1']:8.1f}  s per sub-model {row['s_per_sub_model_2']:.3f} / "
        f"{row['s_per_sub_model_1']:.3f}  the same tokens on 1 sequence take "
        f"{row['equal_tokens_time_ratio']:.2f}x the time"
    )


def main() -> None:
    out = REPO / "bench" / "results" / "scoring-sequences-cpu.json"
    scoring_bench(__doc__, "smollm2", out, score, describe)


if __name__ == "__main__":
    main()
