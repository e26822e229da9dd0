"""The HTML pages and /api/repoproviders as a browser or an API client sees them."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from swarmbinder import __version__
from swarmbinder.config import Config, PagesConfig, ServerConfig, TokenConfig
from swarmbinder.handlers.pages import add_page_routes
from swarmbinder.keys import BUILD_TOKENS
from swarmbinder.pages import (
    BadLaunchParameter,
    check_url_path,
    jupyter_redirect_url,
    launch_url_path,
)
from swarmbinder.policy.buildtokens import BuildTokenInvalid, build_audience

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SECRET = "12" * 32

#: Every provider BinderHub offers, in the order pages and /api/repoproviders list them.
PROVIDER_IDS = ["gh", "gist", "gl", "git", "zenodo", "figshare", "hydroshare", "dataverse", "ckan"]


def config(**sections: Any) -> Config:
    sections.setdefault("tokens", TokenConfig(build_token_secret=SECRET))
    return Config(**sections)


async def client_for(
    aiohttp_client: AiohttpClient, cfg: Config | None = None
) -> TestClient[Any, Any]:
    app = web.Application()
    add_page_routes(app, cfg or config())
    return await aiohttp_client(app)


def script_json(body: str, element_id: str) -> Any:
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', body, re.S
    )
    assert match, f"no {element_id} in page"
    return json.loads(match.group(1))


# --- home ----------------------------------------------------------------------------------


async def test_home_page_has_the_form_and_providers(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client)
    response = await client.get("/", headers=HTML)
    assert response.status == 200
    assert response.content_type == "text/html"
    body = await response.text()
    for element in ('id="provider"', 'id="repository"', 'id="ref"', 'id="path"', 'id="path-kind"'):
        assert element in body
    for snippet in ("badge-markdown", "badge-rst", "badge-html", "launch-url"):
        assert f'id="{snippet}"' in body
    page_config = script_json(body, "page-config")
    assert [p["id"] for p in page_config["repoProviders"]] == PROVIDER_IDS
    assert page_config["baseUrl"] == "/"
    assert page_config["badgeBaseUrl"] == ""
    assert re.search(r'src="/static/home\.js\?v=[0-9a-f]{12}"', body)


async def test_banner_footer_scripts_and_analytics(aiohttp_client: AiohttpClient) -> None:
    pages = PagesConfig(
        banner_message='<b id="notice">Maintenance at noon</b>',
        extra_footer_scripts={"b": "window.second = 2;", "a": "window.first = 1;"},
        google_analytics_code="UA-123",
    )
    client = await client_for(aiohttp_client, config(pages=pages))
    body = await (await client.get("/about", headers=HTML)).text()
    # raw HTML, as BinderHub documents it
    assert '<b id="notice">Maintenance at noon</b>' in body
    assert body.index("window.first = 1;") < body.index("window.second = 2;")
    assert '"code": "UA-123"' in body


async def test_page_config_is_safe_against_script_injection(aiohttp_client: AiohttpClient) -> None:
    pages = PagesConfig(badge_base_url="https://x.example/</script><script>alert(1)//")
    client = await client_for(aiohttp_client, config(pages=pages))
    body = await (await client.get("/", headers=HTML)).text()
    assert "</script><script>alert(1)" not in body
    assert script_json(body, "page-config")["badgeBaseUrl"].startswith("https://x.example/</")


async def test_custom_templates_override_and_extend(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text(
        '{% extends "templates/index.html" %}'
        '{% block main %}<p id="custom">Welcome to {{ site_name }}</p>{{ super() }}{% endblock %}'
    )
    pages = PagesConfig(template_path=str(tmp_path), template_variables={"site_name": "Our Binder"})
    client = await client_for(aiohttp_client, config(pages=pages))
    body = await (await client.get("/", headers=HTML)).text()
    assert '<p id="custom">Welcome to Our Binder</p>' in body
    assert 'id="repository"' in body  # the packaged page is still there


async def test_base_url_prefixes_every_page(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client, config(server=ServerConfig(base_url="/binder/")))
    home = await client.get("/binder/", headers=HTML)
    assert home.status == 200
    assert script_json(await home.text(), "page-config")["baseUrl"] == "/binder/"
    bare = await client.get("/binder", headers=HTML, allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (302, "/binder/")
    assert (await client.get("/", headers=HTML)).status == 404
    assert (await client.get("/binder/about", headers=HTML)).status == 200
    static = await client.get("/binder/static/home.js")
    assert static.status == 200
    assert "javascript" in static.content_type


# --- loading page --------------------------------------------------------------------------


async def test_loading_page_opens_the_build_stream_with_a_token(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await client_for(aiohttp_client)
    spec = "binder-examples/requirements/HEAD"
    response = await client.get(f"/v2/gh/{spec}", headers=HTML)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.text()
    assert f'<meta property="og:title" content="GitHub: {spec}">' in body
    launch = script_json(body, "launch-config")
    build = urlsplit(launch["buildUrl"])
    assert build.path == f"/build/gh/{spec}"
    token = parse_qs(build.query)["build_token"][0]
    tokens = client.app[BUILD_TOKENS]
    host = f"{client.host}:{client.port}"
    assert tokens.check(token, build_audience("gh", spec), host)
    with pytest.raises(BuildTokenInvalid):
        tokens.verify(token, "gh/someone/else/HEAD", host)


async def test_loading_page_keeps_escapes_of_the_spec(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client)
    response = await client.get("/v2/gl/group%2Fsub%2Fproject/main", headers=HTML)
    assert response.status == 200
    build_url = script_json(await response.text(), "launch-config")["buildUrl"]
    assert build_url.startswith("/build/gl/group%2Fsub%2Fproject/main?build_token=")


async def test_loading_page_under_base_url(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client, config(server=ServerConfig(base_url="/b/")))
    response = await client.get("/b/v2/gh/org/repo/main", headers=HTML)
    assert response.status == 200
    build_url = script_json(await response.text(), "launch-config")["buildUrl"]
    assert build_url.startswith("/b/build/gh/org/repo/main?build_token=")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/nope/org/repo/HEAD", 404, "No provider found for prefix &#39;nope&#39;"),
        ("/v2/gh/only-a-user", 400, "Spec is not of the form"),
        ("/v2/gh/org/%2E%2E/HEAD", 400, "&#39;..&#39;"),
        ("/v2/gh/org/repo%0D%0ASet-Cookie:x/HEAD", 400, "control characters"),
        ("/v2/gh/%C3%BCser/repo/HEAD", 400, "may only have letters"),
        ("/v2/gh/org/" + "r" * 600 + "/HEAD", 400, "too long"),
        ("/v2/gh/-org/repo/HEAD", 400, "must not start with"),
        ("/v2/gh/org/repo/HEAD?urlpath=https://evil.example/", 400, "not a URL"),
        ("/v2/gh/org/repo/HEAD?urlpath=/https://evil.example/", 400, "not a URL"),
        ("/v2/gh/org/repo/HEAD?urlpath=../../hub/admin", 400, "&#39;..&#39;"),
        ("/v2/gh/org/repo/HEAD?labpath=../other-user", 400, "&#39;..&#39;"),
        ("/v2/gh/org/repo/HEAD?filepath=%2e%2e/x", 400, "&#39;..&#39;"),
        ("/v2/gh/org/repo/HEAD?urlpath=lab%0d%0aX:1", 400, "control characters"),
    ],
)
async def test_bad_launch_requests_get_a_clear_4xx_page(
    aiohttp_client: AiohttpClient, path: str, status: int, message: str
) -> None:
    client = await client_for(aiohttp_client)
    # encoded=True: send the path as written, as a hostile client would (no dot removal)
    response = await client.get(URL(path, encoded=True), headers=HTML)
    assert response.status == status
    assert response.content_type == "text/html"
    body = await response.text()
    assert message in body
    assert "build_token" not in body


# --- legacy, about, 404, API-only ------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path", "target"),
    [
        ("/", "/repo/org/repo", "/v2/gh/org/repo/HEAD"),
        ("/", "/repo/org/repo/", "/v2/gh/org/repo/HEAD"),
        (
            "/",
            "/repo/org/repo/notebooks/a.ipynb",
            "/v2/gh/org/repo/HEAD?urlpath=%2Fnotebooks%2Fa.ipynb",
        ),
        ("/b/", "/b/repo/org/repo", "/b/v2/gh/org/repo/HEAD"),
    ],
)
async def test_legacy_repo_links_redirect(
    aiohttp_client: AiohttpClient, base: str, path: str, target: str
) -> None:
    client = await client_for(aiohttp_client, config(server=ServerConfig(base_url=base)))
    response = await client.get(path, headers=HTML, allow_redirects=False)
    assert response.status == 302
    location, wanted = urlsplit(response.headers["Location"]), urlsplit(target)
    assert location.path == wanted.path
    assert parse_qs(location.query) == parse_qs(wanted.query)


async def test_legacy_redirect_refuses_traversal(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client)
    path = URL("/repo/org/repo/%2E%2E/%2E%2E/etc", encoded=True)
    response = await client.get(path, headers=HTML, allow_redirects=False)
    assert 400 <= response.status < 500


async def test_about_page_shows_versions_and_message(aiohttp_client: AiohttpClient) -> None:
    pages = PagesConfig(about_message="<em>Run by the Example Lab</em>")
    client = await client_for(aiohttp_client, config(pages=pages))
    response = await client.get("/about", headers=HTML)
    assert response.status == 200
    body = await response.text()
    assert "<em>Run by the Example Lab</em>" in body
    assert f"<td>swarmbinder</td><td>{__version__}</td>" in body
    assert f"<td>{html.escape(Config().builds.build_image)}</td>" in body


async def test_unknown_path_gets_a_friendly_404(aiohttp_client: AiohttpClient) -> None:
    client = await client_for(aiohttp_client)
    page = await client.get("/no/such/page", headers=HTML)
    assert page.status == 404
    assert page.content_type == "text/html"
    body = await page.text()
    assert "404: Not Found" in body and "<code>/no/such/page</code>" in body
    api = await client.get("/no/such/page", headers={"Accept": "application/json"})
    assert api.status == 404
    assert api.content_type != "text/html"


async def test_handlers_own_404s_are_left_alone(aiohttp_client: AiohttpClient) -> None:
    async def gone(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no build with that id")

    app = web.Application()
    add_page_routes(app, config())
    app.router.add_get("/builds/{id}", gone)
    client = await aiohttp_client(app)
    response = await client.get("/builds/x", headers=HTML)
    assert response.status == 404
    assert await response.text() == "no build with that id"


async def test_api_only_mode_serves_no_pages(aiohttp_client: AiohttpClient) -> None:
    cfg = config(server=ServerConfig(enable_api_only_mode=True))
    client = await client_for(aiohttp_client, cfg)
    for path in ("/", "/about", "/v2/gh/org/repo/HEAD", "/repo/org/repo", "/badge.svg"):
        response = await client.get(path, headers=HTML, allow_redirects=False)
        assert response.status == 404, path
        assert "<html" not in await response.text()
    assert (await client.get("/api/repoproviders")).status == 200
    assert BUILD_TOKENS in client.app  # /build still verifies tokens


async def test_repoproviders_lists_binderhubs_display_configs(
    aiohttp_client: AiohttpClient,
) -> None:
    cfg = config(server=ServerConfig(cors_allow_origin="https://jupyter.example"))
    client = await client_for(aiohttp_client, cfg)
    response = await client.get("/api/repoproviders")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "https://jupyter.example"
    providers = await response.json()
    by_id = {p["id"]: p for p in providers}
    assert list(by_id) == PROVIDER_IDS
    for provider in providers:
        assert {"id", "displayName", "spec", "repo", "ref"} <= set(provider)
        assert isinstance(provider["spec"]["validateRegex"], str)
        assert isinstance(provider["repo"]["urlEncode"], bool)
    assert by_id["gh"]["displayName"] == "GitHub"
    assert "(?<repo>" in by_id["gh"]["detect"]["regex"]
    assert by_id["gl"]["repo"]["urlEncode"] is True
    assert by_id["gh"]["ref"] == {"enabled": True, "default": "HEAD"}
    assert re.fullmatch(by_id["gh"]["spec"]["validateRegex"], "org/repo/HEAD")


async def test_build_tokens_are_shared_with_an_existing_issuer(
    aiohttp_client: AiohttpClient,
) -> None:
    from swarmbinder.policy.buildtokens import BuildTokens

    app = web.Application()
    shared = BuildTokens(SECRET)
    add_page_routes(app, config(), tokens=shared)
    assert app[BUILD_TOKENS] is shared


# --- launch URL rules (binderhub-client's LaunchSpec) -----------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ""),
        ({"urlpath": "/lab/tree/a.ipynb"}, "lab/tree/a.ipynb"),
        ({"urlpath": "rstudio"}, "rstudio"),
        ({"labpath": "notes/a b.ipynb/"}, "doc/tree/notes/a%20b.ipynb"),
        ({"filepath": "data/x.csv"}, "tree/data/x.csv"),
        ({"urlpath": "lab", "labpath": "a.ipynb", "filepath": "b"}, "doc/tree/a.ipynb"),
        ({"urlpath": "lab", "filepath": "b"}, "tree/b"),
    ],
)
def test_launch_url_path(query: dict[str, str], expected: str) -> None:
    assert launch_url_path(query) == expected


@pytest.mark.parametrize(
    ("url_path", "expected"),
    [
        ("", "https://hub.example/user/u-1/?token=t0k"),
        ("lab/tree/a.ipynb", "https://hub.example/user/u-1/lab/tree/a.ipynb?token=t0k"),
        ("rstudio?a=1", "https://hub.example/user/u-1/rstudio?a=1&token=t0k"),
        ("doc/tree/a%20b.ipynb", "https://hub.example/user/u-1/doc/tree/a%20b.ipynb?token=t0k"),
    ],
)
def test_jupyter_redirect_url(url_path: str, expected: str) -> None:
    assert jupyter_redirect_url("https://hub.example/user/u-1/", "t0k", url_path) == expected


async def test_leading_slashes_stay_inside_the_server(aiohttp_client: AiohttpClient) -> None:
    # binderhub-client strips leading slashes, so "//host/x" is the path "host/x" in the server
    assert launch_url_path({"urlpath": "//evil.example/x"}) == "evil.example/x"
    client = await client_for(aiohttp_client)
    response = await client.get("/v2/gh/org/repo/HEAD?urlpath=//evil.example/x", headers=HTML)
    assert response.status == 200


@pytest.mark.parametrize(
    "url_path",
    [
        "https://evil.example/",
        "//evil.example",
        "javascript:alert(1)",
        "../x",
        "a/%2e%2e/b",
        "a\r\nb",
    ],
)
def test_check_url_path_refuses_escapes(url_path: str) -> None:
    with pytest.raises(BadLaunchParameter) as info:
        check_url_path(url_path)
    assert info.value.status_code == 400


NASTY_PATHS = [
    "/v2/",
    "/v2/gh",
    "/v2/gh/",
    "/v2//org/repo/HEAD",
    "/v2/GH/org/repo/HEAD",
    "/v2/gh/org/repo/HEAD/",
    "/v2/gh/org/repo/%FF%FE",
    "/v2/gh/org/repo/%00",
    "/v2/gh/%F0%9F%90%8D/%F0%9F%90%8D/HEAD",
    "/v2/git/%2D%2Dupload-pack%3Dtouch%20x/HEAD",
    "/v2/git/not-a-url/HEAD",
    "/v2/gl/%2E%2E%2F%2E%2E/HEAD",
    "/v2/gist/user/" + "a" * 5000,
    "/v2/gh/org/repo/HEAD?urlpath=%FF",
    "/v2/gh/org/repo/HEAD?labpath=%00",
    "/v2/gh/org/repo/HEAD?urlpath=" + "x" * 3000,
    "/repo/%00/x",
    "/repo/-x/y/z",
    "/static/%2E%2E/pages.py",
    "/static/../../etc/passwd",
    "/about/%0D%0A",
]


@pytest.mark.parametrize("path", NASTY_PATHS)
async def test_bad_input_never_gets_a_5xx(aiohttp_client: AiohttpClient, path: str) -> None:
    client = await client_for(aiohttp_client)
    response = await client.get(URL(path, encoded=True), headers=HTML, allow_redirects=False)
    assert response.status < 500, await response.text()
    if response.status >= 400:
        assert response.content_type == "text/html"
