"""What a method's options are, and the registry that names the methods every entry point offers.

Each method's options model registers itself with `@register_options("<method>")` (bonsai's in
`pruning.methods.bonsai.options`); `pruning.methods.registered` imports the built-in ones. Torch-free: the
API process validates a job's options through these models at submit, without the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pruning.errors import UsageError


class MethodOptions(BaseModel):
    """Options shared by every scoring method (a method without options of its own registers this)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN or infinite option is never meant

    # named scoring budgets: the options that differ from the defaults at each (none: every budget alike)
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}


OptionsClass = TypeVar("OptionsClass", bound=type[MethodOptions])

METHOD_OPTIONS: dict[str, type[MethodOptions]] = {}


def register_options(method: str) -> Callable[[OptionsClass], OptionsClass]:
    """Class decorator: `method` is a method every entry point offers, its options validated by the class."""

    def register(cls: OptionsClass) -> OptionsClass:
        METHOD_OPTIONS[method] = cls
        return cls

    return register


def options_for(method: str) -> type[MethodOptions]:
    """The options model of the registered method called `method`."""
    if method not in METHOD_OPTIONS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(sorted(METHOD_OPTIONS))}")
    return METHOD_OPTIONS[method]


def field_bounds(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The bounds (ge, gt, le, lt) a model's field states, as Field keywords: what a tighter limit on
    the same value keeps within."""
    bounds: dict[str, Any] = {}
    for constraint in model.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(constraint, key, None)
            if value is not None:
                bounds[key] = value
    return bounds
