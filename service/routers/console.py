"""/ and /console: the job console, a single page whose HTML, script and styles ship in the package
(service/console) and load nothing from anywhere else, under the same Content-Security-Policy as /docs.

The page carries no key: it asks for one, keeps it in the tab's session storage and sends it as the
Bearer header of its own requests, so a key is never in a URL, a cookie or the server's access log.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from service.routers.docs import content_security_policy

CONSOLE_DIR = Path(str(resources.files("service") / "console"))
PAGE = CONSOLE_DIR / "index.html"
ASSETS_DIR = CONSOLE_DIR / "assets"
ASSETS_ROUTE = "console-assets"  # the name of the StaticFiles mount that serves ASSETS_DIR (service.main)

router = APIRouter(include_in_schema=False)


def console_headers(html: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


class AssetFiles(StaticFiles):
    """The console's script and styles, revalidated on every load (their ETag makes that a 304), so a
    browser never runs a script older than the page an upgraded server sends."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@router.get("/")
@router.get("/console")
def console() -> HTMLResponse:
    html = PAGE.read_text(encoding="utf-8")
    return HTMLResponse(html, headers=console_headers(html))
