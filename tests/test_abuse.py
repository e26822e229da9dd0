"""Bans, the rate limit, build tokens and trusted proxies, through the whole app.

The real app (create_app with the test ground's engine, registry and hub) is asked what a
browser or a script would ask. Every /build here either is refused at the door or names a ref
that does not exist, so no test starts a build.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.events import SSEDecoder

pytestmark = pytest.mark.swarm

SSE = {"Accept": "text/event-stream"}
HTML = {"Accept": "text/html"}
#: A ref no test repository has: the launch fails at resolution (404), before any build.
MISSING_REF = "no-such-ref"


def spec(ground: dict[str, Any], repo: str = "binder-dockerfile", ref: str = MISSING_REF) -> str:
    return f"git/{quote(ground['repos'][repo]['url'], safe='')}/{ref}"


@pytest.fixture
def base_config(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "image_prefix": f"{testground['image_prefix']}abuse{run}-",
        **ground_endpoints(testground, tmp_path),
        "build_token_secret": uuid.uuid4().hex * 2,
    }


async def _client(config: dict[str, Any]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(load_config(env={}, overrides=config)))
    )
    await client.start_server()
    return client


@pytest.fixture
async def make_binder(
    base_config: dict[str, Any],
) -> AsyncIterator[Any]:
    """Start the real app with extra options; every app started is closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**options: Any) -> TestClient[Any, Any]:
        client = await _client({**base_config, **options})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def build_events(
    client: TestClient[Any, Any], path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    """Status, headers and events of one /build request, read until its last event."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    async with client.get(path, headers={**SSE, **(headers or {})}) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in ("ready", "failed"):
                break
        return resp.status, dict(resp.headers), events


async def page_build_url(client: TestClient[Any, Any], launch_path: str) -> str:
    """The /build URL (with its build token) that the loading page's script would open."""
    resp = await client.get(f"/v2/{launch_path}", headers=HTML)
    assert resp.status == 200, await resp.text()
    found = re.search(
        r'<script id="launch-config" type="application/json">(.*?)</script>',
        await resp.text(),
        re.S,
    )
    assert found is not None
    build_url: str = json.loads(found.group(1))["buildUrl"]
    assert "build_token=" in build_url
    return build_url


async def test_banned_network_gets_403_everywhere_but_health_and_versions(
    make_binder: Any, testground: dict[str, Any]
) -> None:
    binder = await make_binder(ban_networks={"127.0.0.0/8": "test"})

    status, _, events = await build_events(binder, f"/build/{spec(testground)}")
    assert status == 403
    assert events == [
        {"phase": "failed", "message": "Requests from test are not allowed\n", "status_code": 403}
    ]

    home = await binder.get("/", headers=HTML)
    assert home.status == 403
    assert home.content_type == "text/html"
    assert "Requests from test are not allowed" in await home.text()

    for path in (f"/v2/{spec(testground)}", "/badge.svg", "/about", "/metrics"):
        assert (await binder.get(path, headers=HTML)).status == 403, path

    api = await binder.get("/api/repoproviders")
    assert api.status == 403
    assert (await api.json())["message"] == "Requests from test are not allowed"

    health = await binder.get("/health")
    assert health.status in (200, 503)
    assert "checks" in await health.json()
    versions = await binder.get("/versions")
    assert versions.status == 200
    assert (await versions.json())["binderhub"].startswith("swarmbinder")


async def test_rate_limit_refuses_the_second_build_with_binderhubs_message(
    make_binder: Any, testground: dict[str, Any]
) -> None:
    binder = await make_binder(rate_limit=1, rate_limit_period=600)
    path = f"/build/{spec(testground)}"

    status, headers, events = await build_events(binder, path)
    assert status == 200
    # Let through, and told how much is left: BinderHub's headers.
    assert headers["X-RateLimit-Limit"] == "1"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) > 0
    assert events[-1]["phase"] == "failed" and events[-1]["status_code"] == 404

    status, headers, events = await build_events(binder, path)
    assert status == 429
    assert events == [
        {
            "phase": "failed",
            "message": "Rate limit exceeded. Try again in 600 seconds.\n",
            "status_code": 429,
        }
    ]
    assert 0 < int(headers["Retry-After"]) <= 600
    # The limit is on launches only: pages still load.
    assert (await binder.get("/", headers=HTML)).status == 200


async def test_the_loading_page_pays_for_its_token_from_the_rate_limit(
    make_binder: Any, testground: dict[str, Any]
) -> None:
    """A script that loads the /v2/ page to get tokens is held to the limit of /build; a
    person's launch from the page counts once; a replayed token counts again."""
    binder = await make_binder(rate_limit=3, rate_limit_period=600)
    launch = spec(testground)
    build_url = await page_build_url(binder, launch)  # 1 of 3
    other = await page_build_url(binder, spec(testground, "binder-two-commits"))  # 2 of 3

    status, headers, events = await build_events(binder, build_url)
    # The page paid: on to resolution, which fails for the missing ref (no build), uncounted.
    assert status == 200, events
    assert "X-RateLimit-Remaining" not in headers
    assert events[-1]["status_code"] == 404, events
    status, headers, _ = await build_events(binder, f"/build/{launch}")  # 3 of 3
    assert status == 200 and headers["X-RateLimit-Remaining"] == "0"

    # Over the limit: the page is still shown, with the limit's message and without a token.
    page = await binder.get(f"/v2/{launch}", headers=HTML)
    body = await page.text()
    assert page.status == 429
    assert 0 < int(page.headers["Retry-After"]) <= 600
    assert "Rate limit exceeded. Try again in 600 seconds." in body
    assert "build_token" not in body
    # The token already used is not free twice.
    status, _, events = await build_events(binder, build_url)
    assert status == 429 and events[-1]["status_code"] == 429

    # A token for another repository is refused outright, not ignored.
    foreign = f"/build/{launch}?{other.split('?', 1)[1]}"
    status, _, events = await build_events(binder, foreign)
    assert status == 403
    assert events[-1]["message"].startswith("Invalid build token: it was issued for another")

    status, _, events = await build_events(binder, f"/build/{launch}?build_token=not.a.token")
    assert status == 403
    assert events[-1]["phase"] == "failed"
    assert "Invalid build token" in events[-1]["message"]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    make_binder: Any, testground: dict[str, Any]
) -> None:
    bans = {"203.0.113.0/24": "the documentation network"}
    forwarded = {"X-Forwarded-For": "203.0.113.7", **HTML}

    untrusting = await make_binder(ban_networks=bans)
    # Any client can write the header; without trusted proxies it is not read at all.
    assert (await untrusting.get("/", headers=forwarded)).status == 200
    status, _, events = await build_events(
        untrusting, f"/build/{spec(testground)}", {"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 200 and events[-1]["status_code"] == 404

    behind_proxy = await make_binder(ban_networks=bans, trusted_proxies=["127.0.0.0/8"])
    home = await behind_proxy.get("/", headers=forwarded)
    assert home.status == 403
    assert "Requests from the documentation network are not allowed" in await home.text()
    status, _, events = await build_events(
        behind_proxy, f"/build/{spec(testground)}", {"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 403 and events[-1]["status_code"] == 403
    # A client cannot hide behind a forged entry left of the proxy's: the proxy's own entry
    # (the rightmost) is the client it saw.
    forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", **HTML}
    assert (await behind_proxy.get("/", headers=forged)).status == 403
    assert (await behind_proxy.get("/health")).status in (200, 503)


async def test_rate_limit_counts_each_forwarded_client_apart(
    make_binder: Any, testground: dict[str, Any]
) -> None:
    binder = await make_binder(rate_limit=1, trusted_proxies=["127.0.0.0/8"])
    path = f"/build/{spec(testground)}"
    first = {"X-Forwarded-For": "198.51.100.1"}
    second = {"X-Forwarded-For": "198.51.100.2"}

    assert (await build_events(binder, path, first))[0] == 200
    assert (await build_events(binder, path, second))[0] == 200
    assert (await build_events(binder, path, first))[0] == 429
