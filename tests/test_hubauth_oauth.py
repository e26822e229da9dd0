"""JupyterHub OAuth login (hubauth.py and its handlers) against a fake hub.

The fake hub speaks the three endpoints a service's login uses (authorize, token, user) and
checks what the real one checks: client id and secret, redirect URI, single-use codes, PKCE.
The handler tests drive the whole app as a browser would: a page sends it to the hub, the hub
sends it back through /oauth_callback, and /build then knows who it is.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError
from swarmbinder.events import BuildEvent, parse_sse
from swarmbinder.handlers.hubauth import authenticator
from swarmbinder.hubauth import (
    CookieSigner,
    HubAuth,
    HubAuthSettings,
    HubAuthUnavailable,
    LoginRefused,
    NotLoggedIn,
    OAuthCallbackInvalid,
    OAuthStateMismatch,
    safe_next_url,
)
from swarmbinder.keys import ADMISSION, FLOW, HUB_AUTH
from swarmbinder.launch_flow import LaunchRequest
from swarmbinder.policy.admission import Admission
from swarmbinder.policy.ratelimit import RateLimiter

CLIENT_ID = "service-swarmbinder"
SECRET = "hub-api-token-for-tests"
SSE = {"Accept": "text/event-stream"}


class FakeHub:
    """The hub's OAuth provider and ``/hub/api/user``; ``logged_in`` is the hub session."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.logged_in: str | None = "alice"
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (user, PKCE challenge)
        self.tokens: dict[str, str] = {}  # token -> user
        self.user_calls = 0
        self.broken = False
        self.app = web.Application()
        self.app.router.add_get("/hub/api/oauth2/authorize", self.authorize)
        self.app.router.add_post("/hub/api/oauth2/token", self.token)
        self.app.router.add_get("/hub/api/user", self.user)

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != CLIENT_ID or q.get("redirect_uri") != self.redirect_uri:
            return web.Response(status=400, text="unknown client or redirect_uri")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="bad request")
        if self.logged_in is None:
            return web.Response(status=302, headers={"Location": "/hub/login"})
        code = secrets.token_urlsafe(8)
        self.codes[code] = (self.logged_in, q["code_challenge"])
        target = f"{self.redirect_uri}?code={code}&state={q['state']}"
        return web.Response(status=302, headers={"Location": target})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        granted = self.codes.pop(str(form.get("code")), None)
        if granted is None or form.get("redirect_uri") != self.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        user, challenge = granted
        digest = hashlib.sha256(str(form.get("code_verifier", "")).encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != challenge:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE failed"}, status=400
            )
        token = secrets.token_urlsafe(16)
        self.tokens[token] = user
        return web.json_response({"access_token": token, "token_type": "Bearer"})

    async def user(self, request: web.Request) -> web.Response:
        self.user_calls += 1
        if self.broken:
            return web.Response(status=500, text="boom")
        token = request.headers.get("Authorization", "").removeprefix("token ")
        name = self.tokens.get(token)
        if name is None:
            return web.json_response({"status": 403, "message": None}, status=403)
        return web.json_response({"kind": "user", "name": name, "admin": False, "groups": []})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake_hub() -> AsyncIterator[tuple[FakeHub, str]]:
    hub = FakeHub("http://binder.test/oauth_callback")
    async with TestServer(hub.app) as server:
        yield hub, str(server.make_url("/"))


@pytest.fixture
async def auth(fake_hub: tuple[FakeHub, str]) -> AsyncIterator[tuple[HubAuth, FakeHub, Clock]]:
    hub, url = fake_hub
    settings = HubAuthSettings(
        hub_url=url,
        hub_local_url=url,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        redirect_uri=hub.redirect_uri,
    )
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        yield HubAuth(settings, session, clock=clock), hub, clock


async def through_hub(authorize_url: str) -> dict[str, str]:
    """What the browser brings back to the callback: the query of the hub's redirect."""
    async with aiohttp.ClientSession() as browser:
        async with browser.get(authorize_url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# --------------------------------------------------------------------------- cookies


def test_signed_values_are_bound_to_name_secret_and_age() -> None:
    signer = CookieSigner(b"s" * 32)
    signed = signer.sign("login", "tok.en|with dots", now=100)
    assert signer.verify("login", signed, 60, now=130) == "tok.en|with dots"
    # another cookie's name, another secret, too old, or touched: nothing
    assert signer.verify("state", signed, 60, now=130) is None
    assert CookieSigner(b"t" * 32).verify("login", signed, 60, now=130) is None
    assert signer.verify("login", signed, 60, now=161) is None
    payload, issued, signature = signed.split(".")
    assert signer.verify("login", f"{payload}x.{issued}.{signature}", 60, now=130) is None
    assert signer.verify("login", f"{payload}.{int(issued) + 1}.{signature}", 60, now=130) is None
    for junk in (None, "", "a.b", "a.b.c.d", "a.notanumber.c"):
        assert signer.verify("login", junk, 60, now=130) is None
    with pytest.raises(ValueError):
        CookieSigner(b"short")


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/binder/v2/gh/a/b/main?x=1", "/binder/v2/gh/a/b/main?x=1"),
        ("/binder/", "/binder/"),
        ("/elsewhere/", "/binder/"),
        ("//evil.example/binder/", "/binder/"),
        ("https://evil.example/binder/", "/binder/"),
        ("/binder/\\evil", "/binder/"),
        ("/binder/ x", "/binder/"),
        (None, "/binder/"),
    ],
)
def test_next_url_stays_on_this_binder(next_url: str | None, expected: str) -> None:
    assert safe_next_url(next_url, "/binder/") == expected


# --------------------------------------------------------------------------- the flow


async def test_login_round_trip_names_the_hub_user(
    auth: tuple[HubAuth, FakeHub, Clock],
) -> None:
    hub_auth, hub, _ = auth
    start = hub_auth.start_login("/v2/gh/org/repo/main")
    query = parse_qs(urlsplit(start.authorize_url).query)
    assert start.authorize_url.startswith(hub_auth.settings.hub_url + "hub/api/oauth2/authorize?")
    assert query["client_id"] == [CLIENT_ID] and query["redirect_uri"] == [hub.redirect_uri]
    # the verifier stays with us; only its hash travels
    assert "verifier" not in start.authorize_url

    done = await hub_auth.finish_login(await through_hub(start.authorize_url), start.state_cookie)

    assert done.user.name == "alice"
    assert done.next_url == "/v2/gh/org/repo/main"
    assert (await hub_auth.user_for_cookie(done.login_cookie)).name == "alice"  # type: ignore[union-attr]
    assert (await hub_auth.require_user(done.login_cookie)).name == "alice"


async def test_callbacks_that_do_not_belong_to_this_browser_are_refused(
    auth: tuple[HubAuth, FakeHub, Clock],
) -> None:
    hub_auth, _, _ = auth
    mine = hub_auth.start_login("/")
    theirs = hub_auth.start_login("/")
    callback = await through_hub(mine.authorize_url)

    for cookie in (theirs.state_cookie, None, "forged"):
        with pytest.raises(OAuthStateMismatch) as caught:
            await hub_auth.finish_login(callback, cookie)
        assert caught.value.status_code == 403
        assert caught.value.user_message == "OAuth state does not match. Try logging in again."
    # The login cookie is no state cookie, even though both are signed with one secret.
    first = await hub_auth.finish_login(callback, mine.state_cookie)
    with pytest.raises(OAuthStateMismatch):
        await hub_auth.finish_login(callback, first.login_cookie)
    # A code works once.
    with pytest.raises(LoginRefused) as reused:
        await hub_auth.finish_login(callback, mine.state_cookie)
    assert reused.value.status_code == 403 and "invalid_grant" in reused.value.user_message


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"error": "access_denied", "error_description": "nope"}, "Error in oauth: nope"),
        ({"state": "s"}, "OAuth callback made without a code."),
        ({"code": "c"}, "OAuth state is missing. Try logging in again."),
    ],
)
async def test_malformed_callbacks_are_400(
    auth: tuple[HubAuth, FakeHub, Clock], query: dict[str, str], message: str
) -> None:
    hub_auth, _, _ = auth
    with pytest.raises(OAuthCallbackInvalid) as caught:
        await hub_auth.finish_login(query, hub_auth.start_login("/").state_cookie)
    assert caught.value.status_code == 400
    assert caught.value.user_message == message


async def test_a_wrong_client_secret_refuses_the_login(
    fake_hub: tuple[FakeHub, str],
) -> None:
    hub, url = fake_hub
    settings = HubAuthSettings(
        hub_url=url,
        hub_local_url=url,
        client_id=CLIENT_ID,
        client_secret="wrong",
        redirect_uri=hub.redirect_uri,
    )
    async with aiohttp.ClientSession() as session:
        hub_auth = HubAuth(settings, session)
        start = hub_auth.start_login("/")
        with pytest.raises(LoginRefused, match="invalid_client"):
            await hub_auth.finish_login(await through_hub(start.authorize_url), start.state_cookie)


async def test_users_are_cached_and_a_revoked_token_ends_the_login(
    auth: tuple[HubAuth, FakeHub, Clock],
) -> None:
    hub_auth, hub, clock = auth
    start = hub_auth.start_login("/")
    done = await hub_auth.finish_login(await through_hub(start.authorize_url), start.state_cookie)
    calls = hub.user_calls
    for _ in range(5):
        assert await hub_auth.user_for_cookie(done.login_cookie) is not None
    assert hub.user_calls == calls  # within user_cache_seconds: not asked again

    hub.tokens.clear()  # the user logged out at the hub, or an admin revoked the token
    clock.now += hub_auth.settings.user_cache_seconds + 1
    assert await hub_auth.user_for_cookie(done.login_cookie) is None
    with pytest.raises(NotLoggedIn) as caught:
        await hub_auth.require_user(done.login_cookie)
    assert caught.value.status_code == 403
    assert await hub_auth.user_for_cookie(None) is None
    assert await hub_auth.user_for_cookie("not-signed") is None


async def test_a_hub_that_fails_or_is_gone_is_503(
    auth: tuple[HubAuth, FakeHub, Clock],
) -> None:
    hub_auth, hub, _ = auth
    start = hub_auth.start_login("/")
    callback = await through_hub(start.authorize_url)
    hub.broken = True
    with pytest.raises(HubAuthUnavailable) as caught:
        await hub_auth.finish_login(callback, start.state_cookie)
    assert caught.value.status_code == 503

    settings = HubAuthSettings(
        hub_url="http://127.0.0.1:9/",
        hub_local_url="http://127.0.0.1:9/",  # discard port: nothing listens
        client_id=CLIENT_ID,
        client_secret=SECRET,
        redirect_uri=hub.redirect_uri,
    )
    async with aiohttp.ClientSession() as session:
        gone = HubAuth(settings, session, timeout=2)
        with pytest.raises(HubAuthUnavailable):
            await gone.user_for_token("anything")


def test_settings_from_config_follow_binderhub_defaults() -> None:
    config = load_config(
        env={},
        overrides={
            "auth_enabled": True,
            "hub_url": "https://hub.example.org",
            "hub_url_local": "http://jupyterhub:8000",
            "hub_api_token": "tok",
            "base_url": "/binder/",
            "cookie_secret": "ab" * 32,
        },
    )
    settings = HubAuthSettings.from_config(config)
    assert settings.redirect_uri == "/binder/oauth_callback"
    assert settings.client_secret == "tok"  # JupyterHub's client secret is the api_token
    assert settings.client_id == "service-swarmbinder"
    assert settings.hub_local_url == "http://jupyterhub:8000/"
    assert settings.cookie_secret == bytes.fromhex("ab" * 32)


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"auth_enabled": True, "hub_api_token": "t"}, "hub_url"),
        ({"auth_enabled": True, "hub_url": "http://hub/"}, "oauth_client_secret"),
        ({"cookie_secret": "abcd"}, "cookie_secret"),
        ({"cookie_secret": "not hex"}, "cookie_secret"),
    ],
)
def test_auth_settings_that_cannot_work_are_config_errors(
    overrides: dict[str, object], option: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides=overrides)
    assert caught.value.option == option


# --------------------------------------------------------------------------- over HTTP


class RecordingFlow:
    def __init__(self) -> None:
        self.requests: list[LaunchRequest] = []

    async def run(
        self, request: LaunchRequest, direct: object = None
    ) -> AsyncGenerator[BuildEvent, None]:
        self.requests.append(request)
        yield BuildEvent.failed("stop here", 500)


@pytest.fixture
async def binder(
    fake_hub: tuple[FakeHub, str],
) -> AsyncIterator[tuple[TestClient[Any, Any], FakeHub, RecordingFlow]]:
    async with binder_with(fake_hub) as made:
        yield made


@contextlib.asynccontextmanager
async def binder_with(
    fake_hub: tuple[FakeHub, str], **overrides: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], FakeHub, RecordingFlow]]:
    hub, url = fake_hub
    hub.redirect_uri = "/oauth_callback"  # the default: a path on the hub's host
    config = load_config(
        env={},
        overrides={
            "auth_enabled": True,
            "hub_url": url,
            "hub_api_token": SECRET,
            "rate_limit": 1,
            "build_token_check_origin": False,
            **overrides,
        },
    )
    app = create_app(config)
    flow = RecordingFlow()
    app[FLOW] = flow  # type: ignore[misc]

    async def admission(app: web.Application) -> None:
        # as services() makes it, without the engine and hub behind it
        app[ADMISSION] = Admission(
            client_ip=lambda peer, headers: peer,
            check_network=lambda ip: None,
            rate_limit=RateLimiter(1, 3600).check,
            authenticate=authenticator(app[HUB_AUTH]),
        )

    app.on_startup.append(admission)
    async with TestClient(TestServer(app)) as client:
        yield client, hub, flow


async def log_in(client: TestClient[Any, Any], path: str) -> aiohttp.ClientResponse:
    """Open ``path`` as a browser without a login: off to the hub and back."""
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302
    callback = await through_hub(resp.headers["Location"])
    return await client.get("/oauth_callback", params=callback, allow_redirects=False)


async def build_events(client: TestClient[Any, Any], path: str) -> tuple[int, list[Any]]:
    async with client.get(path, headers=SSE) as resp:
        return resp.status, list(parse_sse(await resp.read()))


async def test_pages_send_a_browser_to_log_in_and_back(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, hub, _ = binder
    page = "/v2/gh/org/repo/main?urlpath=lab"
    resp = await client.get(page, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith(str(client.app[HUB_AUTH].settings.hub_url))
    state = resp.cookies[f"{CLIENT_ID}-oauth-state"]
    assert state["httponly"] and state["path"] == "/" and state["samesite"] == "Lax"

    back = await client.get(
        "/oauth_callback",
        params=await through_hub(resp.headers["Location"]),
        allow_redirects=False,
    )
    assert back.status == 302 and back.headers["Location"] == page
    assert back.cookies[CLIENT_ID].value and back.cookies[CLIENT_ID]["httponly"]
    assert back.cookies[f"{CLIENT_ID}-oauth-state"].value == ""  # consumed

    loading = await client.get(page)
    assert loading.status == 200 and "text/html" in loading.headers["Content-Type"]
    # public pages never asked for a login
    client.session.cookie_jar.clear()
    assert (await client.get("/about")).status == 200
    assert (await client.get("/badge.svg")).status == 200


async def test_build_needs_a_login_and_launches_for_that_user(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, _, flow = binder
    status, events = await build_events(client, "/build/gh/org/repo/main")
    assert status == 403
    assert events[0]["phase"] == "failed" and events[0]["status_code"] == 403
    assert "not logged in" in events[0]["message"]
    assert flow.requests == []

    assert (await log_in(client, "/")).status == 302
    # rate_limit is 1, and a logged-in user is not rate limited (BinderHub's rule)
    for _ in range(3):
        status, events = await build_events(client, "/build/gh/org/repo/main")
        assert status == 200 and events[-1]["message"] == "stop here\n"
    assert [r.username for r in flow.requests] == ["alice"] * 3


async def test_a_stale_callback_is_refused_unless_already_logged_in(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, _, _ = binder
    stale = await client.get("/oauth_callback?code=c&state=s", allow_redirects=False)
    assert stale.status == 403
    assert "OAuth state does not match" in await stale.text()

    await log_in(client, "/")
    again = await client.get("/oauth_callback?code=c&state=s", allow_redirects=False)
    assert again.status == 302 and again.headers["Location"] == "/"


async def test_a_forged_login_cookie_is_sent_to_log_in(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, _, _ = binder
    forged = CookieSigner(b"x" * 32).sign(CLIENT_ID, "stolen-token")
    client.session.cookie_jar.update_cookies({CLIENT_ID: forged})
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and "/hub/api/oauth2/authorize" in resp.headers["Location"]
    status, events = await build_events(client, "/build/gh/org/repo/main")
    assert status == 403 and events[0]["phase"] == "failed"


async def test_a_hub_that_fails_is_503_on_pages_and_build(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, hub, _ = binder
    await log_in(client, "/")
    client.app[HUB_AUTH]._users.clear()  # the cached user would hide the outage
    hub.broken = True
    page = await client.get("/")
    assert page.status == 503 and "not answering" in await page.text()
    status, events = await build_events(client, "/build/gh/org/repo/main")
    assert status == 503 and events[0]["status_code"] == 503


async def test_logout_forgets_the_login_and_ends_the_hub_session(
    binder: tuple[TestClient[Any, Any], FakeHub, RecordingFlow],
) -> None:
    client, _, _ = binder
    await log_in(client, "/")
    assert (await client.get("/", allow_redirects=False)).status == 200
    out = await client.get("/logout", allow_redirects=False)
    assert out.status == 302 and out.headers["Location"].endswith("/hub/logout")
    assert (await client.get("/", allow_redirects=False)).status == 302


@pytest.mark.parametrize(
    ("trusted", "forwarded", "secure"),
    [
        (["127.0.0.1"], "https", True),  # behind the TLS proxy: the browser used HTTPS
        (["127.0.0.1"], "http", False),
        ([], "https", False),  # any client could write the header: not believed
        (["10.9.8.0/24"], "https", False),  # the peer is not the trusted proxy
    ],
)
async def test_login_cookies_are_secure_when_a_trusted_proxy_says_https(
    fake_hub: tuple[FakeHub, str], trusted: list[str], forwarded: str, secure: bool
) -> None:
    async with binder_with(fake_hub, trusted_proxies=trusted) as (client, _, _):
        headers = {"X-Forwarded-Proto": forwarded}
        resp = await client.get("/v2/gh/org/repo/main", headers=headers, allow_redirects=False)
        assert resp.status == 302
        cookies = resp.headers.getall("Set-Cookie")
        assert cookies
        for cookie in cookies:
            assert ("; Secure" in cookie) is secure, cookie
