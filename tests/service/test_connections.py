"""Idle and slow connections cannot lock everyone out: `fwdprune serve` keeps a bounded number of
connections (by default a quarter of its open-file limit), answers one more with a quick 503, closes a
connection whose request head takes too long, and logs each condition once, not a traceback per
connection. Against a real server process with a low `ulimit -n`."""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.connections import Notices, default_max_connections
from tests.service.conftest import KEY_A, REPO, free_port


class Serve:
    def __init__(self, tmp_path: Path, models_dir: Path, open_files: int | None, **env: str) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "serve.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
        limit = open_files

        def lower_the_open_file_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "service.cli", "serve", "--no-worker", "--log-level", "info"),
                    *("--port", str(self.port), "--data-dir", str(tmp_path / "data")),
                    *("--models-dir", str(models_dir)),
                ],
                cwd=REPO,
                env=base | {"FWDPRUNE_API_KEYS": KEY_A, "FWDPRUNE_DEVICE": "cpu", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lower_the_open_file_limit,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"server not up: {self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def descriptors_below(self, count: int, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while self.descriptors() >= count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _open(port: int, count: int, head: bytes, opened: list[socket.socket]) -> None:
    """`count` connections, opened at once, that send `head` (part of a request's head, or nothing) and
    then wait."""
    batch = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        batch.append(sock)
    deadline = time.monotonic() + 10
    for sock in batch:
        select.select([], [sock], [], max(0.0, deadline - time.monotonic()))
        sock.settimeout(5)
        try:
            sock.getpeername()  # connected, or refused outright (as a flood's extra ones may be)
            if head:
                sock.sendall(head)
        except OSError:
            sock.close()
            continue
        opened.append(sock)


def _probe(url: str) -> tuple[int, float]:
    """/healthz on a new connection: its status and how long the answer took."""
    started = time.monotonic()
    status = httpx.get(f"{url}/healthz", timeout=5, headers={"connection": "close"}).status_code
    return status, time.monotonic() - started


def _open_ones(sockets: list[socket.socket], within_s: float) -> list[socket.socket]:
    """Those of `sockets` the server has not closed within `within_s` (after whatever it answered)."""
    pending = list(sockets)
    deadline = time.monotonic() + within_s
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                if sock.recv(4096, socket.MSG_DONTWAIT):
                    continue  # an answer (408, 503): the close follows
            except BlockingIOError:
                continue
            except OSError:  # reset
                pass
            pending.remove(sock)
    return pending


def test_slow_headers_past_the_open_file_limit_lock_nobody_out(
    tmp_path: Path, models_dir: Path, sockets: list[socket.socket]
) -> None:
    """The finding's attack, scaled: ulimit -n 256 and 400 connections sending part of a head."""
    server = Serve(tmp_path, models_dir, open_files=256, FWDPRUNE_HEADER_TIMEOUT_S="3")
    try:
        _open(server.port, 400, b"GET /healthz HTTP/1.1\r\nX-Slow: ", sockets)
        time.sleep(1.5)  # the flood's refusals have been closed
        for _ in range(5):
            status, took = _probe(server.url)
            assert status in (200, 503) and took < 2, (status, took)
        time.sleep(3)  # the header timeout closes the slow connections: everyone is served again
        status, took = _probe(server.url)
        assert status == 200 and took < 2, (status, took)
        # the slow connections no longer hold the server's descriptors (some of the flood's, refused by
        # a full listen backlog, are still retrying their handshake: each gets its head's time once in)
        assert server.descriptors_below(64, within_s=15), server.descriptors()
        log = server.log()
        assert "at most 64 connections (RLIMIT_NOFILE 256)" in log, log[-3000:]
        assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]
        assert log.count("(FWDPRUNE_MAX_CONNECTIONS)") == 1, log[-3000:]  # once, not per connection
        assert log.count("(FWDPRUNE_HEADER_TIMEOUT_S)") == 1, log[-3000:]
    finally:
        server.stop()


def test_a_low_connection_limit_answers_503_at_once_and_heads_are_timed(
    tmp_path: Path, models_dir: Path, sockets: list[socket.socket]
) -> None:
    server = Serve(
        tmp_path,
        models_dir,
        open_files=None,
        FWDPRUNE_MAX_CONNECTIONS="10",
        FWDPRUNE_HEADER_TIMEOUT_S="2",
        FWDPRUNE_KEEP_ALIVE_TIMEOUT_S="1",
    )
    try:
        # a kept-alive connection that sends a whole request, then dribbles the next one's head
        kept = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sockets.append(kept)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        _open(server.port, 4, b"GET /healthz HTTP/1.1\r\n", sockets)  # part of a head
        _open(server.port, 10, b"", sockets)  # nothing at all
        response = httpx.get(f"{server.url}/healthz", timeout=5)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "connections" in response.json()["detail"]
        time.sleep(2.5)  # heads (and silent connections) past 2 s are closed, with a 408 where begun
        assert _probe(server.url)[0] == 200
        started = sockets[1]
        started.settimeout(2)
        assert started.recv(4096).startswith(b"HTTP/1.1 408")
        # the kept-alive connection's next head: its keep-alive time, then the head's
        assert _open_ones(sockets, within_s=5) == []
    finally:
        server.stop()


def test_the_default_limit_follows_the_open_file_limit() -> None:
    assert default_max_connections(1024) == 256
    assert default_max_connections(20) == 16
    assert default_max_connections(1 << 20) == 10000
    assert default_max_connections(None) == 10000


def test_a_recurring_condition_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    notices = Notices(every_s=60)
    for _ in range(1000):
        notices.note("connections", "too many")
    assert [record.getMessage() for record in caplog.records] == ["too many"]
