"""Process lifetime: a child that dies with the process that started it."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A call that has Linux send `sig` to the calling process when its parent dies (a no-op elsewhere):
    a `preexec_fn` for a child, or called by a process for itself."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    # looked up here, before any fork: the child, between fork and exec, only makes the call
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    signum = int(sig)

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return set_signal
