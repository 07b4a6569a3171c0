"""Registry of scoring methods: an allowlist of names, never class names from user input."""

from __future__ import annotations

from pruning.errors import UsageError
from pruning.methods.base import MethodContext, MethodResult, PruningMethod, SizeResult
from pruning.methods.bonsai import Bonsai
from pruning.methods.flap import Flap
from pruning.methods.random_units import RandomUnits
from pruning.methods.wanda_sp import WandaSp
from pruning.spec import METHOD_OPTIONS, MethodOptions

METHODS: dict[str, type[PruningMethod]] = {cls.name: cls for cls in (Bonsai, Flap, RandomUnits, WandaSp)}


def make_method(name: str, options: MethodOptions | dict | None = None) -> PruningMethod:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    if not isinstance(options, MethodOptions):
        options = METHOD_OPTIONS[name].model_validate(options or {})
    return METHODS[name](options)


__all__ = ["METHODS", "MethodContext", "MethodResult", "PruningMethod", "SizeResult", "make_method"]
