"""Ingress against a real server: no key or too many bytes means no body read, no memory and no disk spent;
uploads stream to disk against their limit; upload names and contents are refused with their reason."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.objects.uploads import UploadSink
from service.settings import Settings
from tests.service.conftest import KEY_A, Server, upload

MiB = 1024 * 1024
MAX_UPLOAD = 1 * MiB
MAX_REQUEST = 64 * 1024
MAX_LINE = 4096
BOUNDARY = "ingress-boundary-7f3a"
PIECE = 64 * 1024


@dataclass
class Ingress:
    server: Server
    temp_dir: Path  # the server's TMPDIR: where Starlette would spool a multipart body

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    @property
    def files_dir(self) -> Path:
        return self.server.data_dir / "files"


@pytest.fixture(scope="module")
def ingress(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Ingress]:
    root = tmp_path_factory.mktemp("ingress")
    temp_dir = root / "tmp"
    temp_dir.mkdir()
    server = Server(
        root / "data",
        models_dir,
        FWDPRUNE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        FWDPRUNE_MAX_REQUEST_BYTES=str(MAX_REQUEST),
        FWDPRUNE_MAX_LINE_BYTES=str(MAX_LINE),
        TMPDIR=str(temp_dir),
    ).start()
    with server.client() as client:  # warm up the upload path before any memory is measured
        assert client.get("/v1/files").status_code == 200
    yield Ingress(server, temp_dir)
    server.stop()


# --- what the server process holds and writes -------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def bytes_written(pid: int) -> int | None:
    """write(2) bytes of the process (files and sockets alike), or None where /proc/<pid>/io is closed."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("wchar:"))


def listing(*dirs: Path) -> set[Path]:
    return {path for folder in dirs for path in folder.rglob("*")}


# --- raw HTTP/1.1, for what httpx cannot do: stop sending once the server has answered ---------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def detail(self) -> object:
        return json.loads(self.body)["detail"]


def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)  # little in flight: bytes sent ≈ bytes read
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        piece = sock.recv(65536)
        assert piece, "connection closed inside the answer"
        body += piece
    return Answer(int(status_line.split()[1]), headers, body)


def answer_to_head(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[Answer, float]:
    """The answer to a request whose head only is sent, and how long it took; the body never is."""
    with connect(port) as sock:
        started = time.monotonic()
        sock.sendall(request_head(method, path, headers))
        return read_answer(sock), time.monotonic() - started


def send_chunked_until_answered(
    port: int, path: str, headers: dict[str, str], prefix: bytes, total: int
) -> tuple[Answer, int]:
    """Send a chunked body of up to `total` bytes, a piece at a time, stopping once an answer arrives.

    Returns the answer and the body bytes sent before it: at most what the server read plus what sat in
    the two sockets' buffers.
    """
    filler = b"a" * PIECE
    with connect(port) as sock:
        sock.sendall(request_head("POST", path, {**headers, "Transfer-Encoding": "chunked"}))
        sent = 0
        for data in [prefix] + [filler] * ((total - len(prefix)) // PIECE):
            if select.select([sock], [], [], 0.005)[0]:
                break  # answered early: the rest is never sent
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sent += len(data)
        else:
            sock.sendall(b"0\r\n\r\n")
        return read_answer(sock), sent


def bearer(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def multipart_head(filename: bytes = b"big.txt") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: text/plain\r\n\r\n'
    )


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def generated_body(prefix: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes, produced a MiB at a time, so the test never holds the body either."""
    yield prefix
    block = b"x" * MiB
    for _ in range((total - len(prefix)) // MiB):
        yield block


# --- no key: refused from the headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"), [("/v1/jobs", {"Content-Type": "application/json"}), ("/v1/files", MULTIPART)]
)
def test_unauthenticated_request_is_answered_from_its_head(
    ingress: Ingress, path: str, headers: dict[str, str]
) -> None:
    # the head declares a GiB and no byte of it is sent: the 401 must not wait for the body
    answer, seconds = answer_to_head(
        ingress.server.port, "POST", path, {**headers, "Content-Length": str(1024 * MiB)}
    )
    assert answer.status == 401 and seconds < 5, (answer, seconds)
    assert answer.detail() == "missing or invalid API key"
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("path", "headers", "prefix"),
    [
        ("/v1/jobs", {"Content-Type": "application/json"}, b'{"model": "'),
        ("/v1/files", MULTIPART, multipart_head()),
    ],
)
def test_unauthenticated_body_costs_no_memory_or_disk(
    ingress: Ingress, path: str, headers: dict[str, str], prefix: bytes
) -> None:
    # 200 MB streamed without a length: no memory, no disk, not even a spooled temporary file
    total = 200 * MiB
    before = listing(ingress.files_dir, ingress.temp_dir)
    rss, written = rss_bytes(ingress.pid), bytes_written(ingress.pid)
    with httpx.Client(base_url=ingress.server.url, timeout=60) as client:
        response = client.post(path, content=generated_body(prefix, total), headers=headers)
    grown = rss_bytes(ingress.pid) - rss
    assert grown < 50 * MiB, f"server RSS grew by {grown / MiB:.1f} MiB"
    if written is not None:
        wrote = (bytes_written(ingress.pid) or 0) - written
        assert wrote < 50 * MiB, f"server wrote {wrote / MiB:.1f} MiB"
    assert listing(ingress.files_dir, ingress.temp_dir) == before
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "missing or invalid API key"}


def test_wrong_key_is_refused_before_the_body(ingress: Ingress) -> None:
    answer, _ = answer_to_head(
        ingress.server.port,
        "POST",
        "/v1/files",
        {**MULTIPART, **bearer("not-a-key-0123456789abcdef"), "Content-Length": str(MAX_UPLOAD)},
    )
    assert answer.status == 401 and answer.detail() == "missing or invalid API key"


# --- with a key: the body is bounded ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "length", "limit"),
    [
        ("/v1/jobs", {"Content-Type": "application/json"}, MAX_REQUEST + 1, MAX_REQUEST),
        ("/v1/files", MULTIPART, MAX_UPLOAD + 65 * 1024, MAX_UPLOAD),
    ],
)
def test_declared_length_over_the_limit_is_refused_unread(
    ingress: Ingress, path: str, headers: dict[str, str], length: int, limit: int
) -> None:
    answer, seconds = answer_to_head(
        ingress.server.port, "POST", path, {**headers, **bearer(), "Content-Length": str(length)}
    )
    assert answer.status == 413 and seconds < 5, (answer, seconds)
    assert f"limit of {limit} bytes" in str(answer.detail())


def test_chunked_upload_stops_at_the_limit(ingress: Ingress) -> None:
    before = listing(ingress.files_dir, ingress.temp_dir)
    answer, sent = send_chunked_until_answered(
        ingress.server.port, "/v1/files", {**MULTIPART, **bearer()}, multipart_head(), 16 * MiB
    )
    assert answer.status == 413, answer
    assert f"limit of {MAX_UPLOAD} bytes" in str(answer.detail())
    assert sent < MAX_UPLOAD + MiB, f"{sent} bytes went out before the 413"
    assert listing(ingress.files_dir, ingress.temp_dir) == before  # no temporary file left behind


def test_chunked_json_stops_at_the_limit(ingress: Ingress) -> None:
    answer, sent = send_chunked_until_answered(
        ingress.server.port,
        "/v1/jobs",
        {"Content-Type": "application/json", **bearer()},
        b'{"model": "',
        16 * MiB,
    )
    assert answer.status == 413, answer
    assert answer.detail() == f"request body exceeds the limit of {MAX_REQUEST} bytes"
    assert sent < MAX_REQUEST + MiB, f"{sent} bytes went out before the 413"


def test_upload_at_the_limit_is_stored_whole(ingress: Ingress, tmp_path: Path) -> None:
    line = b"abcdefghij" * 100 + b"\n"
    path = tmp_path / "calib.txt"
    path.write_bytes(line * (MAX_UPLOAD // len(line)))
    with ingress.server.client() as client:
        file_id = upload(client, path)
        meta = client.get(f"/v1/files/{file_id}").json()
    assert meta["bytes"] == path.stat().st_size and meta["filename"] == "calib.txt"
    stored = [p for p in ingress.files_dir.iterdir() if p.name.startswith(file_id)]
    assert [p.read_bytes() for p in stored] == [path.read_bytes()]


def test_upload_body_is_documented(ingress: Ingress) -> None:
    spec = httpx.get(f"{ingress.server.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/files"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert body["required"] and schema["required"] == ["file"]
    assert schema["properties"]["file"]["format"] == "binary"


# --- refusals of names and contents ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        (".jsonl", b'{"text": "hi"}\n', "no name before its suffix"),
        ("\u202egnp.txt", b"hi\n", "control character"),  # a right-to-left override, spoofing the suffix
        ("a\x1bb.txt", b"hi\n", "control character"),
        ("blank.jsonl", b'{"text": ""}\n{"text": "  \\t"}\n\n', "holds no text"),
        (
            "surrogate.jsonl",
            b'{"text": "ok"}\n{"text": "\\ud800"}\n',
            "line 2: `text` holds a lone surrogate",
        ),
        ("long.jsonl", b'{"text": "ok"}\n' + b'{"text": "' + b"y" * MAX_LINE + b'"}\n', "line 2 is longer"),
        ("deep.jsonl", b"[" * 4000 + b"\n", "line 1 nests JSON too deeply"),
        ("sep.jsonl", '{"text": "a\u2028b"}\n'.encode(), "line 1 is not valid JSON"),
    ],
)
def test_refused_uploads_name_the_reason(
    ingress: Ingress, filename: str, content: bytes, needle: str
) -> None:
    before = listing(ingress.files_dir)
    with ingress.server.client() as client:
        response = client.post("/v1/files", files={"file": (filename, content)})
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"][0]["msg"]
    assert listing(ingress.files_dir) == before


def test_long_line_names_the_limit(ingress: Ingress) -> None:
    with ingress.server.client() as client:
        response = client.post("/v1/files", files={"file": ("l.jsonl", b"z" * (MAX_LINE + 1))})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == f"line 1 is longer than the limit of {MAX_LINE} bytes"


def test_nul_in_the_file_name_is_refused(ingress: Ingress) -> None:
    # httpx percent-encodes a NUL in a file name, so the form is written by hand
    body = multipart_head(b"calib\x00.txt") + b"hello\r\n" + f"--{BOUNDARY}--\r\n".encode()
    with ingress.server.client() as client:
        response = client.post("/v1/files", content=body, headers=MULTIPART)
    assert response.status_code == 422 and "control character" in response.text


@pytest.mark.parametrize(
    ("content", "headers", "needle"),
    [
        (b"text", {"Content-Type": "text/plain"}, "multipart/form-data"),
        (b"--x\r\n\r\n--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}, "no `file` field"),
        (multipart_head() + b"cut short", MULTIPART, "ended before the file did"),
    ],
)
def test_malformed_forms_are_refused(
    ingress: Ingress, content: bytes, headers: dict[str, str], needle: str
) -> None:
    with ingress.server.client() as client:
        response = client.post("/v1/files", content=content, headers=headers)
    assert response.status_code == 422 and needle in response.text, response.text


# --- a full disk (in-process: the real disk cannot be filled for a test) --------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_507_without_a_path(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], device="cpu")

    def full_disk(self: UploadSink, data: bytes) -> None:
        raise OSError(code, os.strerror(code), str(settings.files_dir.resolve() / ".upload-x"))

    monkeypatch.setattr(UploadSink, "write", full_disk)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/files", files={"file": ("c.txt", b"hello\n")}, headers=bearer())
    assert response.status_code == 507, response.text
    assert response.json() == {"detail": "the server has no space left to store the upload"}
    assert str(tmp_path) not in response.text
    assert list(settings.files_dir.iterdir()) == []
