"""Uploads: the `file` field of a multipart body, streamed to disk while it is counted, hashed and
validated (UTF-8, the calibration formats the engine reads), in one pass and bounded memory."""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

SUFFIXES = (".jsonl", ".txt")
UPLOAD_TMP_PREFIX = ".upload-"  # an upload on its way to disk, in the files directory
CHUNK = 1 << 20
FIELD = "file"
# control (Cc), format (Cf: bidi overrides, zero-width joiners) and surrogate (Cs) characters
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


class UploadTooLarge(Exception):
    pass


class UploadInvalid(ValueError):
    pass


def check_filename(filename: str) -> str:
    if any(unicodedata.category(char) in UNPRINTABLE_CATEGORIES for char in filename):
        raise UploadInvalid("the file name holds a control character")
    name = Path(filename.replace("\\", "/")).name  # never trust client paths; keep the base name only
    if not name or len(name) > 255:
        raise UploadInvalid("the upload needs a file name")
    if not name.lower().endswith(SUFFIXES):
        raise UploadInvalid(
            f"unsupported file type {name!r}: upload .jsonl (a `text` field per line) or .txt"
        )
    if not name[: name.rfind(".")].strip():
        raise UploadInvalid(f"the file name {name!r} has no name before its suffix")
    return name


class TextValidator:
    """Checks a file's bytes as they arrive, in time linear in its size.

    A .txt is one document to the engine: it is decoded incrementally, never held. A .jsonl holds one
    record per line: only the current line is buffered, up to `max_line_bytes`, which bounds memory.
    Splitting the bytes at b"\\n" is safe in UTF-8, where that byte never occurs inside a character.
    """

    def __init__(self, filename: str, max_line_bytes: int) -> None:
        self.jsonl = filename.lower().endswith(".jsonl")
        self.max_line_bytes = max_line_bytes
        self.has_text = False
        self.line_no = 0  # lines completed so far
        self.offset = 0  # bytes fed so far
        self.newlines = 0  # in a .txt, for the line number of a decoding error
        self._line = bytearray()  # the incomplete last line of a .jsonl
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, data: bytes) -> None:
        if self.jsonl:
            self._feed_lines(data)
        else:
            self._feed_text(data, final=False)
        self.offset += len(data)

    def finish(self) -> None:
        if self.jsonl:
            if self._line:
                line = self._decode_line(self._line)
                self._line.clear()
                self._check_line(line)
        else:
            self._feed_text(b"", final=True)
        if not self.has_text:
            what = "every record's `text` is empty or blank" if self.jsonl else "it is empty or blank"
            raise UploadInvalid(f"file holds no text: {what}")

    def _feed_text(self, data: bytes, final: bool) -> None:
        pending = len(self._decoder.getstate()[0])  # bytes of a character split across pieces
        try:
            text = self._decoder.decode(data, final=final)
        except UnicodeDecodeError as err:
            line = self.newlines + err.object[: err.start].count(b"\n") + 1
            position = self.offset - pending + err.start
            raise UploadInvalid(
                f"file is not valid UTF-8 ({err.reason} at line {line}, byte {position})"
            ) from err
        self.newlines += data.count(b"\n")
        if not self.has_text and text and not text.isspace():
            self.has_text = True

    def _feed_lines(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if self._line:
                self._extend_line(piece)
                line = self._decode_line(self._line)
                self._line.clear()  # before parsing: a long line is held twice at most, not three times
            else:
                self._check_length(len(piece))
                line = self._decode_line(piece)
            self._check_line(line)
        self._extend_line(rest)

    def _extend_line(self, piece: bytes) -> None:
        self._check_length(len(self._line) + len(piece))
        self._line += piece

    def _check_length(self, length: int) -> None:
        if length > self.max_line_bytes:
            raise UploadInvalid(
                f"line {self.line_no + 1} is longer than the limit of {self.max_line_bytes} bytes"
            )

    def _decode_line(self, raw: bytes | bytearray) -> str:
        self.line_no += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UploadInvalid(f"file is not valid UTF-8 ({err.reason} at line {self.line_no})") from err

    def _check_line(self, line: str) -> None:
        # the engine splits at every line boundary str.splitlines knows (\r, \u2028, ...), not only \n
        for part in line.splitlines():
            if part and not part.isspace():
                self._check_record(part)

    def _check_record(self, line: str) -> None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UploadInvalid(f"line {self.line_no} is not valid JSON: {err.msg}") from err
        except RecursionError as err:
            raise UploadInvalid(f"line {self.line_no} nests JSON too deeply") from err
        except ValueError as err:  # the only other ValueError json.loads raises
            raise UploadInvalid(
                f"line {self.line_no} holds an integer of more than {sys.get_int_max_str_digits()} digits, "
                "longer than the JSON reader takes"
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UploadInvalid(f"line {self.line_no} must be a JSON object with a string `text` field")
        text: str = record["text"]
        # json.loads accepts an escaped lone surrogate ("\ud800"), which no UTF-8 reader can take
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise UploadInvalid(
                    f"line {self.line_no}: `text` holds a lone surrogate "
                    f"(U+{ord(text[err.start]):04X}), which is not valid Unicode"
                ) from err
        if not self.has_text and text and not text.isspace():
            self.has_text = True


def validate_text_file(path: Path, filename: str, max_line_bytes: int) -> None:
    """UTF-8 throughout; .jsonl lines must be objects with a string `text`; some text overall."""
    validator = TextValidator(filename, max_line_bytes)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            validator.feed(chunk)
    validator.finish()


class UploadSink:
    """One uploaded file on its way to disk: written, counted, hashed and validated as its bytes arrive."""

    def __init__(self, out: BinaryIO, filename: str, max_bytes: int, max_line_bytes: int) -> None:
        self.out = out
        self.filename = filename
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self.validator = TextValidator(filename, max_line_bytes)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(f"upload exceeds the limit of {self.max_bytes} bytes")
        self.validator.feed(data)
        self.digest.update(data)
        self.out.write(data)

    def finish(self) -> None:
        self.validator.finish()
        self.out.flush()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


class MultipartUpload:
    """Takes the one `file` field out of a multipart/form-data body fed piece by piece, into `out`.

    Other fields are skipped without being kept. The file name is checked from the part's headers, before
    any of its content is written.
    """

    def __init__(self, content_type: str | None, out: BinaryIO, max_bytes: int, max_line_bytes: int) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self.sink: UploadSink | None = None
        self.complete = False  # the file part's closing boundary was seen
        self._in_file = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._parser = new_parser(
            multipart_boundary(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
            },
        )

    def feed(self, pieces: Iterable[bytes]) -> None:
        try:
            for piece in pieces:
                self._parser.write(piece)
        except FormParserError as err:
            raise UploadInvalid(f"malformed multipart body: {err}") from err

    def finish(self) -> UploadSink:
        self._parser.finalize()
        if self.sink is None:
            raise UploadInvalid(f"the form has no `{FIELD}` field")
        if not self.complete:
            raise UploadInvalid("the multipart body ended before the file did")
        self.sink.finish()
        return self.sink

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition.decode("latin-1"))
        if _decode(options.get(b"name", b"")) != FIELD:
            return
        if self.sink is not None:
            raise UploadInvalid(f"send one `{FIELD}` per upload")
        filename = check_filename(_decode(options.get(b"filename", b"")))
        self.sink = UploadSink(self.out, filename, self.max_bytes, self.max_line_bytes)
        self._in_file = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.sink is not None:
            self.sink.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._in_file:
            self.complete = True
            self._in_file = False


def multipart_boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadInvalid(f"send the upload as multipart/form-data with a `{FIELD}` field")
    return boundary


def new_parser(boundary: bytes, callbacks: MultipartCallbacks) -> MultipartParser:
    try:
        return MultipartParser(boundary, callbacks)
    except FormParserError as err:  # e.g. a boundary longer than RFC 2046 allows
        raise UploadInvalid(f"malformed multipart boundary: {err}") from err


def _decode(raw: bytes) -> str:
    """Header parameters: UTF-8 as browsers and httpx send them, else the bytes as latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
