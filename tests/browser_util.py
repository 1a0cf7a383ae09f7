"""Debian's Chromium driven by Playwright (nothing downloaded), and an `mlflow ui` server on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def wait_for_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` and every helper process it started (mlflow's job
    runner and huey consumers outlive the server by a few seconds: wait until none is left)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
            break
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, log: Path) -> Iterator[str]:
    """``mlflow ui`` on ``tracking_uri`` at a free port on 127.0.0.1; yields its base URL."""
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    with open(log, "w") as out:
        proc = subprocess.Popen([mlflow, "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
