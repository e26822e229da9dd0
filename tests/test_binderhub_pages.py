"""The pages' BinderHub details as a browser or a crawler gets them from the served app: the head
(extra_header_html, og: and twitter: meta), /logo_social.png, /robots.txt, the loading page's
decoded repository, its favicons, and repo_providers switching providers off for real."""

from __future__ import annotations

import html
import json
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from swarmbinder.app import add_build_routes
from swarmbinder.config import Config, load_config
from swarmbinder.events import parse_sse
from swarmbinder.handlers.pages import add_page_routes
from swarmbinder.keys import ADMISSION, CONFIG, FLOW
from swarmbinder.launch_flow import LaunchFlow
from swarmbinder.outbound import OutboundPolicy, guarded_session
from swarmbinder.policy.admission import Admitted
from swarmbinder.resolve import Resolved, policy_from_config, providers_from_config, resolve

HTML = {"Accept": "text/html"}
SECRET = "34" * 32
FIXTURES = Path(__file__).parent / "config"
#: A git spec whose URL and ref carry markup: the page must show them as text.
HOSTILE_SPEC = (
    "https%3A%2F%2Fexample.org%2F%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E%22%3E.git/ma%3Cb%3Ein"
)
HOSTILE_URL = 'https://example.org/<script>window.__xss=1</script>">.git'


def load(**overrides: Any) -> Config:
    return load_config(env={}, overrides={"build_token_secret": SECRET, **overrides})


async def pages_client(aiohttp_client: AiohttpClient, config: Config) -> TestClient[Any, Any]:
    app = web.Application()
    add_page_routes(app, config)
    return await aiohttp_client(app)


def head_of(body: str) -> str:
    return body.split("<head>", 1)[1].split("</head>", 1)[0]


def meta(body: str, key: str) -> str:
    match = re.search(rf'<meta (?:property|name)="{re.escape(key)}" content="([^"]*)">', body)
    assert match, f"no {key} meta"
    return html.unescape(match.group(1))


# --- the head of every page --------------------------------------------------------------------


async def test_extra_header_html_ends_the_head_of_every_page(aiohttp_client: AiohttpClient) -> None:
    config = load(
        extra_header_html={"b": '<meta name="second" content="2">', "a": "<link rel=x href=/a>"}
    )
    client = await pages_client(aiohttp_client, config)
    for path in ("/", "/about", "/v2/gh/org/repo/HEAD"):
        head = head_of(await (await client.get(path, headers=HTML)).text())
        # as they are, sorted by key, after everything of ours
        assert head.rstrip().endswith('<link rel=x href=/a>\n  <meta name="second" content="2">')


async def test_social_meta_with_binderhubs_default_title(aiohttp_client: AiohttpClient) -> None:
    client = await pages_client(aiohttp_client, load())
    body = await (await client.get("/", headers=HTML)).text()
    assert meta(body, "og:title") == "The Binder Project"
    assert meta(body, "og:description").startswith("Reproducible, sharable, open")
    assert meta(body, "og:image") == "/logo_social.png"
    assert meta(body, "twitter:card") == "summary_large_image"
    launch = await (await client.get("/v2/gh/org/repo/HEAD", headers=HTML)).text()
    assert meta(launch, "og:title") == "GitHub: org/repo/HEAD"


async def test_opengraph_title_and_absolute_image(aiohttp_client: AiohttpClient) -> None:
    config = load(
        default_opengraph_title="Our <Binder>",
        badge_base_url="https://binder.example.org/",
        base_url="/b/",
    )
    client = await pages_client(aiohttp_client, config)
    body = await (await client.get("/b/about", headers=HTML)).text()
    assert 'content="Our &lt;Binder&gt;"' in body
    assert meta(body, "og:image") == "https://binder.example.org/logo_social.png"


async def test_the_social_image_is_a_png_of_the_size_the_meta_says(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await pages_client(aiohttp_client, load())
    response = await client.get("/logo_social.png")
    assert response.status == 200 and response.content_type == "image/png"
    png = await response.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    body = await (await client.get("/", headers=HTML)).text()
    assert (str(width), str(height)) == (
        meta(body, "og:image:width"),
        meta(body, "og:image:height"),
    )


# --- robots.txt --------------------------------------------------------------------------------


@pytest.mark.parametrize("api_only", [False, True])
async def test_robots_txt_keeps_crawlers_off_launch_links(
    aiohttp_client: AiohttpClient, api_only: bool
) -> None:
    client = await pages_client(aiohttp_client, load(base_url="/b/", enable_api_only_mode=api_only))
    response = await client.get("/b/robots.txt")
    assert response.status == 200 and response.content_type == "text/plain"
    assert await response.text() == (
        "User-agent: *\nDisallow: /b/v2/\nDisallow: /b/build/\nDisallow: /b/repo/\n"
    )


# --- the loading page --------------------------------------------------------------------------


async def test_loading_page_shows_the_decoded_repository(aiohttp_client: AiohttpClient) -> None:
    client = await pages_client(aiohttp_client, load())
    spec = "https%3A%2F%2Fgit.example.org%2Fgroup%2Fproject.git/feature%2Fx"
    body = await (await client.get(f"/v2/git/{spec}", headers=HTML)).text()
    assert '<h1 id="spec">https://git.example.org/group/project.git</h1>' in body
    assert '<div class="ref" id="ref">at feature/x</div>' in body
    assert "%3A%2F%2F" not in body.split("<main>", 1)[1].split("<script", 1)[0]
    gitlab = await (await client.get("/v2/gl/group%2Fsub%2Fproject/main", headers=HTML)).text()
    assert '<h1 id="spec">https://gitlab.com/group/sub/project.git</h1>' in gitlab


async def test_a_hostile_spec_is_shown_as_text(aiohttp_client: AiohttpClient) -> None:
    client = await pages_client(aiohttp_client, load())
    body = await (await client.get(f"/v2/git/{HOSTILE_SPEC}", headers=HTML)).text()
    assert "<script>window.__xss" not in body
    assert "<b>in" not in body
    h1 = re.search(r'<h1 id="spec">(.*?)</h1>', body)
    assert h1 and html.unescape(h1.group(1)) == HOSTILE_URL
    title = re.search(r"<title>(.*?)</title>", body)
    assert title and html.unescape(title.group(1)) == f"Binder: {HOSTILE_URL}"
    ref = re.search(r'<div class="ref" id="ref">at (.*?)</div>', body)
    assert ref and html.unescape(ref.group(1)) == "ma<b>in"
    # the JSON islands cannot close their script element either
    assert body.count("</script>") == body.count("<script")


async def test_loading_page_names_the_favicons_of_each_state(aiohttp_client: AiohttpClient) -> None:
    client = await pages_client(aiohttp_client, load())
    body = await (await client.get("/v2/gh/org/repo/HEAD", headers=HTML)).text()
    match = re.search(r'<script id="favicons" type="application/json">(.*?)</script>', body, re.S)
    assert match
    icons = json.loads(match.group(1))
    assert sorted(icons) == ["building", "failed", "success"]
    for url in icons.values():
        response = await client.get(url)
        assert response.status == 200 and response.content_type == "image/svg+xml"
        assert (await response.text()).lstrip().startswith("<svg")
    assert '<link id="favicon" rel="icon"' in body


# --- repo_providers ----------------------------------------------------------------------------


class LetEveryoneIn:
    async def admit(self, *, peer: str, path: str, **_: Any) -> Admitted:
        return Admitted(client_ip=peer, have_build_token=True)


@pytest.fixture
async def provider_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(OutboundPolicy()) as session:
        yield session


async def service_client(
    aiohttp_client: AiohttpClient, config: Config, session: aiohttp.ClientSession
) -> TestClient[Any, Any]:
    """Pages and /build as create_app wires them, with the configured providers resolving
    for real and nothing behind them (no spec here gets that far)."""
    providers = providers_from_config(config, session)

    async def resolve_path(path: str) -> Resolved:
        return await resolve(
            path, providers=providers, policy=policy_from_config(config), image_prefix="x/"
        )

    async def nothing(*_: Any) -> Any:
        raise AssertionError("an unknown provider got past resolving")

    app = web.Application()
    app[CONFIG] = config
    app[FLOW] = LaunchFlow(
        resolve=resolve_path,
        image_exists=nothing,
        builds=None,  # type: ignore[arg-type]
        launcher=None,
        check_quota=nothing,
    )
    app[ADMISSION] = LetEveryoneIn()  # type: ignore[assignment]
    add_build_routes(app)
    add_page_routes(app, config)
    return await aiohttp_client(app)


async def build_answer(client: TestClient[Any, Any], path: str) -> tuple[int, list[dict[str, Any]]]:
    response = await client.get(path, headers={"Accept": "text/event-stream"})
    return response.status, parse_sse(await response.read())


async def test_repo_providers_switch_providers_off(
    aiohttp_client: AiohttpClient, provider_session: aiohttp.ClientSession
) -> None:
    config = load_config(FIXTURES / "binderhub_mixed.yaml", env={})
    client = await service_client(aiohttp_client, config, provider_session)
    providers = await (await client.get("/api/repoproviders")).json()
    assert [p["id"] for p in providers] == ["gh", "git"]
    home = await (await client.get("/", headers=HTML)).text()
    assert '"id": "gl"' not in home and '"id": "gh"' in home

    # a switched-off prefix answers exactly as a prefix that never existed
    off = await client.get("/v2/gl/group%2Fproject/main", headers=HTML)
    never = await client.get("/v2/nope/group%2Fproject/main", headers=HTML)
    assert off.status == never.status == 404
    off_text = (await off.text()).replace("gl", "PREFIX")
    assert off_text == (await never.text()).replace("nope", "PREFIX")

    off_status, off_events = await build_answer(client, "/build/gl/group%2Fproject/main")
    never_status, never_events = await build_answer(client, "/build/nope/group%2Fproject/main")
    assert off_status == never_status
    assert off_events[-1]["phase"] == never_events[-1]["phase"] == "failed"
    assert off_events[-1]["message"] == never_events[-1]["message"].replace("nope", "gl")
    assert "No provider found for prefix 'gl'" in off_events[-1]["message"]
