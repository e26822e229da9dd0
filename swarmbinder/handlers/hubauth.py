"""JupyterHub login for ``auth_enabled``: the OAuth callback, the page guard, /build's check.

Routes (with ``auth_enabled`` only)::

    GET <path of oauth_redirect_uri>   finish the login; back to the page that sent us
    GET /logout                        forget the login here, then log out at the hub

:func:`login_required` guards the pages (home and loading page, as BinderHub's
``@authenticated``): a browser without a login is sent to the hub's authorize URL and comes
back through the callback. ``/build`` cannot redirect (EventSource does not follow a login
page), so :func:`authenticator` plugs into :class:`~swarmbinder.policy.admission.Admission` and
refuses a request without a login with 403, which the build handler turns into a ``failed``
event as BinderHub does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..hubauth import (
    LOGIN_MAX_AGE,
    STATE_MAX_AGE,
    HubAuth,
    HubAuthError,
    HubAuthSettings,
    OAuthStateMismatch,
)
from ..keys import CONFIG, HUB_AUTH
from .client import client_scheme

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_hub_auth(app: web.Application) -> None:
    """Add the login routes, and :data:`HUB_AUTH` (with its own HTTP session) while the app
    runs. Call only with ``auth_enabled``, before the app's other cleanup contexts."""
    config = app[CONFIG]
    # Made once here: without a configured cookie_secret this draws the process's random one.
    settings = HubAuthSettings.from_config(config)
    base = config.server.base_url
    # BinderHub's rule: the route is the path of the redirect URI, wherever the hub sends it.
    callback = urlsplit(settings.redirect_uri).path or f"{base}oauth_callback"
    app.router.add_get(callback, oauth_callback)
    app.router.add_get(f"{base}logout", logout)

    async def hub_auth(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[HUB_AUTH] = HubAuth(settings, session)
            yield

    app.cleanup_ctx.append(hub_auth)


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=request.app[HUB_AUTH].settings.base_url,
        httponly=True,
        # Lax: the hub sends the browser back with a top-level GET, which Lax cookies survive
        samesite="Lax",
        # Behind the TLS proxy the connection is plain HTTP; the proxy says what the browser used
        secure=client_scheme(request) == "https",
    )


def _clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=request.app[HUB_AUTH].settings.base_url)


def _error(error: HubAuthError) -> web.Response:
    status = error.status_code
    if status >= 500:
        log.warning("login: %s", error)
    else:
        log.info("login refused: %s", error)
    return web.Response(status=status, text=error.user_message + "\n")


def _found(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


async def oauth_callback(request: web.Request) -> web.StreamResponse:
    auth = request.app[HUB_AUTH]
    settings = auth.settings
    state_cookie = request.cookies.get(settings.state_cookie_name)
    try:
        done = await auth.finish_login(request.query, state_cookie)
    except OAuthStateMismatch as error:
        # HubOAuth's rule: a stale callback (say, the back button) for a browser that is
        # logged in already is not worth an error page; carry on to where it was going.
        try:
            user = await auth.user_for_cookie(request.cookies.get(settings.login_cookie_name))
        except HubAuthError:
            user = None
        if user is None:
            return _error(error)
        response = _found(auth.pending_next_url(state_cookie) or settings.base_url)
        _clear_cookie(request, response, settings.state_cookie_name)
        return response
    except HubAuthError as error:
        return _error(error)
    log.info("logged in %s", done.user.name)
    response = _found(done.next_url)
    _set_cookie(request, response, settings.login_cookie_name, done.login_cookie, LOGIN_MAX_AGE)
    _clear_cookie(request, response, settings.state_cookie_name)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Forget the login cookie and send the browser to the hub's logout (which ends the hub
    session that would otherwise log it straight back in)."""
    settings = request.app[HUB_AUTH].settings
    response = _found(f"{settings.hub_url.rstrip('/')}/hub/logout")
    _clear_cookie(request, response, settings.login_cookie_name)
    return response


def login_required(handler: _Handler) -> _Handler:
    """Serve ``handler`` to logged-in browsers; send the others to log in at the hub first."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        auth = request.app[HUB_AUTH]
        try:
            user = await auth.user_for_cookie(request.cookies.get(auth.settings.login_cookie_name))
        except HubAuthError as error:
            return _error(error)
        if user is not None and user.kind == "user":
            return await handler(request)
        start = auth.start_login(request.raw_path)
        response = _found(start.authorize_url)
        _set_cookie(
            request, response, auth.settings.state_cookie_name, start.state_cookie, STATE_MAX_AGE
        )
        return response

    return guarded


def _cookie(headers: Mapping[str, str], name: str) -> str | None:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(headers.get("Cookie", ""))
    except CookieError:
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else None


def authenticator(auth: HubAuth) -> Callable[[Mapping[str, str]], Awaitable[str]]:
    """Admission's ``authenticate`` hook: the logged-in user's name from the request's login
    cookie; NotLoggedIn (403) without one, HubAuthUnavailable (503) if the hub is down."""

    async def authenticate(headers: Mapping[str, str]) -> str:
        user = await auth.require_user(_cookie(headers, auth.settings.login_cookie_name))
        return user.name

    return authenticate
