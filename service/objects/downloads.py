"""Artifact downloads from an object store: streamed through the API with Range (one range, RFC 9110),
or redirected to a presigned URL. Downloads from local storage are Starlette's FileResponse instead."""

from __future__ import annotations

import re
from email.utils import formatdate

from fastapi import HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from service.objects.storage import ObjectMissing, Storage

OCTETS = "application/octet-stream"
ONE_RANGE = re.compile(r"(\d*)\s*-\s*(\d*)")  # first-last, first- or -suffix_length
BEYOND_ANY_OBJECT = 10**18  # bytes: past the end of every object a store holds


def _position(digits: str) -> int:
    """A byte position from the header; a number of more digits than any object's size reads as past
    its end (Python refuses to convert an integer of more than 4,300 digits at all)."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) < 19 else BEYOND_ANY_OBJECT


def requested_range(header: str | None, if_range: str | None, etag: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte the request asks for, None for the whole object.

    As FileResponse does: a Range that cannot be parsed is a 400 and one starting past the end a 416.
    Several ranges, or an If-Range that does not match the ETag, get the whole object (which RFC 9110
    allows a server to send instead).
    """
    if header is None or (if_range is not None and if_range != etag):
        return None
    unit, _, spec = header.partition("=")
    if not spec or unit.strip().lower() != "bytes":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Malformed range header: only bytes ranges")
    if "," in spec:
        return None
    bounds = ONE_RANGE.fullmatch(spec.strip())
    if bounds is None or not any(bounds.groups()):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Malformed range header")
    first, last = bounds.groups()
    start = _position(first) if first else max(size - _position(last), 0)
    end = min(_position(last), size - 1) if first and last else size - 1
    if start >= size:
        raise HTTPException(
            status.HTTP_416_RANGE_NOT_SATISFIABLE, headers={"Content-Range": f"bytes */{size}"}
        )
    if end < start:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Malformed range header: start after end")
    return start, end


def object_response(
    request: Request, storage: Storage, key: str, size: int, headers: dict[str, str]
) -> Response:
    """GET: the object's bytes, or the requested range of them (S3 reads just that range), streamed."""
    byte_range = requested_range(
        request.headers.get("range"), request.headers.get("if-range"), headers["ETag"], size
    )
    start, end = byte_range or (0, size - 1)
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    try:
        chunks = storage.read(key, start, end) if size else iter(())
    except ObjectMissing as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact") from err
    code = status.HTTP_206_PARTIAL_CONTENT if byte_range else status.HTTP_200_OK
    return StreamingResponse(chunks, status_code=code, media_type=OCTETS, headers=headers)


def object_head(storage: Storage, key: str, headers: dict[str, str]) -> Response:
    """HEAD: what a GET would send, without the body."""
    found = storage.stat(key)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    headers = {
        **headers,
        "Accept-Ranges": "bytes",
        "Content-Length": str(found.size),
        "Last-Modified": formatdate(found.modified, usegmt=True),
    }
    return Response(status_code=status.HTTP_200_OK, media_type=OCTETS, headers=headers)


def presigned_redirect(storage: Storage, key: str, expires_s: int) -> Response:
    """307 to a URL that GETs the object from the store itself (Range and all), valid for `expires_s`."""
    url = storage.presigned_url(key, expires_s)
    if url is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
