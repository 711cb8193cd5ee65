"""The web UI on a real port and a headless Chromium page, for the browser tests.

`running_ui` serves the app with uvicorn in a thread; `chromium_page` opens a page
that fails its test if the Content-Security-Policy blocked anything. Screenshots go
to `test-artifacts/ui/` (or `$VISPIPE_TEST_ARTIFACTS/ui`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ports import free_port
from vispipe.ui import UISettings, create_app

CHROMIUM = "/usr/bin/chromium"
NO_CHROMIUM = pytest.mark.skipif(
    not os.path.isfile(CHROMIUM),
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.environ.get("VISPIPE_TEST_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts"), "ui")


@dataclass(frozen=True)
class UI:
    """A running UI: its address and the URL that logs a browser in."""

    url: str
    token: str

    @property
    def login_url(self) -> str:
        return f"{self.url}/?token={self.token}"


@contextlib.contextmanager
def running_ui(settings: UISettings) -> Iterator[UI]:
    """Serves the UI on a free loopback port until the block ends."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield UI(f"http://127.0.0.1:{port}", settings.token)
    finally:
        server.should_exit = True
        thread.join()


@contextlib.contextmanager
def chromium_page(timeout_ms: int):
    """A 1280x800 page; anything the Content-Security-Policy blocks fails the test."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(timeout_ms)
        blocked = []
        page.on("console", lambda m: blocked.append(m.text)
                if "Content Security Policy" in m.text else None)
        yield page
        browser.close()
        assert not blocked, blocked


def wait_until(page, expression: str, timeout_s: float = 240) -> None:
    """Polls a JavaScript expression until it is true. (`page.wait_for_function` evaluates
    it with `eval`, which the UI's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def shot(page, name: str) -> None:
    """Saves a full-page screenshot as `<ARTIFACTS>/<name>.png`."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)
