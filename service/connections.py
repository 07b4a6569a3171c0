"""How `fwdprune serve` takes HTTP connections: a bounded number of them, each given a bounded time to
send a request's head, so that idle or slow connections cannot take every file descriptor of the
process and lock everyone out.

uvicorn alone bounds neither: its `limit_concurrency` answers 503 only once a request's head has
arrived, and it has no timeout on reading one (its keep-alive timeout starts after a response). So the
API runs uvicorn's h11 protocol with three additions:

- at most `max_connections` open at once (default: a quarter of the process's RLIMIT_NOFILE, at most
  10000); one more is answered 503 with `Retry-After` at once and closed (the refusals themselves are
  bounded: a quarter more, each closed within a second, past which a connection is closed unanswered);
- a request's head (line and headers) must arrive within `header_timeout_s` of the connection's
  opening, or of the previous response plus the keep-alive timeout; a connection that takes longer is
  answered 408 (where it sent part of one) and closed;
- its accept backlog is bounded too (a quarter of `max_connections`): the event loop accepts that many
  at a time, and each holds a descriptor until it is refused, so the open-file limit leaves room for
  the connections kept, the refusals and a few bursts of accepts.

Each of these conditions is logged once a minute at most, with a count (never a traceback per
connection); so is running out of file descriptors, should anything else take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import resource
import socket
import sys
import time
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

log = logging.getLogger("uvicorn.error")  # where uvicorn logs, at its --log-level

MAX_DEFAULT_CONNECTIONS = 10_000
MIN_DEFAULT_CONNECTIONS = 16
REFUSED_LINGER_S = 1.0  # a refused connection's 503 gets this long to be read before the socket goes
NOTICE_EVERY_S = 60.0
MAX_BACKLOG = 2048  # uvicorn's own default


def open_file_limit() -> int | None:
    """This process's soft RLIMIT_NOFILE; None where it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(open_files: int | None) -> int:
    """A quarter of the open-file limit (the rest is for the refusals, the accepts under way, the store,
    uploads and logs), at least 16 and at most 10000."""
    if open_files is None:
        return MAX_DEFAULT_CONNECTIONS
    return max(MIN_DEFAULT_CONNECTIONS, min(MAX_DEFAULT_CONNECTIONS, open_files // 4))


def max_connections(settings: Settings) -> int:
    return settings.max_connections or default_max_connections(open_file_limit())


class Notices:
    """Warnings about a condition that may recur on every connection, logged once per NOTICE_EVERY_S
    with the count of occurrences since the last one."""

    def __init__(self, every_s: float = NOTICE_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, key: str, message: str) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return
        count, self._count[key], self._last[key] = self._count[key], 0, now
        since = f" ({count} times in the last {self.every_s:g} s)" if last is not None and count > 1 else ""
        log.warning("%s%s", message, since)


def _response(status: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


BUSY = _response(
    "503 Service Unavailable",
    "the server has as many connections open as it keeps; try again shortly",
    "retry-after: 1\r\n",
)
HEAD_TIMEOUT = _response("408 Request Timeout", "the request's head did not arrive in time")


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on open connections and a timeout on each request's head (see
    the module's docstring). `limited_protocol` makes one with the settings' values."""

    max_connections: ClassVar[int] = MAX_DEFAULT_CONNECTIONS
    max_refusing: ClassVar[int] = MAX_DEFAULT_CONNECTIONS // 4
    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_s: ClassVar[float] = 5.0
    notices: ClassVar[Notices] = Notices()
    refusing: ClassVar[int] = 0  # refused connections whose 503 is still on its way

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # a connection over the cap -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)  # type: ignore[arg-type]
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.header_timeout_s)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        self.notices.note(
            "connections",
            f"{self.max_connections} connections are open, the most this server keeps "
            "(FWDPRUNE_MAX_CONNECTIONS): new ones are answered 503 and closed",
        )
        if type(self).refusing >= self.max_refusing:  # a flood: no descriptor is kept for an answer
            transport.abort()
            return
        type(self).refusing += 1
        transport.write(BUSY)
        if transport.can_write_eof():
            transport.write_eof()  # the answer, then end of stream: the client's request is read and dropped
        self._head_timer = self.loop.call_later(REFUSED_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's head is in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            type(self).refusing -= 1
            self._refused = False
            return
        super().connection_lost(exc)

    # the time a request's head may take --------------------------------------------------------------
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._disarm()
        else:  # the next request's head: within the keep-alive time and then the head's own
            self._arm(self.keep_alive_s + self.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.notices.note(
            "head",
            "closed a connection that sent no complete request head within "
            f"{self.header_timeout_s:g} s (FWDPRUNE_HEADER_TIMEOUT_S)",
        )
        if self.conn.trailing_data[0]:  # part of a head came: say why it is cut off
            self.transport.write(HEAD_TIMEOUT)
        self.transport.close()


def limited_protocol(settings: Settings, connections: int) -> type[LimitedH11Protocol]:
    """The protocol class with these limits (uvicorn makes one instance per connection)."""
    return type(
        "LimitedH11Protocol",
        (LimitedH11Protocol,),
        {
            "max_connections": connections,
            "max_refusing": max(MIN_DEFAULT_CONNECTIONS, connections // 4),
            "header_timeout_s": settings.header_timeout_s,
            "keep_alive_s": float(settings.keep_alive_timeout_s),
            "notices": Notices(),
        },
    )


class Server(uvicorn.Server):
    """uvicorn's server, its event loop logging a lack of file descriptors once a minute, not as a
    traceback on every try to accept."""

    notices = Notices()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self._loop_exception)
        await super().serve(sockets)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        err = context.get("exception")
        if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE):
            self.notices.note(
                "descriptors",
                f"out of file descriptors ({err.strerror}; RLIMIT_NOFILE {open_file_limit()}): new "
                "connections wait until some close; lower FWDPRUNE_MAX_CONNECTIONS or raise the limit",
            )
            return
        loop.default_exception_handler(context)


def serve(app: Any, settings: Settings, log_level: str) -> int:
    """Run `app` on the settings' host and port with the connection limits; the exit status."""
    connections = max_connections(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=limited_protocol(settings, connections),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        backlog=min(MAX_BACKLOG, max(MIN_DEFAULT_CONNECTIONS, connections // 4)),
    )
    log.info(
        "at most %d connections (RLIMIT_NOFILE %s), request heads within %g s",
        connections,
        open_file_limit(),
        settings.header_timeout_s,
    )
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        print("fwdprune serve: the server did not start", file=sys.stderr)
        return 3
    return 0
