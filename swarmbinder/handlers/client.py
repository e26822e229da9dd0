"""Who a request's client is, as far as ``trusted_proxies`` vouch for it: the scheme it used.

The address is :class:`~swarmbinder.policy.clientip.ClientIP`'s (bans, rate limits); this is
the handlers' side of the same rule for the scheme: behind the TLS proxy every connection is
plain HTTP, and only a trusted proxy's ``X-Forwarded-Proto`` says the browser used HTTPS.
"""

from __future__ import annotations

from aiohttp import web

from ..keys import CLIENT_IP, CONFIG
from ..policy.clientip import ClientIP


def client_scheme(request: web.Request) -> str:
    """``https`` when the client reached us over HTTPS (directly or through a trusted proxy)."""
    client_ip = request.app.get(CLIENT_IP) or ClientIP(request.app[CONFIG].server.trusted_proxies)
    return client_ip.scheme(request.remote, request.headers, request.scheme)
