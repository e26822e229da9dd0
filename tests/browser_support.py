"""A real browser for page tests: Playwright driving Debian's ``chromium``, never a download.

Use the fixtures (import them into the test module) or the context managers directly::

    from browser_support import browser, serve_app   # fixtures: browser; helper: serve_app

    @pytest.mark.swarm
    async def test_home(browser: Browser) -> None:
        async with serve_app(app) as base_url:
            page = await browser.new_page()
            await page.goto(base_url)

``chromium_executable()`` finds the browser (``$SWARMBINDER_CHROMIUM``, ``chromium`` on PATH,
``/usr/bin/chromium``) and installs Debian's package with apt-get when it is missing; a
Playwright-managed browser is never downloaded. ``serve_app`` serves any aiohttp application
on 127.0.0.1 on a free port, so the same harness drives a page server with fakes or the real
service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM_ENV = "SWARMBINDER_CHROMIUM"
_CANDIDATES = ("chromium", "/usr/bin/chromium")
#: Where screenshots go; tests look at them and CI can keep them as artifacts.
SCREENSHOT_DIR = Path(os.environ.get("SWARMBINDER_SCREENSHOTS", "/tmp/swarmbinder-screenshots"))


def _find_chromium() -> str | None:
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).exists() else None
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _apt_install_chromium() -> None:
    command = ["apt-get"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            pytest.fail("chromium is missing and apt-get needs root: install Debian's chromium")
        command = ["sudo", "-n", "apt-get"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        result = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"installing chromium failed: {' '.join(command + args)} exited "
                f"{result.returncode}:\n{result.stderr[-2000:]}"
            )


def chromium_executable() -> str:
    """The path of a Chromium binary, installing Debian's ``chromium`` package if needed."""
    found = _find_chromium()
    if found is None and not os.environ.get(CHROMIUM_ENV):
        _apt_install_chromium()
        found = _find_chromium()
    if found is None:
        pytest.fail(f"no chromium found (set {CHROMIUM_ENV} or install Debian's chromium package)")
    return found


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return chromium_executable()


@asynccontextmanager
async def launch_browser(executable: str | None = None) -> AsyncIterator[Browser]:
    """A headless Chromium for the duration of the block."""
    args = ["--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        # Chromium refuses to start its sandbox as root (containers, CI)
        args.append("--no-sandbox")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable or chromium_executable(), headless=True, args=args
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with launch_browser(chromium_path) as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page in its own context (no cookies or storage shared between tests)."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        yield await context.new_page()
    finally:
        await context.close()


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 on a free port; yields its root URL (ending in ``/``)."""
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``<SCREENSHOT_DIR>/<name>.png`` and return its path."""
    path = SCREENSHOT_DIR / f"{name}.png"
    # Playwright creates the directory itself
    await page.screenshot(path=str(path), full_page=True)
    return path
