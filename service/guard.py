"""The service's first line of defence: an API key and a bounded body before the app reads a byte.

Routes still authorize the caller themselves (`get_principal`); this middleware only makes sure that an
unauthenticated or oversized request is refused from its headers, or, without a Content-Length, as soon
as the bytes received pass the limit, so neither can make the server buffer or spool its body.
"""

from __future__ import annotations

import json

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import authenticate
from service.settings import Settings

# Probes, scrapers, the API docs (the page, its document and its assets) and the console's page and
# assets carry no key (the console asks for one and sends it with its own requests). /metrics gates
# itself, inside its route.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/", "/console"})
DOCS_ASSETS = "/docs/assets"  # the docs page's script, styles and icon (service.routers.docs)
CONSOLE_ASSETS = "/console/assets"  # the console's script and styles (service.routers.console)
PUBLIC_PREFIXES = (DOCS_ASSETS + "/", CONSOLE_ASSETS + "/")
UPLOAD_PATH = "/v1/files"
# The multipart framing around the file: boundaries, part headers, a long file name.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UNAUTHORIZED_DETAIL = "missing or invalid API key"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes its limit; the app's handler answers it with a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class RequestGuard:
    """Pure ASGI middleware: key check and body limit, both decided before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        headers = Headers(scope=scope)
        if needs_key(scope) and not self._authenticated(scope, settings, headers):
            await send_json(send, 401, UNAUTHORIZED_DETAIL, {"www-authenticate": "Bearer"})
            return
        limit, detail = body_limit(scope, settings)
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            await send_json(send, 413, f"{detail}; the request declares {declared} bytes")
            return
        await LimitedBody(self.app, limit, detail)(scope, receive, send)

    @staticmethod
    def _authenticated(scope: Scope, settings: Settings, headers: Headers) -> bool:
        # the same reading of the header as the routes' HTTPBearer dependency, so both agree on who it is
        scheme, token = get_authorization_scheme_param(headers.get("authorization"))
        credentials = token if scheme.lower() == "bearer" and token else None
        return authenticate(settings, scope["app"].state.key_hashes, credentials) is not None


def needs_key(scope: Scope) -> bool:
    """Every route but the public ones. A path no route serves keeps its 404 (and its metrics label): the
    router answers it without reading the body."""
    if scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES):
        return False
    return any(route.matches(scope)[0] != Match.NONE for route in scope["app"].router.routes)


def body_limit(scope: Scope, settings: Settings) -> tuple[int, str]:
    """The most body bytes this request may send, and the refusal that names it."""
    if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
        return (
            settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
            f"upload exceeds the limit of {settings.max_upload_bytes} bytes "
            f"(plus {MULTIPART_OVERHEAD_BYTES} bytes of multipart framing)",
        )
    return settings.max_request_bytes, f"request body exceeds the limit of {settings.max_request_bytes} bytes"


def declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


async def send_json(
    send: Send, status: int, detail: str, extra_headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in (extra_headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitedBody:
    """Runs the app with a `receive` that counts body bytes and raises `BodyTooLarge` past the limit.

    The app's exception handler turns that into a 413 on the normal response path (so request metrics see
    it). Should the app swallow it and answer something else, or answer nothing, the 413 is sent here.
    """

    def __init__(self, app: ASGIApp, limit: int, detail: str) -> None:
        self.app = app
        self.limit = limit
        self.detail = detail
        self.received = 0
        self.refused = False
        self.started = False  # a response start went out to the client
        self.suppressing = False  # the app's answer to a refused body is replaced by our 413

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.refused = True
                    raise BodyTooLarge(self.detail)
            return message

        async def checked_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.refused and message["status"] != 413:
                self.suppressing = True
            if self.suppressing:
                return
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, checked_send)
        except BodyTooLarge:
            if self.started:
                raise
        if self.refused and not self.started:
            await send_json(send, 413, self.detail)
