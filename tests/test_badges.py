"""The launch badges: valid SVG images at BinderHub's addresses."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from swarmbinder.config import Config, PagesConfig, ServerConfig, TokenConfig
from swarmbinder.handlers.pages import add_page_routes

SVG_NS = "{http://www.w3.org/2000/svg}"
TOKENS = TokenConfig(build_token_secret="34" * 32)


def make_app(
    server: ServerConfig | None = None, pages: PagesConfig | None = None
) -> web.Application:
    app = web.Application()
    cfg = Config(server=server or ServerConfig(), pages=pages or PagesConfig(), tokens=TOKENS)
    add_page_routes(app, cfg)
    return app


@pytest.mark.parametrize(
    ("path", "width"),
    [("/badge.svg", 92), ("/badge_logo.svg", 109), ("/assets/images/badge.svg", 92)],
)
async def test_badge_is_a_launch_binder_svg(
    aiohttp_client: AiohttpClient, path: str, width: int
) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "image/svg+xml"
    assert "max-age" in response.headers["Cache-Control"]
    root = ET.fromstring(await response.read())
    assert root.tag == f"{SVG_NS}svg"
    assert (root.get("width"), root.get("height")) == (str(width), "20")
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "launch" in texts and "binder" in texts
    # a badge is embedded in READMEs on other sites: nothing may be fetched from elsewhere
    assert not [
        e for e in root.iter() if e.get("href") or e.get("{http://www.w3.org/1999/xlink}href")
    ]


async def test_logo_badge_differs_from_plain_badge(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    plain = await (await client.get("/badge.svg")).read()
    logo = await (await client.get("/badge_logo.svg")).read()
    assert plain != logo
    assert b"<circle" in logo and b"<circle" not in plain


async def test_badges_answer_head_and_live_under_base_url(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(server=ServerConfig(base_url="/binder/")))
    assert (await client.get("/binder/badge_logo.svg")).status == 200
    head = await client.head("/binder/badge.svg")
    assert head.status == 200
    assert head.content_type == "image/svg+xml"
    assert (await client.get("/badge.svg")).status == 404


async def test_snippets_use_badge_base_url_when_set(aiohttp_client: AiohttpClient) -> None:
    pages = PagesConfig(badge_base_url="https://mybinder.example.org")
    client = await aiohttp_client(make_app(pages=pages))
    body = await (await client.get("/", headers={"Accept": "text/html"})).text()
    match = re.search(
        r'<script id="page-config" type="application/json">(.*?)</script>', body, re.S
    )
    assert match
    page_config = json.loads(match.group(1))
    # the config normalises to a trailing slash, so "badge_logo.svg" resolves under it
    assert page_config["badgeBaseUrl"] == "https://mybinder.example.org/"
    assert page_config["badgeLogoPath"] == "badge_logo.svg"
