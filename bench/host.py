"""What a benchmark ran on, written beside its figures: two hosts with the same CPU name (a cloud's "AMD
EPYC") can be generations apart, with instruction sets that change a CPU job's time by 2x or more, so the
record keeps the x86 family and model numbers and the instruction sets the engine's speed depends on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# vector and matrix extensions that decide fp32 and bf16 matmul speed on x86 (pruning.model.loading
# reads the bf16 ones to pick a precision)
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (empty where there is none)."""
    if not cpuinfo.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text(encoding="ascii", errors="replace").splitlines():
        if not line.strip():
            break  # the first processor's block ends at the first blank line
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    return _flags(cpu_fields(cpuinfo))


def _flags(fields: dict[str, str]) -> set[str]:
    return set(fields.get("flags", "").split())


def describe(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """The CPU (name, x86 family and model, its matmul extensions), the cores and the load at this moment."""
    fields = cpu_fields(cpuinfo)
    flags = _flags(fields)  # from the same read as the other fields
    return {
        "cpu": fields.get("model name", "unknown"),
        "cpu_family": fields.get("cpu family"),
        "cpu_model": fields.get("model"),
        "matmul_flags": [flag for flag in MATMUL_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
