"""Errors that a user can fix; everything else is a bug and keeps its traceback."""

from __future__ import annotations

from pruning.spec import UnsupportedModelError


class DataError(ValueError):
    """Calibration or evaluation data that cannot be used as given."""


class UsageError(ValueError):
    """A request that cannot be carried out as given (e.g. writing over the input model)."""


class ModelNotFoundError(ValueError):
    """The model is neither a local checkpoint nor a Hub id in the local cache."""


__all__ = ["DataError", "ModelNotFoundError", "UnsupportedModelError", "UsageError"]
