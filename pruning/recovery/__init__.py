"""Recovery: low-rank adapters trained after compensation to bring the pruned model's next-token
distribution back toward the dense model's, with gradients (`distill`) or forward passes only (`zo`),
judged on held-out text and merged into the exported weights, or rolled back.

- `low_rank.py`: the adapters, as forward hooks beside the masks and corrections.
- `objective.py`: the distillation loss, the dense teacher being the same weights with the masks off.
- `training.py`: AdamW (distill) and SPSA (zo) steps.
- `deltas.py`: the merged changes, applied while installed and written by the export.
- `recover.py`: targets, the held-out split, one whole recovery.
"""
