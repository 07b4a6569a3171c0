"""Errors a user can fix, each with a stable code; everything else is a bug and keeps its traceback.

One base, `FwdpruneError`, so every entry point treats user errors alike: the CLI prints the message and
exits with `EXIT_USER_ERROR`, the job runner records `code` as the job's failure code, and the API answers
422 naming `code` as the error type. Torch-free: the API process imports it.
"""

from __future__ import annotations

import sys
from typing import ClassVar

EXIT_USER_ERROR = 2  # the CLI's exit status for a request it cannot carry out as given


class FwdpruneError(Exception):
    """A request that cannot be carried out as given; the message says what to change."""

    code: ClassVar[str] = "invalid_request"


class UsageError(FwdpruneError):
    """Settings that cannot work together or on this machine (e.g. writing over the input model)."""

    code = "invalid_request"


class DataError(FwdpruneError):
    """Calibration or evaluation data that cannot be used as given."""

    code = "invalid_data"


class ModelNotFoundError(FwdpruneError):
    """The model is neither a local checkpoint nor a Hub id in the local cache."""

    code = "model_not_found"


class UnsupportedModelError(FwdpruneError):
    """The checkpoint's architecture has no adapter, the checkpoint cannot be pruned again, or its files
    cannot be read safely (a weight file named anywhere but directly inside the model folder)."""

    code = "unsupported_model"


def failure_code(err: BaseException) -> str:
    """The code a job that ended with `err` fails with: the user error's own, `oom` for memory, else
    `internal_error`."""
    if isinstance(err, FwdpruneError):
        return err.code
    torch = sys.modules.get("torch")  # only a process that imported torch can have run out of its memory
    if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
        return "oom"
    return "internal_error"


__all__ = [
    "EXIT_USER_ERROR",
    "DataError",
    "FwdpruneError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "UsageError",
    "failure_code",
]
