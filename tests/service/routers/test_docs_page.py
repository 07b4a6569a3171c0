"""/docs works on an air-gapped cluster and runs no third party's code: the page names no external host,
its assets come from this server (the pinned fastapi-offline package's files), and its
Content-Security-Policy admits nothing else."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.routers.docs import ASSETS_DIR
from service.settings import Settings
from tests.service.conftest import KEY_A, REPO

ATTRIBUTE_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _policy(header: str) -> dict[str, list[str]]:
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


def test_docs_page_names_no_external_host_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/docs")  # no key: the page is public, as the OpenAPI document is
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]", page.text, re.I), "the page names a host"
    urls = ATTRIBUTE_URL.findall(page.text)
    assert sorted(urls) == [
        "/docs/assets/favicon.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(types[Path(url).suffix]), url
        assert asset.content == (ASSETS_DIR / Path(url).name).read_bytes()  # the package's own file
    assert "url: '/openapi.json'" in page.text and client.get("/openapi.json").status_code == 200


def test_docs_page_policy_admits_only_this_servers_assets(client: TestClient) -> None:
    page = client.get("/docs")
    policy = _policy(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    (inline,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]  # the page's own inline script only
    assert policy["style-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"] and policy["font-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    header = page.headers["content-security-policy"]
    assert "unsafe" not in header and "http" not in header and "*" not in header
    # the rest of the API is unchanged: a key is still needed everywhere else, a missing asset is a 404
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/docs/assets/none.js").status_code == 404
    assert client.get("/docs/assets/../../v1/jobs").status_code in (401, 404)
    assert client.get("/redoc").status_code == 404  # FastAPI's other CDN page is not served


def test_the_docs_assets_package_is_a_pinned_core_dependency() -> None:
    core = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.S | re.M)
    assert core is not None
    assert re.search(r'"fastapi-offline==[\d.]+"', core.group(1))
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"} <= {p.name for p in ASSETS_DIR.iterdir()}
