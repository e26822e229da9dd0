"""A launch as a person makes it: headless Chromium, the real app, the real hub.

The home page of the real service (on 127.0.0.1, a free port), a test repository typed into the
form, the launch button, the build log on the loading page, and the Jupyter page that the hub
serves from the server SwarmSpawner started on the swarm.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from app_support import ground_endpoints
from browser_support import browser, chromium_path, page, screenshot, serve_app  # noqa: F401
from playwright.async_api import Page, expect
from test_build_api import stop_server

from swarmbinder.app import create_app
from swarmbinder.config import load_config

pytestmark = pytest.mark.swarm

#: Elements only a running JupyterLab (or the classic Notebook) renders.
JUPYTER_PAGE = "#jp-main-dock-panel, .jp-LabShell, #notebook-container, #ipython-main-app"


@pytest.fixture
def app_config(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        # A fresh prefix: the launch really builds, so there is a log to watch.
        "image_prefix": f"{testground['image_prefix']}browser{run}-",
        **ground_endpoints(testground, tmp_path),
        "launch_timeout": 60,
    }


async def test_launch_from_the_home_page_lands_on_jupyter(
    page: Page,  # noqa: F811
    testground: dict[str, Any],
    app_config: dict[str, Any],
) -> None:
    repo_url = testground["repos"]["binder-dockerfile"]["url"]
    hub_url = testground["hub_url"]
    app = create_app(load_config(env={}, overrides=app_config))
    async with serve_app(app) as base:
        try:
            await page.goto(base)
            await page.select_option("#provider", "git")
            await page.fill("#repository", repo_url)
            await page.fill("#ref", "main")
            await expect(page.locator("#launch")).to_be_enabled()
            await page.click("#launch")

            await page.wait_for_url(re.compile(re.escape(f"{base}v2/git/") + ".*"))
            # The build's own log lines (repo2docker's) show up while it runs.
            await expect(page.locator("#log")).to_contain_text("Step 1/", timeout=60_000)
            await screenshot(page, "browser-launch-loading")

            await page.wait_for_url(
                re.compile(re.escape(f"{hub_url}user/") + r"[^/]+/.*"), timeout=120_000
            )
            landed = page.url
            await expect(page.locator(JUPYTER_PAGE).first).to_be_visible(timeout=60_000)
            # The page's own API calls get in too (the token was kept in a cookie): the file
            # browser lists the repository's notebook.
            await expect(page.get_by_text("index.ipynb").first).to_be_visible(timeout=30_000)
            await screenshot(page, "browser-launch-jupyter")
            assert landed.startswith(f"{hub_url}user/")
            assert re.match(re.escape(f"{hub_url}user/") + r"binder-dockerfile-[a-z0-9]+/", landed)
        finally:
            # Whatever page the browser reached: every server of an image this test built.
            for user in await users_running(testground, app_config["image_prefix"]):
                await stop_server(testground, {"url": f"{hub_url}user/{user}/"})


async def users_running(testground: dict[str, Any], image_prefix: str) -> list[str]:
    """Hub users with a server of an image under ``image_prefix``."""
    headers = {"Authorization": f"token {testground['hub_api_token']}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{testground['hub_api_url']}/users", headers=headers) as resp:
            users = await resp.json()
    return [
        user["name"]
        for user in users
        for server in (user.get("servers") or {}).values()
        if str((server.get("user_options") or {}).get("image", "")).startswith(image_prefix)
    ]
