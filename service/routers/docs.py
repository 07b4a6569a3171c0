"""/docs: the API's Swagger UI, its code and styles served by this server from the assets the pinned
fastapi-offline package ships (FastAPI's default page loads them from a public CDN), under a
Content-Security-Policy that lets the page load nothing else and talk to nothing but this server: the
page is where users paste their API key."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
ASSETS_ROUTE = "docs-assets"  # the name of the StaticFiles mount that serves ASSETS_DIR (service.main)
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def content_security_policy(html: str) -> str:
    """Scripts, styles, images and fonts from this server only, the page's own inline script allowed by
    its hash; requests only to this server (the OpenAPI document, "Try it out"); no framing, no forms."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    openapi_url = request.app.openapi_url

    def asset(name: str) -> str:
        return root + str(request.app.url_path_for(ASSETS_ROUTE, path=name))

    page = get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=request.app.title + " - Swagger UI",
        swagger_js_url=asset("swagger-ui-bundle.js"),
        swagger_css_url=asset("swagger-ui.css"),
        swagger_favicon_url=asset("favicon.png"),
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )
    html = bytes(page.body).decode()
    headers = {
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(html, headers=headers)
