"""The build log's ANSI colours in a real headless Chromium: a coloured line shows in its colour,
other escape sequences vanish, and a hostile line that hides markup inside escape sequences is
only ever text (the log is written by the repository being built)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from browser_support import browser, chromium_path, page, screenshot, serve_app  # noqa: F401
from playwright.async_api import Page, expect

from swarmbinder.config import Config, TokenConfig
from swarmbinder.events import BuildEvent, Phase, sse_frame
from swarmbinder.handlers.pages import add_page_routes

pytestmark = pytest.mark.swarm

E = "\x1b"
#: What the build stream sends, one event each; the last one fails the launch.
LOG_LINES = (
    f"{E}[1;32mSuccessfully built{E}[0m abc123\n",
    f"{E}[31mred {E}[1mand bold{E}[22m not bold{E}[39m default\n",
    f"{E}[93;44mbright on blue{E}[0m\n",
    f"{E}[38;5;208morange{E}[0m {E}[38;5;3mpalette yellow{E}[0m {E}[38;2;10;20;300mtrue{E}[m\n",
    # cursor moves, erase line, a window title and a hyperlink: all dropped
    f"{E}[2K{E}[1A{E}[?25lmoved{E}]0;title{E}\\ {E}]8;;https://example.org{E}\\link{E}]8;;\x07\n",
    # markup inside and around escape sequences
    f"{E}[31m<script>window.__xss=1</script>{E}[0m"
    f"{E}[<img src=x onerror=window.__xss=2>m{E}]0;<img src=x onerror=window.__xss=3>\x07"
    f"<img src=x onerror=window.__xss=4>\n",
    # a colour split across two events, as a chunked log may deliver it
    f"{E}[3",
    f"5mmagenta after a split{E}[0m\n",
    # an unterminated OSC hides the rest of its line only
    f"{E}]0;never ends\n",
    f"{E}[{'1;' * 500}31mtoo long a sequence stays plain\n",
)


def make_app(lines: tuple[str, ...]) -> web.Application:
    async def build(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse_frame(BuildEvent.waiting()))
        for line in lines:
            await response.write(sse_frame(BuildEvent(Phase.BUILDING, line)))
        await response.write(sse_frame(BuildEvent.failed(f"{E}[31mrepo2docker exited{E}[0m")))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return response

    app = web.Application()
    add_page_routes(app, Config(tokens=TokenConfig(build_token_secret="57" * 32)))
    app.router.add_get("/build/{provider}/{spec:.+}", build)
    return app


async def colour(tab: Page, text: str) -> str:
    span = tab.locator("#log span", has_text=text).last
    return await span.evaluate("node => getComputedStyle(node).color")


async def test_build_log_colours_and_hostile_text(page: Page) -> None:  # noqa: F811
    async with serve_app(make_app(LOG_LINES)) as base:
        await page.goto(f"{base}v2/gh/org/repo/HEAD")
        await expect(page.locator("#status")).to_have_text("Launch failed")
        log = page.locator("#log")
        await screenshot(page, "ansi-log")

        # the words come through without the escape sequences
        text = await log.text_content()
        assert text is not None
        assert E not in text and "\x07" not in text
        assert "Successfully built abc123\n" in text
        assert "red and bold not bold default\n" in text
        assert "moved link\n" in text
        assert "title" not in text and "never ends" not in text
        assert "magenta after a split\n" in text
        assert "too long a sequence stays plain\n" in text

        # each colour is a span of our classes, in the palette binder.css gives it
        built = log.locator("span", has_text="Successfully built")
        await expect(built).to_have_class("ansi-fg-2 ansi-bold")
        assert await built.evaluate("n => getComputedStyle(n).fontWeight") == "700"
        assert await colour(page, "Successfully built") == "rgb(87, 171, 90)"
        assert await colour(page, "red ") == "rgb(229, 83, 75)"
        await expect(log.locator("span", has_text="and bold")).to_have_class("ansi-fg-1 ansi-bold")
        await expect(log.locator("span", has_text="not bold")).to_have_class("ansi-fg-1")
        await expect(log.locator("span", has_text="bright on blue")).to_have_class(
            "ansi-fg-11 ansi-bg-4"
        )
        assert await colour(page, "orange") == "rgb(255, 135, 0)"  # xterm's 208
        await expect(log.locator("span", has_text="palette yellow")).to_have_class("ansi-fg-3")
        assert await colour(page, "true") == "rgb(10, 20, 255)"  # 300 clamped
        await expect(log.locator("span", has_text="magenta after a split")).to_have_class(
            "ansi-fg-5"
        )
        # reset and "default" leave plain text nodes, not spans
        assert await log.locator("span", has_text="default").count() == 0
        assert await log.locator("span", has_text="too long").count() == 0

        # hostile markup is text: no element made, no script run
        assert "<script>window.__xss=1</script>" in text
        assert "<img src=x onerror=window.__xss=4>" in text
        await expect(log.locator("span", has_text="<script>")).to_have_class("ansi-fg-1")
        assert await page.locator("#log script, #log img, #log a").count() == 0
        assert await page.locator("img[src=x]").count() == 0
        await page.wait_for_timeout(200)  # an onerror would have fired by now
        assert await page.evaluate("window.__xss") is None

        # the failure box shows the message without its escape sequences
        await expect(page.locator("#failure")).to_have_text("repo2docker exited")

        # the sequences one by one, through the page's own stripAnsi
        stripped = await page.evaluate(
            """() => [
                "\\x1b[1;31mred\\x1b[0m",
                "a\\x1b[2Jb\\x1b(Bc\\x1b7d",
                "\\x1b]0;title\\x07x\\x1b]8;;u\\x1b\\\\y",
                "\\u009b31mz",
                "\\x1b[31\\nbroken",
                "\\x1b\\x1b[32mtwo escapes",
            ].map(window.SwarmBinder.stripAnsi)"""
        )
        assert stripped == ["red", "abcd", "xy", "z", "\nbroken", "two escapes"]
