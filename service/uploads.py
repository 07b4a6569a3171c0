"""Upload validation: bounded size, UTF-8, and the calibration formats the engine reads."""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path
from typing import BinaryIO

SUFFIXES = (".jsonl", ".txt")
CHUNK = 1 << 20


class UploadTooLarge(Exception):
    pass


class UploadInvalid(ValueError):
    pass


def check_filename(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name  # never trust client paths; keep the base name only
    if not name or len(name) > 255:
        raise UploadInvalid("the upload needs a file name")
    if not name.lower().endswith(SUFFIXES):
        raise UploadInvalid(
            f"unsupported file type {name!r}: upload .jsonl (a `text` field per line) or .txt"
        )
    return name


def save_upload(source: BinaryIO, dest: Path, max_bytes: int) -> tuple[int, str]:
    """Copy to `dest` while counting and hashing; stop as soon as `max_bytes` is exceeded."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def validate_text_file(path: Path, filename: str) -> None:
    """UTF-8 throughout; .jsonl lines must be objects with a non-empty string `text`; some text overall."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    jsonl = filename.lower().endswith(".jsonl")
    records = 0
    has_text = False
    pending = ""
    line_no = 0
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            try:
                pending += decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise UploadInvalid(f"file is not valid UTF-8 ({err.reason} near byte {err.start})") from err
            lines = pending.split("\n")
            pending = "" if not chunk else lines.pop()
            for line in lines:
                line_no += 1
                if not line.strip():
                    continue
                has_text = True
                if jsonl:
                    _check_record(line, line_no)
                    records += 1
            if not chunk:
                break
    if not has_text:
        raise UploadInvalid("file holds no text")


def _check_record(line: str, line_no: int) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UploadInvalid(f"line {line_no} is not valid JSON: {err.msg}") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UploadInvalid(f"line {line_no} must be a JSON object with a string `text` field")
