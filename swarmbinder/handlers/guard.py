"""``ban_networks`` for every request, as BinderHub's ``BaseHandler.prepare`` applies it.

BinderHub checks the client's address against the banned networks before any handler runs,
for pages, badges, static files and the API alike; only ``/health`` and ``/versions`` skip the
check (federation members and load balancers poll them from anywhere). Here the admin API
skips it too: a ban must never lock out the admins who can lift it, and that API has its own
token.

The refusal is shaped for whoever asked: an event-stream ``failed`` event for ``/build`` (an
EventSource client never sees a status code), JSON for ``/api/``, and the error page for
everything else. The client address is found as for ``/build`` (``X-Forwarded-For`` only from
``trusted_proxies``), so a banned client cannot talk its way past the guard with a header.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..events import SSE_HEADERS, BuildEvent, sse_frame
from ..keys import BANS, PAGE_SITE
from ..policy.bans import NetworkBanned
from ..policy.clientip import ClientIP


def exempt(path: str, base_url: str) -> bool:
    """Paths the network bans never apply to."""
    if path in (f"{base_url}health", f"{base_url}versions"):
        return True
    return path == f"{base_url}api/admin" or path.startswith(f"{base_url}api/admin/")


def refusal(request: web.Request, base_url: str, error: NetworkBanned) -> web.Response:
    """The 403 for ``request``, in the form its client reads."""
    status = error.status_code
    message = error.user_message
    path = request.path
    if path.startswith(f"{base_url}build/"):
        body = sse_frame(BuildEvent.failed(message, status))
        return web.Response(status=status, body=body, headers=SSE_HEADERS)
    if path.startswith(f"{base_url}api/"):
        return web.json_response({"status": status, "message": message}, status=status)
    site = request.app.get(PAGE_SITE)
    if site is None:
        return web.Response(status=status, text=message + "\n")
    html = site.render(
        "error.html",
        status_code=status,
        reason=HTTPStatus(status).phrase,
        message=message,
    )
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")


def network_bans(client_ip: ClientIP, base_url: str = "/") -> Middleware:
    """A middleware refusing requests from banned networks (the app's ``BANS``).

    The ban list is loaded from the store while the app starts; a request served before
    that (or by an app wired without one, as handler tests do) is let through.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        bans = request.app.get(BANS)
        if bans is not None and not exempt(request.path, base_url):
            ip = client_ip(request.remote, request.headers)
            try:
                bans.check_network(ip)
            except NetworkBanned as error:
                return refusal(request, base_url, error)
        return await handler(request)

    return guard
