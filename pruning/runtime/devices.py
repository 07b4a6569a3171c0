"""How a job's model is laid out on its GPUs: a replica on each (bonsai's sub-models shared across them,
`pruning.runtime.distributed`), or, when one GPU cannot hold it, one model spread across them (accelerate's
`device_map="auto"` under a `max_memory` per GPU), its sub-models scored one forward after another.

The decision is a pure function of the model's bytes at the scoring precision and the GPUs' free memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.errors import UsageError

# Scoring's activations (sub-models batched per forward) and the allocator's cache on top of the weights,
# scoring's activations, as a fraction of the weights (measured on a 7B model: docs/performance.md)
ACTIVATION_MARGIN = 0.35
# bytes per parameter at each scoring precision: (the decoder's weight matrices, everything else). The
# quantized formats leave embeddings, norms and the output head in 16 bits (loading.py)
BYTES_PER_PARAM: dict[str, tuple[int, int]] = {
    "int8": (1, 2),
    "int8-weight-only": (1, 2),
    "fp8": (1, 2),
    "bf16-mixed": (4, 4),  # fp32 weights; bf16 activations under autocast
    "bf16": (2, 2),
    "fp16": (2, 2),
    "fp32": (4, 4),
}
GB = 1e9


@dataclass(frozen=True)
class Placement:
    """Where the model goes: `replicas` processes with a whole model each on its own GPU (1: one
    process), or one model spread over the GPUs that `max_memory` names."""

    replicas: int = 1
    max_memory: dict[int, int] | None = None  # spread: bytes of weights each GPU (by index) may take


def scoring_bytes(matrix_params: int, other_params: int, precision: str) -> int:
    """Bytes of the model's weights at `precision` (resolved, never "auto"): `matrix_params` in the
    decoder's weight matrices, which the quantized formats store in one byte, `other_params` elsewhere."""
    matrix, other = BYTES_PER_PARAM[precision]
    return matrix * matrix_params + other * other_params


def plan_placement(
    gpus: int, model_bytes: int, free_bytes: list[int], margin: float = ACTIVATION_MARGIN
) -> Placement:
    """The placement of a model of `model_bytes` on `gpus` GPUs with `free_bytes` free each: a replica per
    GPU when every one holds the model with `margin` of it to spare for scoring; else the model spread
    across them, each GPU taking weights up to its free memory less the same margin; refused when even
    all of them together cannot hold it. One GPU is the single-device job, whatever its memory."""
    if gpus == 1:
        return Placement()
    free = free_bytes[:gpus]
    if model_bytes * (1.0 + margin) <= min(free):
        return Placement(replicas=gpus)
    max_memory = {index: int(bytes_ / (1.0 + margin)) for index, bytes_ in enumerate(free)}
    if sum(max_memory.values()) < model_bytes:
        raise UsageError(
            f"the model needs about {model_bytes * (1.0 + margin) / GB:.1f} GB of GPU memory at its scoring "
            f"precision, and the job's {gpus} GPUs have {sum(free) / GB:.1f} GB free together: ask for "
            "more gpus, or a leaner precision (int8)"
        )
    return Placement(max_memory=max_memory)
