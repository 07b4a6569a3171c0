"""Store errors worth waiting out, and a retry bounded by time: a lock held by another process, a dropped
connection, a full disk all look the same to a caller (OperationalError, InterfaceError), and each may
clear by itself. One that outlasts the window is the infrastructure's failure, never the job's."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

P = ParamSpec("P")
T = TypeVar("T")

STORE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)
FIRST_WAIT_S = 0.05
MAX_WAIT_S = 5.0


class StoreUnavailable(Exception):
    """The store failed every try for the whole retry window. The message says how long and what kind
    of failure (a lock, a full disk, a lost connection), never the SQL, a host or a path."""


def store_failure(err: BaseException) -> str:
    """What kind of store failure `err` is, in words that hold no SQL, host, path or value."""
    text = str(getattr(err, "orig", None) or err).lower()
    if "locked" in text or "could not obtain lock" in text:
        return "the database was locked"
    if "full" in text or "no space" in text or "quota" in text:
        return "the disk was full"
    if "unable to open" in text or "no such table" in text:
        return "the database could not be opened"
    if "connect" in text or "closed" in text or "terminat" in text:
        return "the connection to the database was lost"
    return f"the database failed ({type(getattr(err, 'orig', None) or err).__name__})"


def retry_store(window_s: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, tried again with exponential backoff while it fails with a store error, for
    up to `window_s` seconds (the last wait cut to end at the window); then StoreUnavailable. Any other
    error is raised at once."""
    backoff = wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S)
    retrying = Retrying(
        retry=retry_if_exception_type(STORE_ERRORS),
        wait=lambda state: min(backoff(state), max(0.0, window_s - (state.seconds_since_start or 0.0))),
        stop=stop_after_delay(window_s),
        reraise=True,
    )
    try:
        return retrying(fn, *args, **kwargs)
    except STORE_ERRORS as err:
        message = f"the job store was unavailable for {window_s:g}s: {store_failure(err)}"
        raise StoreUnavailable(message) from err
