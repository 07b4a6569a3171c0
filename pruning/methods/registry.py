"""The scoring methods by name: an allowlist, never class names from user input. Importing this module
registers the built-in methods (each with `@register_method`)."""

from __future__ import annotations

from pruning.errors import UsageError
from pruning.methods import flap, random_units, wanda_sp
from pruning.methods.base import METHODS, PruningMethod, register_method
from pruning.methods.bonsai import method as bonsai
from pruning.methods.options import MethodOptions, options_for

BUILT_IN = (bonsai.Bonsai, flap.Flap, random_units.RandomUnits, wanda_sp.WandaSp)


def method_class(name: str) -> type[PruningMethod]:
    """The registered method called `name`."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_method(name: str, options: MethodOptions | dict | None = None) -> PruningMethod:
    """The method called `name` with its options (validated here when given as a dict)."""
    cls = method_class(name)
    if not isinstance(options, MethodOptions):
        options = options_for(name).model_validate(options or {})
    return cls(options)


__all__ = ["BUILT_IN", "METHODS", "make_method", "method_class", "register_method"]
