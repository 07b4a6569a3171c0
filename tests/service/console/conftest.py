"""A real headless Chromium (the system's, driven by Playwright) against a real `fwdprune serve` with its
worker: one server and one browser for a test module, every request the pages make recorded, and a
screenshot of each step kept for a person to look at.

Screenshots go to FWDPRUNE_CONSOLE_SCREENSHOTS when it is set, else to the test session's temporary
folder (its path is printed). Without a Chromium the tests are skipped with the reason, unless
FWDPRUNE_BROWSER_TESTS=required (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import ADMIN, KEY_A, KEY_B, Server

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOTS_ENV = "FWDPRUNE_CONSOLE_SCREENSHOTS"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class LoggingServer(Server):
    """The server logs a line per request, so the test can read every URL it was asked for."""

    log_level = "info"


@dataclass
class Traffic:
    """Every request the browser made, and those that would have left the server's origin (blocked)."""

    origin: str
    urls: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        reason = (
            "no Chromium on this machine (apt-get install chromium); the console's browser tests need one"
        )
        if os.environ.get("FWDPRUNE_BROWSER_TESTS") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    server = LoggingServer(tmp_path_factory.mktemp("console") / "data", models_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # root (a container, CI) cannot use Chromium's sandbox
        launched = playwright.chromium.launch(executable_path=chromium, chromium_sandbox=os.geteuid() != 0)
        yield launched
        launched.close()


def open_context(browser: Any, server: Server, traffic: Traffic, **options: Any) -> Any:
    """A fresh browser profile whose every request is recorded; one that would leave the server's
    origin is recorded as foreign and never sent."""
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True, **options)

    def route(route: Any) -> None:
        url = route.request.url
        traffic.urls.append(url)
        if url.startswith(traffic.origin + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            traffic.foreign.append(url)
            route.abort()

    context.route("**/*", route)
    return context


def watch(page: Any, traffic: Traffic) -> Any:
    page.on("pageerror", lambda error: traffic.page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            traffic.csp_violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return page


__all__ = ["ADMIN", "KEY_A", "KEY_B", "PHONE", "LoggingServer", "Traffic", "open_context", "watch"]
