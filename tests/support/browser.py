"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the console.

No browser is downloaded: Playwright's driver launches the system Chromium with the
flags this machine needs (no sandbox as root, no background networking: the closed
network refuses Chromium's own connections). Screenshots go to
``$PROVISIOND_TEST_ARTIFACTS/console`` (default ``build/test-artifacts/console``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("PROVISIOND_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ROOT = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    base = Path(os.environ.get("PROVISIOND_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    folder = base / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return shutil.which(CHROMIUM) is not None or Path(CHROMIUM).exists()


def require() -> None:
    """Skip locally without a browser; in CI its absence is a failure (.ci/run installs it)."""
    if available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Chromium ({CHROMIUM}) or playwright is missing; .ci/run must install them")
    pytest.skip("Chromium or playwright is not installed (apt-get install chromium)")


@contextmanager
def browser() -> Iterator[Any]:
    """A launched headless Chromium (playwright Browser), closed even on failure."""
    require()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page: Any, base_url: str, token: str) -> None:
    """Sign ``page`` in through the form, as a person would."""
    page.goto(base_url + "/ui/signin")
    page.fill("#token", token)
    page.click("#signin")
    page.wait_for_selector("#whoami")


def shot(page: Any, name: str) -> Path:
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
