"""The API's own rendering of request validation errors: every refusal a 422 that names the field, and
a body that is valid JSON even when the offending input was not a finite number."""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# an absolute POSIX path of two components or more: a server's directory layout is nobody else's business
_SERVER_PATH = re.compile(r"(?<![\w.~:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def redact_paths(message: str | None) -> str | None:
    """`message` with every absolute path cut to its last component (`/srv/data/jobs/x/out` -> `out`)."""
    return None if message is None else _SERVER_PATH.sub(r"\1", message)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: such an input is echoed as its name, a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_finite(jsonable_encoder(error)) for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def storage_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The object store refused or could not be reached: a 503 with its reason (a StorageError's message
    names the action and the store's error code, never a path, an endpoint or a credential)."""
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
