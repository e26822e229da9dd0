"""The loading page's build tokens are paid for from the rate limit, and a launch counts once.

Unit tests of the accounting (:mod:`swarmbinder.policy.tokenmint`), then the pages and ``/build``
served together in-process with the app's own admission (``app.make_admission``) and only the
launch flow faked: what a script that loads the page in a loop, and a person who clicks a
launch link, each get.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from swarmbinder.app import add_build_routes, make_admission
from swarmbinder.config import load_config
from swarmbinder.events import BuildEvent, parse_sse
from swarmbinder.handlers.pages import add_page_routes
from swarmbinder.keys import ADMISSION, BUILD_TOKENS, CLIENT_IP, CONFIG, FLOW, RATE_LIMITER
from swarmbinder.launch_flow import LaunchRequest
from swarmbinder.policy.bans import BanList
from swarmbinder.policy.buildtokens import BuildTokenClaims, BuildTokens
from swarmbinder.policy.clientip import ClientIP
from swarmbinder.policy.ratelimit import RateLimiter
from swarmbinder.policy.tokenmint import SpentTokens, charge

SECRET = "56" * 32
HTML = {"Accept": "text/html"}
SSE = {"Accept": "text/event-stream"}
LAUNCH = "gh/org/repo/main"


def claims(token_id: str, expires_at: int = 1_000) -> BuildTokenClaims:
    return BuildTokenClaims(audience=LAUNCH, origin="h", expires_at=expires_at, token_id=token_id)


# -- the accounting, without HTTP ----------------------------------------------------------------


def test_a_token_is_free_once() -> None:
    spent = SpentTokens(clock=lambda: 0)
    assert spent.first_use(claims("a"))
    assert not spent.first_use(claims("a"))
    assert spent.first_use(claims("b"))


def test_a_token_without_an_id_is_never_free() -> None:
    """Another implementation's token (BinderHub's have no jti) cannot be told from a replay."""
    assert not SpentTokens().first_use(claims(""))


def test_spent_tokens_are_forgotten_when_they_expire_and_are_bounded() -> None:
    now = [0.0]
    spent = SpentTokens(max_tokens=3, clock=lambda: now[0])
    for name in "abc":
        spent.first_use(claims(name, expires_at=100))
    now[0] = 100  # expired: nobody can use them any more, so they need not be remembered
    spent.first_use(claims("d", expires_at=200))
    assert len(spent) == 1
    for name in "efgh":
        spent.first_use(claims(name, expires_at=200))
    assert len(spent) == 3


async def test_charge_says_what_the_limiter_said() -> None:
    limiter = RateLimiter(1, 60, clock=lambda: 1_000)
    first = await charge(limiter.check, "203.0.113.7")
    assert first.allowed and first.headers()["X-RateLimit-Remaining"] == "0"
    second = await charge(limiter.check, "203.0.113.7")
    assert not second.allowed
    assert second.headers() == {"Retry-After": "60", "X-RateLimit-Limit": "1"}
    free = await charge(None, "203.0.113.7")
    assert free.allowed and free.headers() == {}


# -- pages and /build together --------------------------------------------------------------------


class OneEventFlow:
    """A launch that fails at resolution: enough to see that /build let the request through."""

    def __init__(self) -> None:
        self.requests: list[LaunchRequest] = []

    async def run(
        self, request: LaunchRequest, direct: object = None
    ) -> AsyncGenerator[BuildEvent, None]:
        self.requests.append(request)
        yield BuildEvent.failed("no such ref", 404)


def binder_app(**options: Any) -> web.Application:
    """The pages and /build wired as create_app wires them, with the flow faked."""
    config = load_config(env={}, overrides={"build_token_secret": SECRET, **options})
    app = web.Application()
    app[CONFIG] = config
    app[CLIENT_IP] = ClientIP(config.server.trusted_proxies)
    tokens = BuildTokens(SECRET)
    app[BUILD_TOKENS] = tokens
    limiter = RateLimiter(config.quotas.rate_limit, config.quotas.rate_limit_period)
    app[RATE_LIMITER] = limiter
    app[ADMISSION] = make_admission(config, BanList(), tokens, None, limiter, app[CLIENT_IP])
    app[FLOW] = OneEventFlow()  # type: ignore[assignment]
    add_build_routes(app)
    add_page_routes(app, config, tokens=tokens)
    return app


def launch_config(body: str) -> dict[str, Any]:
    found = re.search(r'<script id="launch-config" type="application/json">(.*?)</script>', body)
    assert found is not None
    config: dict[str, Any] = json.loads(found.group(1))
    return config


async def load_page(
    client: TestClient[Any, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any], str]:
    response = await client.get(f"/v2/{LAUNCH}", headers={**HTML, **(headers or {})})
    body = await response.text()
    return response.status, dict(response.headers), launch_config(body), body


async def build(
    client: TestClient[Any, Any], url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    response = await client.get(url, headers={**SSE, **(headers or {})})
    return response.status, dict(response.headers), parse_sse(await response.read())


async def test_a_script_loading_the_page_mints_no_more_tokens_than_the_limit(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(binder_app(rate_limit=3, rate_limit_period=600))
    urls = []
    for remaining in (2, 1, 0):
        status, headers, config, _ = await load_page(client)
        assert status == 200
        assert headers["X-RateLimit-Remaining"] == str(remaining)
        assert "build_token=" in config["buildUrl"]
        urls.append(config["buildUrl"])
    for _ in range(5):
        status, headers, config, body = await load_page(client)
        # Still a page a person can read, with the limit's message, and no token in it.
        assert status == 429
        assert headers["Content-Type"].startswith("text/html")
        assert 0 < int(headers["Retry-After"]) <= 600
        assert config["buildUrl"] == ""
        assert config["refusal"] == "Rate limit exceeded. Try again in 600 seconds."
        assert "Rate limit exceeded. Try again in 600 seconds." in body
        assert "build_token" not in body
    # /build without a token is over the same limit.
    status, _, events = await build(client, f"/build/{LAUNCH}")
    assert status == 429 and events[-1]["status_code"] == 429
    # The three tokens minted within the limit still launch: each is the launch it paid for.
    for url in urls:
        status, headers, events = await build(client, url)
        assert status == 200 and events[-1]["status_code"] == 404
        assert "X-RateLimit-Remaining" not in headers


async def test_a_launch_from_the_page_counts_once_and_a_replayed_token_counts_again(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(binder_app(rate_limit=3, rate_limit_period=600))
    _, headers, config, _ = await load_page(client)
    assert headers["X-RateLimit-Remaining"] == "2"  # the page paid for the launch
    status, headers, _ = await build(client, config["buildUrl"])
    assert status == 200 and "X-RateLimit-Remaining" not in headers  # not counted again
    # The same token again is a request like any other: counted, then refused.
    for remaining in ("1", "0"):
        status, headers, _ = await build(client, config["buildUrl"])
        assert status == 200 and headers["X-RateLimit-Remaining"] == remaining
    status, _, events = await build(client, config["buildUrl"])
    assert status == 429 and "Rate limit exceeded" in events[-1]["message"]


async def test_the_page_and_build_count_an_ipv6_client_by_its_64(
    aiohttp_client: AiohttpClient,
) -> None:
    """Through a trusted proxy (the test client is 127.0.0.1): every address in one /64 is one
    client, at the page and at /build alike."""
    client = await aiohttp_client(
        binder_app(rate_limit=2, rate_limit_period=600, trusted_proxies=["127.0.0.0/8"])
    )

    def from_(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    status, _, _, _ = await load_page(client, from_("2001:db8:77:1::1"))
    assert status == 200
    status, _, _ = await build(client, f"/build/{LAUNCH}", from_("2001:db8:77:1::2"))
    assert status == 200
    status, _, config, _ = await load_page(client, from_("2001:db8:77:1:dead:beef:0:3"))
    assert status == 429 and config["buildUrl"] == ""
    status, _, _ = await build(client, f"/build/{LAUNCH}", from_("2001:db8:77:1::4"))
    assert status == 429
    status, _, config, _ = await load_page(client, from_("2001:db8:77:2::1"))
    assert status == 200 and config["buildUrl"]


async def test_pages_are_not_charged_without_a_limit(
    aiohttp_client: AiohttpClient,
) -> None:
    unlimited = await aiohttp_client(binder_app(rate_limit=0))
    for _ in range(3):
        status, headers, config, _ = await load_page(unlimited)
        assert status == 200 and config["buildUrl"]
        assert "X-RateLimit-Remaining" not in headers


async def test_bad_input_is_refused_without_charging(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(binder_app(rate_limit=1, rate_limit_period=600))
    for _ in range(3):
        response = await client.get("/v2/gh/org/repo/main?urlpath=https://evil.example/")
        assert response.status == 400
    status, _, config, _ = await load_page(client)
    assert status == 200 and config["buildUrl"]
