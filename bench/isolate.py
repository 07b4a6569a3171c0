"""One benchmark step in its own spawned process, so its GPU and host memory figures start clean.

    result = run_isolated(prune_speed.prune_step, {...}, timeout_s=600, on_message=record)

The step is a module-level function; it reports along the way with `send(kind, payload)` and its return
value (a dict) is the result. A step that raises comes back as {"status": "failed", "error": ...}; one still
running after `timeout_s` is killed and comes back as {"status": "killed", ...}, so a hung step costs its
own figures and no others. The parent never imports torch's CUDA side: its own context would skew memory.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

Step = Callable[..., dict[str, Any]]
OnMessage = Callable[[str, Any], None]
_messages: Any = None  # the child's queue to the parent; None outside a step's process


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def send(kind: str, payload: Any) -> None:
    """Hand `payload` to the parent's `on_message` now (it survives a later kill); a no-op outside a step."""
    if _messages is not None:
        _messages.put((kind, payload))


def _child(step: Step, kwargs: dict[str, Any], messages: Any) -> None:
    global _messages
    _messages = messages
    try:
        result = step(**kwargs)
    except Exception as err:  # reported to the parent, which records it and goes on with the next step
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
    messages.put(("done", result))
    messages.close()
    messages.join_thread()


def run_isolated(
    step: Step, kwargs: dict[str, Any], timeout_s: float | None, on_message: OnMessage
) -> dict[str, Any]:
    """Run step(**kwargs) in a fresh spawned process, relaying its messages; kill it after `timeout_s`."""
    context = mp.get_context("spawn")
    messages = context.Queue()
    process = context.Process(target=_child, args=(step, kwargs, messages))
    kill_at = None if timeout_s is None else time.monotonic() + timeout_s
    process.start()
    result: dict[str, Any] = {"status": "failed", "error": "the process exited without a result"}
    while True:
        try:
            kind, payload = messages.get(timeout=1.0)
        except queue.Empty:
            if kill_at is not None and time.monotonic() > kill_at:
                process.kill()
                result = {"status": "killed", "error": f"still running after {timeout_s:.0f}s"}
                break
            if not process.is_alive() and messages.empty():
                result["exitcode"] = process.exitcode
                break
            continue
        if kind == "done":
            result = payload
            break
        on_message(kind, payload)
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()
    return result
