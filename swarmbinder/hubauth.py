"""Logging users in through JupyterHub (OAuth 2, as a hub service), for ``auth_enabled``.

The flow is JupyterHub's ``HubOAuth`` one, without tornado::

    start_login(next_url)    authorize URL at the hub (client id, redirect URI, state, PKCE)
                             plus a signed state cookie binding that state to this browser
    (the browser logs in at the hub, which redirects to our oauth_callback with code and state)
    finish_login(...)        state checked against the cookie, the code exchanged at
                             /hub/api/oauth2/token, the user looked up at /hub/api/user;
                             the access token goes into a signed login cookie
    user_for_cookie(cookie)  the logged-in user, asked of the hub at most every
                             ``user_cache_seconds`` per token (so a revoked token stops working)

Unlike HubOAuth, nothing is kept in memory between the two halves of the login: the state
cookie is signed and carries the next URL and the PKCE verifier, so any replica of swarmbinder
(sharing ``cookie_secret``) can finish a login another one started.

Every failure is a :class:`HubAuthError` with the status a browser should see: a login that
cannot be finished is the user's to retry (4xx), a hub that does not answer is a 503.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from .config import Config
from .errors import SwarmbinderError

#: How long a login may take between leaving for the hub and coming back (HubOAuth's 600 s).
STATE_MAX_AGE = 600
#: How long a login cookie is accepted; the hub's OAuth tokens live 14 days by default, and the
#: hub is asked again about the token every ``user_cache_seconds`` anyway.
LOGIN_MAX_AGE = 14 * 24 * 3600
#: HubOAuth's ``cache_max_age``: how long a token's user is taken on trust.
USER_CACHE_SECONDS = 300
#: Cached users kept at most; a full cache drops the expired ones, then the oldest.
USER_CACHE_SIZE = 10_000

NOT_LOGGED_IN_MESSAGE = "You are not logged in. Log in to this Binder and try again."
HUB_DOWN_MESSAGE = "The JupyterHub that logs users in is not answering right now. Try again soon."


class HubAuthError(SwarmbinderError, status=403):
    """A login could not be finished or checked; ``user_message`` says what to do."""


class OAuthCallbackInvalid(HubAuthError, status=400):
    """The hub (or someone) called our callback without what a callback must carry."""


class OAuthStateMismatch(HubAuthError):
    """The callback's state is not the one this browser set out with (stale, forged, replayed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"OAuth state: {detail}",
            user_message="OAuth state does not match. Try logging in again.",
        )


class LoginRefused(HubAuthError):
    """The hub refused to exchange the code, or the token names no user."""


class NotLoggedIn(HubAuthError):
    """A request that needs a logged-in user came without one."""

    def __init__(self) -> None:
        super().__init__("no logged-in user", user_message=NOT_LOGGED_IN_MESSAGE)


class HubAuthUnavailable(HubAuthError, status=503):
    """The hub did not answer (or answered nonsense) while logging in or checking a login."""

    def __init__(self, what: str, cause: object) -> None:
        super().__init__(f"{what}: {cause}", user_message=HUB_DOWN_MESSAGE)


# --------------------------------------------------------------------------- cookie signing


class CookieSigner:
    """HMAC-SHA256 signed cookie values: ``<base64url value>.<unix time>.<hex signature>``.

    The cookie's name is signed with its value, so a value cannot be moved to another cookie
    (a state cookie is no login cookie). Values are signed, not encrypted: they hold nothing
    the browser may not see (its own token, its own next URL).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a cookie secret needs at least 16 bytes")
        self._secret = secret

    def _signature(self, name: str, payload: str, issued: int) -> str:
        message = f"{name}|{payload}|{issued}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, name: str, value: str, *, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        payload = base64.urlsafe_b64encode(value.encode()).decode("ascii").rstrip("=")
        return f"{payload}.{issued}.{self._signature(name, payload, issued)}"

    def verify(
        self, name: str, signed: str | None, max_age: float, *, now: float | None = None
    ) -> str | None:
        """The value, or None if ``signed`` is missing, tampered with, or older than ``max_age``."""
        if not signed:
            return None
        parts = signed.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        payload, issued_text, signature = parts
        issued = int(issued_text)
        if not hmac.compare_digest(signature, self._signature(name, payload, issued)):
            return None
        current = time.time() if now is None else now
        if not issued - 60 <= current <= issued + max_age:  # a minute of clock skew
            return None
        try:
            return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None


# --------------------------------------------------------------------------- the flow


@dataclass(frozen=True)
class HubIdentity:
    """Who a hub token belongs to (``GET /hub/api/user``)."""

    name: str
    kind: str = "user"
    admin: bool = False
    groups: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> HubIdentity:
        return cls(
            name=str(raw.get("name") or ""),
            kind=str(raw.get("kind") or "user"),
            admin=bool(raw.get("admin")),
            groups=tuple(str(g) for g in raw.get("groups") or ()),
        )


@dataclass(frozen=True)
class LoginStart:
    """Where to send the browser, and the state cookie to set on the way."""

    authorize_url: str
    state_cookie: str


@dataclass(frozen=True)
class LoginDone:
    user: HubIdentity
    #: The signed login cookie (holds the hub's access token).
    login_cookie: str
    #: Where the browser was going when it was sent to log in.
    next_url: str


@dataclass(frozen=True)
class HubAuthSettings:
    """What the OAuth flow needs; :meth:`from_config` reads it from ``Config.hub``."""

    #: The hub as browsers reach it (the authorize URL is under it).
    hub_url: str
    #: The hub as swarmbinder reaches it (token exchange and user lookups).
    hub_local_url: str
    client_id: str
    client_secret: str
    #: Our /oauth_callback as registered with the hub (a full URL, or a path on the hub's host).
    redirect_uri: str
    #: swarmbinder's base_url: cookies are scoped to it, and next URLs must stay under it.
    base_url: str = "/"
    cookie_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    user_cache_seconds: float = USER_CACHE_SECONDS

    @classmethod
    def from_config(cls, config: Config) -> HubAuthSettings:
        hub = config.hub
        base_url = config.server.base_url
        return cls(
            hub_url=hub.hub_url,
            hub_local_url=hub.local_url,
            client_id=hub.oauth_client_id,
            # JupyterHub's client secret for a service is the service's API token
            client_secret=hub.oauth_client_secret or hub.hub_api_token,
            redirect_uri=hub.oauth_redirect_uri or f"{base_url}oauth_callback",
            base_url=base_url,
            cookie_secret=(
                bytes.fromhex(hub.cookie_secret) if hub.cookie_secret else secrets.token_bytes(32)
            ),
        )

    @property
    def login_cookie_name(self) -> str:
        # HubOAuth's choice: the client id, so two Binders on one host keep apart
        return self.client_id

    @property
    def state_cookie_name(self) -> str:
        return f"{self.client_id}-oauth-state"


def safe_next_url(next_url: str | None, base_url: str) -> str:
    """``next_url`` if it is a path under ``base_url`` on our own host, else ``base_url``.

    Anything with a scheme or host (``//evil.example``, ``https://...``, ``/\\evil``) is
    refused: after a login the browser must not be sent off-site.
    """
    if not next_url or "\\" in next_url or any(ch.isspace() for ch in next_url):
        return base_url
    parts = urlsplit(next_url)
    if parts.scheme or parts.netloc or next_url.startswith("//"):
        return base_url
    if not next_url.startswith(base_url):
        return base_url
    return next_url


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _hub_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error_description", "message", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return body.decode("utf-8", "replace").strip()[:200] or "(no details)"


class HubAuth:
    """The OAuth client of one swarmbinder process. ``session`` is shared, not closed here."""

    def __init__(
        self,
        settings: HubAuthSettings,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10,
        clock: Any = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session = session
        self._signer = CookieSigner(settings.cookie_secret)
        self._api = settings.hub_local_url.rstrip("/") + "/hub/api"
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5))
        self._clock = clock
        #: sha256(token) -> (user, monotonic expiry); hashed so a heap dump holds no tokens
        self._users: dict[str, tuple[HubIdentity, float]] = {}

    # -- login ------------------------------------------------------------------------

    def start_login(self, next_url: str | None) -> LoginStart:
        s = self.settings
        state = secrets.token_urlsafe(16)
        verifier, challenge = _pkce_pair()
        cookie_value = json.dumps(
            {"state": state, "next": safe_next_url(next_url, s.base_url), "verifier": verifier}
        )
        query = urlencode(
            {
                "client_id": s.client_id,
                "redirect_uri": s.redirect_uri,
                "response_type": "code",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return LoginStart(
            authorize_url=f"{s.hub_url.rstrip('/')}/hub/api/oauth2/authorize?{query}",
            state_cookie=self._signer.sign(s.state_cookie_name, cookie_value),
        )

    def pending_next_url(self, state_cookie: str | None) -> str | None:
        """The next URL of a login this browser started, if its state cookie is valid."""
        pending = self._pending(state_cookie)
        return pending["next"] if pending else None

    def _pending(self, state_cookie: str | None) -> dict[str, str] | None:
        raw = self._signer.verify(self.settings.state_cookie_name, state_cookie, STATE_MAX_AGE)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), str) for key in ("state", "next", "verifier")
        ):
            return None
        return {key: data[key] for key in ("state", "next", "verifier")}

    async def finish_login(self, query: Mapping[str, str], state_cookie: str | None) -> LoginDone:
        """The callback's half: check state, exchange the code, look the user up."""
        if query.get("error"):
            detail = query.get("error_description") or query["error"]
            raise OAuthCallbackInvalid(
                f"hub reported an OAuth error: {detail}", user_message=f"Error in oauth: {detail}"
            )
        code = query.get("code")
        if not code:
            raise OAuthCallbackInvalid(
                "callback without a code", user_message="OAuth callback made without a code."
            )
        state = query.get("state")
        if not state:
            raise OAuthCallbackInvalid(
                "callback without a state",
                user_message="OAuth state is missing. Try logging in again.",
            )
        pending = self._pending(state_cookie)
        if pending is None:
            raise OAuthStateMismatch("no valid state cookie (expired, or another browser)")
        if not hmac.compare_digest(pending["state"], state):
            raise OAuthStateMismatch("the state differs from the state cookie's")
        token = await self.token_for_code(code, pending["verifier"])
        user = await self.user_for_token(token)
        if user is None:
            raise LoginRefused(
                "the hub does not know the token it just issued",
                user_message="The hub did not confirm who you are. Try logging in again.",
            )
        return LoginDone(
            user=user,
            login_cookie=self._signer.sign(self.settings.login_cookie_name, token),
            next_url=pending["next"],
        )

    async def token_for_code(self, code: str, code_verifier: str | None = None) -> str:
        s = self.settings
        form = {
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": s.redirect_uri,
        }
        if code_verifier:
            form["code_verifier"] = code_verifier
        status, body = await self._call("POST", "/oauth2/token", data=form)
        if status >= 500:
            raise HubAuthUnavailable("POST /oauth2/token", f"the hub answered {status}")
        if status >= 400:
            detail = _hub_error(body)
            # invalid_client is our misconfiguration, not the user's: say so in the log
            raise LoginRefused(
                f"the hub refused the code exchange ({status}): {detail}",
                user_message=f"The hub refused the login ({detail}). Try logging in again.",
            )
        try:
            token = json.loads(body)["access_token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise HubAuthUnavailable("POST /oauth2/token", "no access_token in the answer") from exc
        if not isinstance(token, str) or not token:
            raise HubAuthUnavailable("POST /oauth2/token", "an empty access_token")
        return token

    # -- who is it ----------------------------------------------------------------------

    async def user_for_token(self, token: str) -> HubIdentity | None:
        """The token's owner, None if the hub does not accept the token (cached a while)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._users.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        status, body = await self._call("GET", "/user", token=token)
        if status in (401, 403, 404):
            self._users.pop(key, None)
            return None
        if status >= 400:
            raise HubAuthUnavailable("GET /user", f"the hub answered {status}")
        try:
            user = HubIdentity.from_api(json.loads(body))
        except (ValueError, AttributeError) as exc:
            raise HubAuthUnavailable("GET /user", "not a user model") from exc
        if not user.name:
            return None
        self._remember(key, user, now)
        return user

    def _remember(self, key: str, user: HubIdentity, now: float) -> None:
        if len(self._users) >= USER_CACHE_SIZE:
            for stale in [k for k, (_, expiry) in self._users.items() if expiry <= now]:
                del self._users[stale]
            while len(self._users) >= USER_CACHE_SIZE:
                del self._users[next(iter(self._users))]
        self._users[key] = (user, now + self.settings.user_cache_seconds)

    async def user_for_cookie(self, login_cookie: str | None) -> HubIdentity | None:
        """The user of a login cookie; None for no cookie, a forged one, or a dead token."""
        token = self._signer.verify(self.settings.login_cookie_name, login_cookie, LOGIN_MAX_AGE)
        if not token:
            return None
        return await self.user_for_token(token)

    async def require_user(self, login_cookie: str | None) -> HubIdentity:
        """:meth:`user_for_cookie` for requests that need a user: NotLoggedIn without one."""
        user = await self.user_for_cookie(login_cookie)
        if user is None or user.kind != "user":
            raise NotLoggedIn()
        return user

    # -- transport ----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        data: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"token {token}"
        try:
            async with self._session.request(
                method, self._api + path, data=data, headers=headers, timeout=self._timeout
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HubAuthUnavailable(f"{method} {path}", exc or type(exc).__name__) from exc
