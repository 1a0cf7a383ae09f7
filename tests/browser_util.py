"""Debian's Chromium driven by Playwright (nothing downloaded), for the browser tests."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("OLMO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1600, "height": 1000}


def require_chromium() -> None:
    """Skip where no browser can run; under CI (CI=true, set by .ci/run, which installs chromium) fail instead."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "no Playwright (pip install -e '.[dev]')"
    if missing and os.environ.get("CI") == "true":
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)


@contextlib.contextmanager
def chromium_page(viewport: dict[str, int] | None = None) -> Iterator[object]:
    """A fresh page of a headless Chromium (Playwright's ``Page``), ``VIEWPORT`` unless given."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport=viewport or VIEWPORT)
        finally:
            browser.close()


def broken_images(page: object) -> list[str]:
    """What a loaded page shows as a broken figure: each ``<img>`` without pixels (missing file, bad data URL) and
    each inline ``<svg>`` of zero size, by its alt text / source."""
    return page.evaluate("""() => [
        ...[...document.images].filter(i => !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0)
            .map(i => `img ${i.alt || i.src.slice(0, 80)}`),
        ...[...document.querySelectorAll('svg')].filter(s => {
            const r = s.getBoundingClientRect(); return r.width === 0 || r.height === 0;
        }).map(s => `svg ${s.id || s.outerHTML.slice(0, 80)}`),
    ]""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


