"""What a job's output may be called: one rule for the server that publishes artifacts and the client that
writes them to disk, so a name one side accepts is never one the other must refuse.

A name is a relative POSIX path of plain segments (`config.json`, `sparsity-0.2/model.safetensors`): no
empty, `.` or `..` segment, no segment that starts with a dot (`.git`, `.ssh`, `.bashrc`), no leading
slash, backslash, NUL or other control character, and no segment longer than a file name may be.
"""

from __future__ import annotations

import unicodedata

MAX_SEGMENT_BYTES = 255  # the longest file name on common filesystems


def name_problem(name: object) -> str | None:
    """Why `name` is not a safe artifact name, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "it is empty or not a string"
    if name.startswith("/"):
        return "it is an absolute path"
    if "\\" in name:
        return "it holds a backslash"
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in name):
        return "it holds a NUL or another control character"
    for segment in name.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "it has an empty path segment"
    if segment in (".", ".."):
        return f"it has a {segment!r} path segment"
    if segment.startswith("."):
        return f"its segment {segment!r} starts with a dot"
    if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        return f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def is_safe(name: object) -> bool:
    return name_problem(name) is None
