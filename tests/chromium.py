"""Headless Chromium for the browser tests: Debian's `chromium` package driven by Playwright's Python
client (`playwright` from PyPI, pointed at /usr/bin/chromium: no browser is ever downloaded).

Without the browser a test skips with one line naming the package; in CI (`CI` set, as `.ci/run`
runs) it fails instead, since `make setup` installs the package there.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium hangs or floods a closed network with connections without these (and a fresh profile).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """What is missing to drive a browser, in one line, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return ("no Chromium: install Debian's package `chromium` (apt-get install chromium; `make setup` does it "
                "when run as root on Debian)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright: pip install playwright (`make setup` installs it with the dev extras)"
    return None


def require_browser() -> None:
    problem = missing()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must run the browser tests, not skip them")
    pytest.skip(problem)


@contextlib.contextmanager
def browser_context(**options):
    """A Playwright browser context in headless Debian Chromium with a fresh, throw-away profile."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        # launch_persistent_context takes the profile folder itself (Playwright refuses --user-data-dir in args)
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       **options)
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the tests report what failed themselves
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve a folder over HTTP on a free local port; yields the base URL (ending in /)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
