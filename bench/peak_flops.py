"""The device's bf16 matmul rate, measured: the denominator of the MFU that `bench.gpu` reports.

    python -m bench.peak_flops              # CUDA if available, else CPU

A square bf16 matmul (8192 on CUDA, a smaller one on CPU) is run MATMULS_PER_CALL times per timed call,
best of REPEATS calls after a warm-up; the rate is 2 n^3 FLOPs per matmul over that time. Measured in the
run it serves, on the same device and software, instead of a datasheet figure that no kernel reaches.
"""

from __future__ import annotations

import json
from typing import Any

from bench.timing import timed

MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}  # CPU: a smaller square keeps the smoke test to seconds
MATMULS_PER_CALL, REPEATS = 10, 5


def measure_peak_flops(device: str) -> dict[str, Any]:
    """bf16 matmul FLOP/s on `device`, with the device's name and what it timed."""
    import torch

    size = MATMUL_SIZE[device]
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (
        torch.randn(size, size, generator=generator, device=device, dtype=torch.bfloat16) for _ in range(2)
    )
    out = torch.empty_like(a)

    def matmuls() -> None:
        for _ in range(MATMULS_PER_CALL):
            torch.matmul(a, b, out=out)

    seconds = min(timed(matmuls, device, repeats=REPEATS))
    flops = 2 * size**3 * MATMULS_PER_CALL / seconds
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {
        "status": "ok",
        "device_name": name,
        "bf16_flops": round(flops),
        "matmul_size": size,
        "matmuls_per_call": MATMULS_PER_CALL,
        "repeats": REPEATS,
        "best_call_s": round(seconds, 6),
    }


def main() -> None:
    import torch

    print(json.dumps(measure_peak_flops("cuda" if torch.cuda.is_available() else "cpu"), indent=2))


if __name__ == "__main__":
    main()
