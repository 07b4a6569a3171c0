"""A worker's store calls, retried with backoff while the error looks transient: a lock held by another
process, a dropped connection, a full disk. One that persists through every try is raised."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_attempt, wait_exponential

from service.settings import Settings
from service.store.retry import STORE_ERRORS

log = logging.getLogger("fwdprune.worker")

P = ParamSpec("P")
T = TypeVar("T")


class StoreCall:
    def __init__(self, settings: Settings) -> None:
        self._retrying = Retrying(
            retry=retry_if_exception_type(STORE_ERRORS),
            wait=wait_exponential(multiplier=0.1, max=settings.store_retry_max_wait_s),
            stop=stop_after_attempt(settings.store_retry_attempts),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._retrying(fn, *args, **kwargs)
