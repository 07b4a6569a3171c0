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


# what a store error carries (SQLAlchemy's statement, its parameters and a link; PostgreSQL's quoted line)
_SQL = re.compile(r"\[SQL: .*?\](?=\s*(?:\[parameters|\(Background|\n|\Z))", re.S)
_PARAMETERS = re.compile(r"\[parameters: .*?\](?=\s*(?:\(Background|\n|\Z))", re.S)
_BACKGROUND = re.compile(r"\(Background on this error at: [^)]*\)")
_SQL_LINE = re.compile(r"^\s*LINE \d+: .*\n?(?:^\s*\^\s*$\n?)?", re.M)
# where a job ran: worker ids (wrk_<host>_<pid>_<suffix>), database URLs, addresses, a server's name
_WORKER_ID = re.compile(r"(?<![\w.-])wrk_[\w.-]+")
_DATABASE_URL = re.compile(r"\b(?:sqlite|postgres(?:ql)?|mysql)(?:\+\w+)?://\S+", re.I)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_SERVER_NAME = re.compile(r'\b(server at|host) "[^"]*"')


def redact_paths(message: str | None) -> str | None:
    """`message` with every absolute path cut to its last component (`/srv/data/jobs/x/out` -> `out`)."""
    return None if message is None else _SERVER_PATH.sub(r"\1", message)


def public_message(message: str | None, hosts: tuple[str, ...] = ()) -> str | None:
    """`message` as a job's owner may read it: no SQL (nor its parameters), no worker id, host name
    (`hosts`, and any a database error quotes), address, database URL or server path."""
    if message is None:
        return None
    for pattern in (_SQL, _PARAMETERS, _BACKGROUND, _SQL_LINE):
        message = pattern.sub("", message)
    message = _WORKER_ID.sub("a worker", message)
    message = _DATABASE_URL.sub("the database", message)
    message = _SERVER_NAME.sub(r"\1 a host", message)
    message = _IPV4.sub("a host", message)
    for host in hosts:
        if len(host) >= 2:  # a one-letter name would cut words apart
            message = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "a host", message)
    message = redact_paths(message) or ""
    return "\n".join(line.rstrip() for line in message.strip().splitlines())


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
