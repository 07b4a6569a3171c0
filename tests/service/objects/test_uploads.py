"""The upload validator and the streaming multipart reader, in-process: refusals, piece boundaries, and
time linear in the size of the file (a long line once cost time quadratic in its length)."""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
from pathlib import Path

import pytest

from service.objects.uploads import (
    MultipartUpload,
    TextValidator,
    UploadInvalid,
    UploadTooLarge,
    check_filename,
    validate_text_file,
)

MiB = 1024 * 1024


def validate(content: bytes, filename: str = "c.jsonl", max_line_bytes: int = MiB, piece: int = 7) -> None:
    """Fed in small pieces, so characters, lines and records straddle them."""
    validator = TextValidator(filename, max_line_bytes)
    for start in range(0, len(content), piece):
        validator.feed(content[start : start + piece])
    validator.finish()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("calib.jsonl", "calib.jsonl"),
        ("../../x.TXT", "x.TXT"),
        ("C:\\data\\a.txt", "a.txt"),
        ("é.txt", "é.txt"),
    ],
)
def test_file_names_kept(name: str, expected: str) -> None:
    assert check_filename(name) == expected


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        (".jsonl", "no name before its suffix"),
        ("dir/ .txt", "no name before its suffix"),
        ("a\x00.txt", "control character"),
        ("a\nb.txt", "control character"),
        ("\u202etxt.exe.txt", "control character"),
        ("", "needs a file name"),
        ("data.csv", "unsupported file type"),
    ],
)
def test_file_names_refused(name: str, needle: str) -> None:
    with pytest.raises(UploadInvalid, match=needle):
        check_filename(name)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("c.jsonl", '{"text": "café ☕ 𝄞"}\r\n\n{"text": "second", "id": 2}'.encode()),
        ("c.jsonl", b'{"text": ""}\n{"text": "x"}\n'),
        ("c.jsonl", b'{"text": "\\ud83d\\ude00 a pair is fine"}\n'),
        ("c.txt", "one document, ☕ straddling pieces\nover lines".encode()),
    ],
)
def test_valid_content(filename: str, content: bytes) -> None:
    validate(content, filename)
    validate(content, filename, piece=1)


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("c.jsonl", b'{"text": ""}\n{"text": " \\n\\t"}\n', "file holds no text: every record's `text`"),
        ("c.txt", b" \n\t\n", "file holds no text"),
        (
            "c.jsonl",
            b'{"text": "ok"}\n{"text": "a\\udc00b"}\n',
            "line 2: `text` holds a lone surrogate (U+DC00)",
        ),
        ("c.jsonl", b'{"text": "ok"}\n\xff\n', "not valid UTF-8 (invalid start byte at line 2)"),
        ("c.txt", b"ok\nok\nbad \xc3(\n", "not valid UTF-8 (invalid continuation byte at line 3, byte 10)"),
        ("c.txt", b"cut \xe2\x98", "not valid UTF-8 (unexpected end of data at line 1, byte 4)"),
        ("c.jsonl", b'{"text": "ok"}\n' + b"[" * 5000, "line 2 nests JSON too deeply"),
        ("c.jsonl", '{"text": "a\u2028b"}'.encode(), "line 1 is not valid JSON"),
        ("c.jsonl", b'{"text": 3}', "line 1 must be a JSON object with a string `text`"),
    ],
)
def test_invalid_content(filename: str, content: bytes, needle: str) -> None:
    with pytest.raises(UploadInvalid) as caught:
        validate(content, filename)
    assert needle in str(caught.value)


def test_line_limit_names_line_and_limit() -> None:
    content = b'{"text": "ok"}\n{"text": "ok"}\n' + b"x" * 101
    with pytest.raises(UploadInvalid, match="^line 3 is longer than the limit of 100 bytes$"):
        validate(content, max_line_bytes=100)
    validate(content[:-101] + b'{"text": "' + b"y" * 88 + b'"}', max_line_bytes=100)  # exactly 100


def _single_line(path: Path, size: int) -> Path:
    """One .jsonl record of about `size` bytes: ASCII but for one character, which makes the whole line a
    wide string once decoded (the case that used to cost time quadratic in the line's length)."""
    with path.open("wb") as out:
        out.write('{"text": "é'.encode())
        for _ in range(size // MiB):
            out.write(b"x" * MiB)
        out.write(b'"}\n')
    return path


def _seconds(path: Path, max_line_bytes: int) -> float:
    best = float("inf")
    for _ in range(2):  # the better of two: a busy machine slows a run down, never speeds it up
        started = time.perf_counter()
        validate_text_file(path, path.name, max_line_bytes)
        best = min(best, time.perf_counter() - started)
    return best


def test_validation_time_is_linear_in_line_length(tmp_path: Path) -> None:
    small = _single_line(tmp_path / "small.jsonl", 8 * MiB)
    large = _single_line(tmp_path / "large.jsonl", 64 * MiB)
    ratio = _seconds(large, 128 * MiB) / _seconds(small, 128 * MiB)
    # linear: about 8x; the quadratic validator this replaces took about 35x here
    assert ratio < 20, f"8x the bytes took {ratio:.1f}x the time"


def test_validation_memory_is_a_small_multiple_of_the_longest_line(tmp_path: Path) -> None:
    path = _single_line(tmp_path / "one.jsonl", 8 * MiB)
    tracemalloc.start()
    try:
        validate_text_file(path, path.name, 16 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 8 * MiB, f"peak {peak / MiB:.1f} MiB"  # the bytes, the text, the parsed text


def test_validation_memory_is_bounded_by_the_line_limit(tmp_path: Path) -> None:
    path = _single_line(tmp_path / "one.jsonl", 32 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(UploadInvalid, match="line 1 is longer than the limit of 1048576 bytes"):
            validate_text_file(path, path.name, MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def _form(content: bytes, filename: str = "c.txt", boundary: str = "b0undary") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nignored\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: text/plain\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize("piece", [1, 5, 1 << 16])
def test_multipart_file_is_written_whole(piece: int) -> None:
    content = "line ☕\r\n--b0undar not a boundary\n".encode() * 50
    body, out = _form(content), io.BytesIO()
    upload = MultipartUpload("multipart/form-data; boundary=b0undary", out, 10_000, MiB)
    upload.feed(body[start : start + piece] for start in range(0, len(body), piece))
    sink = upload.finish()
    assert out.getvalue() == content and sink.size == len(content)
    assert sink.sha256 == hashlib.sha256(content).hexdigest() and sink.filename == "c.txt"


def test_multipart_stops_past_the_limit() -> None:
    out = io.BytesIO()
    upload = MultipartUpload("multipart/form-data; boundary=b0undary", out, 1000, MiB)
    with pytest.raises(UploadTooLarge, match="limit of 1000 bytes"):
        upload.feed([_form(b"x" * 1001)])
    assert len(out.getvalue()) <= 1000


def test_multipart_name_is_checked_before_content_is_written() -> None:
    out = io.BytesIO()
    upload = MultipartUpload("multipart/form-data; boundary=b0undary", out, 1000, MiB)
    with pytest.raises(UploadInvalid, match="no name before its suffix"):
        upload.feed([_form(b"text", filename=".txt")])
    assert out.getvalue() == b""
