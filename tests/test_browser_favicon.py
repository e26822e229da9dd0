"""The loading page in a real headless Chromium: the tab's icon follows the build (building,
then failed or ready, as BinderHub's does), and a hostile repository URL is only ever text."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from browser_support import browser, chromium_path, page, screenshot, serve_app  # noqa: F401
from playwright.async_api import Page, expect

from swarmbinder.config import Config, TokenConfig
from swarmbinder.events import BuildEvent, Phase, sse_frame
from swarmbinder.handlers.pages import add_page_routes

pytestmark = pytest.mark.swarm

#: A git spec whose repository URL and ref carry markup and script.
HOSTILE_SPEC = (
    "https%3A%2F%2Fexample.org%2F%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E%3Cimg%20src%3Dx"
    "%20onerror%3D%22window.__xss%3D2%22%3E.git/ma%3Cb%3Ein"
)
HOSTILE_URL = (
    'https://example.org/<script>window.__xss=1</script><img src=x onerror="window.__xss=2">.git'
)


@dataclass
class SteppedBuild:
    """A /build stream that goes one phase further each time ``step`` is set."""

    step: asyncio.Event = field(default_factory=asyncio.Event)
    end: str = "failed"

    async def next_step(self) -> None:
        await self.step.wait()
        self.step.clear()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse_frame(BuildEvent.waiting()))
        await self.next_step()
        await response.write(sse_frame(BuildEvent(Phase.BUILDING, "Step 1/2 : FROM base\n")))
        await self.next_step()
        if self.end == "failed":
            await response.write(sse_frame(BuildEvent.failed("repo2docker exited with 1")))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return response


def make_app(build: SteppedBuild) -> web.Application:
    app = web.Application()
    add_page_routes(app, Config(tokens=TokenConfig(build_token_secret="56" * 32)))
    app.router.add_get("/build/{provider}/{spec:.+}", build.handler)
    return app


async def favicon(tab: Page) -> str:
    href = await tab.locator("link#favicon").get_attribute("href")
    assert href is not None
    return href


async def test_favicon_follows_the_build(page: Page) -> None:  # noqa: F811
    build = SteppedBuild()
    async with serve_app(make_app(build)) as base:
        await page.goto(f"{base}v2/gh/org/repo/HEAD")
        await expect(page.locator("#status")).to_have_text("Waiting for a build slot…")
        assert "/static/favicon.svg" in await favicon(page)  # waiting: the page's own icon

        build.step.set()
        await expect(page.locator("#status")).to_have_text("Building the image…")
        await expect(page.locator("link#favicon")).to_have_attribute(
            "href", _icon("favicon_building.svg")
        )
        # the browser loads the icon it is pointed at
        icon = await page.request.get(f"{base.rstrip('/')}{await favicon(page)}")
        assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
        await screenshot(page, "favicon-building")

        build.step.set()
        await expect(page.locator("#status")).to_have_text("Launch failed")
        await expect(page.locator("link#favicon")).to_have_attribute(
            "href", _icon("favicon_fail.svg")
        )


def _icon(name: str) -> re.Pattern[str]:
    return re.compile(rf"^/static/{re.escape(name)}\?v=[0-9a-f]{{12}}$")


async def test_hostile_repository_url_is_only_text(page: Page) -> None:  # noqa: F811
    build = SteppedBuild()
    async with serve_app(make_app(build)) as base:
        await page.goto(f"{base}v2/git/{HOSTILE_SPEC}")
        await expect(page.locator("#spec")).to_have_text(HOSTILE_URL)
        await expect(page.locator("#ref")).to_have_text("at ma<b>in")
        assert await page.title() == f"Binder: {HOSTILE_URL}"
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("main script, main img, #ref b").count() == 0
        await screenshot(page, "hostile-spec")
