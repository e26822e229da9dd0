"""The pages in a real headless Chromium: the home page form and a loading page end to end.

The loading page follows a fake ``/build`` stream served by the test; the real service replaces
it in the integration tests, through the same harness (browser_support).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from aiohttp import web
from browser_support import browser, chromium_path, page, screenshot, serve_app  # noqa: F401
from playwright.async_api import Page, expect

from swarmbinder.config import Config, PagesConfig, ServerConfig
from swarmbinder.events import BuildEvent, Phase, sse_frame
from swarmbinder.handlers.pages import add_page_routes
from swarmbinder.keys import BUILD_TOKENS, RATE_LIMITER
from swarmbinder.pages import jupyter_redirect_url
from swarmbinder.policy.buildtokens import build_audience, token_origin
from swarmbinder.policy.ratelimit import RateLimiter

pytestmark = pytest.mark.swarm

SPEC = "binder-examples/requirements/HEAD"
SERVER_TOKEN = "f00dfeed" * 4


@dataclass
class FakeBuild:
    """A /build endpoint that streams a fresh build and holds ``ready`` until released."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[web.Request] = field(default_factory=list)
    token_ok: list[bool] = field(default_factory=list)
    script: str = "success"

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        provider = request.match_info["provider"]
        raw_spec = request.raw_path.split("?", 1)[0].split(f"/build/{provider}/", 1)[1]
        tokens = request.app[BUILD_TOKENS]
        self.token_ok.append(
            tokens.check(
                request.query.get("build_token"),
                build_audience(provider, raw_spec),
                token_origin(request.headers),
            )
        )
        if request.headers.get("Accept") != "text/event-stream":
            raise web.HTTPBadRequest(text="Accept: text/event-stream required")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        send: Callable[[BuildEvent], Awaitable[None]] = lambda e: response.write(sse_frame(e))  # noqa: E731
        await send(BuildEvent.waiting())
        await response.write(b":keepalive\n\n")
        await send(BuildEvent.log(Phase.FETCHING, "Picked Git content provider."))
        await send(BuildEvent(Phase.BUILDING, "Step 1/3 : FROM buildpack-deps:jammy"))
        await send(BuildEvent(Phase.BUILDING, "\n"))
        await send(BuildEvent.log(Phase.BUILDING, "\x1b[32mSuccessfully built 0123abcd\x1b[0m"))
        if self.script == "fail":
            await send(BuildEvent.failed("repo2docker exited with 1: no such file environment.yml"))
            await self.release.wait()
            return response
        if self.script == "close":
            return response
        await send(BuildEvent.built("registry.local/binder-requirements:abc"))
        await self.release.wait()
        await send(BuildEvent.launching())
        server_url = str(request.url.with_path("/user/jovyan-abc/").with_query(None))
        await send(
            BuildEvent.ready(
                url=server_url,
                token=SERVER_TOKEN,
                image="registry.local/binder-requirements:abc",
                repo_url="https://github.com/binder-examples/requirements",
                binder_ref_url="https://github.com/binder-examples/requirements/tree/abc",
                binder_launch_host=str(request.url.with_path("/").with_query(None)),
                binder_request=f"v2/{provider}/{raw_spec}",
                binder_persistent_request=f"v2/{provider}/binder-examples/requirements/abc",
            )
        )
        # BinderHub keeps the stream open after ready; the page must close it itself
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return response


async def fake_jupyter(request: web.Request) -> web.Response:
    return web.Response(
        text=f"<html><body><h1 id='jupyter'>Jupyter at {request.path}</h1></body></html>",
        content_type="text/html",
    )


def make_app(config: Config, fake: FakeBuild | None = None) -> web.Application:
    app = web.Application()
    add_page_routes(app, config)
    base = config.server.base_url
    if fake is not None:
        app.router.add_get(f"{base}build/{{provider}}/{{spec:.+}}", fake.handler)
    app.router.add_get("/user/{name}/{path:.*}", fake_jupyter)
    return app


async def test_home_form_updates_launch_link_and_badges(page: Page) -> None:  # noqa: F811
    async with serve_app(make_app(Config())) as base:
        await page.goto(base)
        launch_url = page.locator("#launch-url")
        await expect(launch_url).to_contain_text("Fill in the fields")
        await expect(page.locator("#launch")).to_be_disabled()

        await page.fill("#repository", "https://github.com/binder-examples/requirements")
        await page.fill("#path", "index.ipynb")
        expected = (
            f"{base}v2/gh/binder-examples/requirements/HEAD?urlpath=%2Fdoc%2Ftree%2Findex.ipynb"
        )
        await expect(launch_url).to_have_text(expected)
        badge = f"{base}badge_logo.svg"
        await expect(page.locator("#badge-markdown")).to_have_text(
            f"[![Binder]({badge})]({expected})"
        )
        await expect(page.locator("#badge-rst")).to_have_text(
            f".. image:: {badge}\n :target: {expected}"
        )
        html_url = expected.replace("&", "&amp;")
        await expect(page.locator("#badge-html")).to_have_text(
            f'<a href="{html_url}"><img src="{badge}" alt="Binder"></a>'
        )
        await screenshot(page, "home")

        # a ref and the URL kind change the link as the user types
        await page.fill("#ref", "main")
        await page.select_option("#path-kind", "url")
        await page.fill("#path", "/rstudio")
        await expect(launch_url).to_have_text(
            f"{base}v2/gh/binder-examples/requirements/main?urlpath=%2Frstudio"
        )

        # GitLab escapes the project path into one spec part
        await page.select_option("#provider", "gl")
        await page.fill("#repository", "https://gitlab.com/group/sub/project")
        await page.fill("#path", "")
        await expect(launch_url).to_have_text(f"{base}v2/gl/group%2Fsub%2Fproject/main")

        await page.click("#launch")
        await page.wait_for_url(f"{base}v2/gl/group%2Fsub%2Fproject/main")
        # the repository as people write it, not the escaped spec
        await expect(page.locator("#spec")).to_have_text("https://gitlab.com/group/sub/project.git")
        await expect(page.locator("#ref")).to_have_text("at main")


async def test_badges_use_badge_base_url(page: Page) -> None:  # noqa: F811
    config = Config(
        server=ServerConfig(base_url="/binder/"),
        pages=PagesConfig(badge_base_url="https://mybinder.example.org/"),
    )
    async with serve_app(make_app(config)) as root:
        await page.goto(f"{root}binder/")
        await page.fill("#repository", "binder-examples/requirements")
        public = "https://mybinder.example.org/v2/gh/binder-examples/requirements/HEAD"
        await expect(page.locator("#launch-url")).to_have_text(public)
        await expect(page.locator("#badge-markdown")).to_have_text(
            f"[![Binder](https://mybinder.example.org/badge_logo.svg)]({public})"
        )
        # launching stays on this server, under its base_url
        await page.click("#launch")
        await page.wait_for_url(f"{root}binder/v2/gh/binder-examples/requirements/HEAD")


async def test_loading_page_shows_log_and_lands_on_server(page: Page) -> None:  # noqa: F811
    fake = FakeBuild()
    async with serve_app(make_app(Config(), fake)) as base:
        await page.goto(f"{base}v2/gh/{SPEC}?urlpath=lab/tree/index.ipynb")
        log = page.locator("#log")
        await expect(log).to_contain_text("Picked Git content provider.")
        await expect(log).to_contain_text("Step 1/3 : FROM buildpack-deps:jammy")
        await expect(log).to_contain_text("Successfully built 0123abcd")
        # colour codes are stripped, not shown as garbage
        assert "\x1b" not in (await log.text_content() or "")
        await expect(page.locator("#status")).to_have_text("Image ready, launching…")
        await screenshot(page, "loading")

        fake.release.set()
        server = f"{base}user/jovyan-abc/"
        expected = jupyter_redirect_url(server, SERVER_TOKEN, "lab/tree/index.ipynb")
        assert expected == f"{server}lab/tree/index.ipynb?token={SERVER_TOKEN}"
        await page.wait_for_url(expected)
        await expect(page.locator("#jupyter")).to_have_text(
            "Jupyter at /user/jovyan-abc/lab/tree/index.ipynb"
        )
    assert fake.token_ok == [True]
    assert fake.requests[0].headers["Accept"] == "text/event-stream"


LAUNCH_PARAMETERS = [
    ("labpath=notebooks/intro%20one.ipynb", "doc/tree/notebooks/intro%20one.ipynb"),
    ("filepath=data/", "tree/data"),
    ("urlpath=%2Frstudio%3Fa%3D1", "rstudio?a=1"),
    ("urlpath=/lab&labpath=x.ipynb", "doc/tree/x.ipynb"),
    ("", ""),
]


async def test_redirect_honours_launch_parameters(page: Page) -> None:  # noqa: F811
    fake = FakeBuild()
    fake.release.set()
    async with serve_app(make_app(Config(), fake)) as base:
        # one browser for every case: starting Chromium costs more than a launch
        for query, url_path in LAUNCH_PARAMETERS:
            await page.goto(f"{base}v2/gh/{SPEC}?{query}")
            expected = jupyter_redirect_url(f"{base}user/jovyan-abc/", SERVER_TOKEN, url_path)
            await page.wait_for_url(expected)
            assert page.url == expected, query


async def test_failed_build_shows_its_message(page: Page) -> None:  # noqa: F811
    fake = FakeBuild(script="fail")
    async with serve_app(make_app(Config(), fake)) as base:
        await page.goto(f"{base}v2/gh/{SPEC}")
        failure = page.locator("#failure")
        await expect(failure).to_be_visible()
        await expect(failure).to_contain_text("no such file environment.yml")
        await expect(page.locator("#status")).to_have_text("Launch failed")
        await screenshot(page, "failed")
        fake.release.set()
        assert page.url == f"{base}v2/gh/{SPEC}"


async def test_stream_closing_early_is_a_failure(page: Page) -> None:  # noqa: F811
    fake = FakeBuild(script="close")
    async with serve_app(make_app(Config(), fake)) as base:
        await page.goto(f"{base}v2/gh/{SPEC}")
        await expect(page.locator("#failure")).to_contain_text("Event stream closed unexpectedly")


async def test_refused_build_request_shows_status_and_reason(page: Page) -> None:  # noqa: F811
    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="Invalid build token: it has expired.")

    app = make_app(Config())
    app.router.add_get("/build/{provider}/{spec:.+}", refuse)
    async with serve_app(app) as base:
        await page.goto(f"{base}v2/gh/{SPEC}")
        await expect(page.locator("#failure")).to_contain_text(
            "Failed to connect to event stream: 403 - Invalid build token: it has expired."
        )


async def test_over_the_rate_limit_the_page_says_so_and_opens_no_stream(
    page: Page,  # noqa: F811
) -> None:
    """A person who has used up the allowance sees why and when to come back; the page
    carries no token and its script asks /build for nothing."""
    fake = FakeBuild()
    app = make_app(Config(), fake)
    app[RATE_LIMITER] = RateLimiter(1, 600)
    async with serve_app(app) as base:
        first = await page.request.get(f"{base}v2/gh/{SPEC}")  # the one launch allowed
        assert first.status == 200
        response = await page.goto(f"{base}v2/gh/{SPEC}")
        assert response is not None and response.status == 429
        await expect(page.locator("#failure")).to_have_text(
            "Rate limit exceeded. Try again in 600 seconds."
        )
        await expect(page.locator("#status")).to_have_text("Launch refused")
        await expect(page.locator("body")).to_have_attribute("data-phase", "failed")
        await screenshot(page, "rate-limited")
    assert fake.requests == []


async def test_escaped_spec_reaches_build_unchanged(page: Page) -> None:  # noqa: F811
    fake = FakeBuild()
    fake.release.set()
    spec = f"{quote('https://git.example.org/repo.git', safe='')}/main"
    async with serve_app(make_app(Config(), fake)) as base:
        await page.goto(f"{base}v2/git/{spec}")
        await page.wait_for_url(f"{base}user/jovyan-abc/?token={SERVER_TOKEN}")
    assert fake.requests[0].raw_path.startswith(f"/build/git/{spec}?build_token=")
    assert fake.token_ok == [True]


async def test_about_and_not_found_pages(page: Page) -> None:  # noqa: F811
    pages = PagesConfig(banner_message="<b>Scheduled maintenance on Friday</b>")
    async with serve_app(make_app(Config(pages=pages))) as base:
        await page.goto(f"{base}about")
        await expect(page.locator("#versions")).to_contain_text("swarmbinder")
        await expect(page.locator("#banner")).to_have_text("Scheduled maintenance on Friday")
        await screenshot(page, "about")
        response = await page.goto(f"{base}no/such/page")
        assert response is not None and response.status == 404
        await expect(page.locator("h1")).to_have_text("404: Not Found")
        await screenshot(page, "not-found")
        # the header logo leads home
        await page.click("header a")
        await page.wait_for_url(base)
