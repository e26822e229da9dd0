"""Operational endpoints: /versions, /health and /metrics, and CORS for the API.

``/health`` and ``/versions`` must keep answering when the engine, registry or hub do not
(degraded mode), and, as in BinderHub, are not subject to network bans (federation members poll
each other's health).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..cors import check_allow_origin, cors_applies, cors_headers
from ..keys import CONFIG, HEALTH, METRICS


async def versions(request: web.Request) -> web.Response:
    """What is running, in BinderHub's /versions shape (``builder`` kept for old clients)."""
    build_image = request.app[CONFIG].builds.build_image
    body = {
        "builder_info": {"build_image": build_image},
        "builder": build_image,
        "binderhub": f"swarmbinder {__version__}",
    }
    # BinderHub lets any origin read /versions (federations poll it); so do we.
    return web.json_response(body, headers={"Access-Control-Allow-Origin": "*"})


async def health(request: web.Request) -> web.Response:
    """BinderHub's /health: 200 when every check is ok, 503 naming what is down."""
    checker = request.app.get(HEALTH)
    if checker is None:
        # Nothing to check is wired in: answering at all is all we can say.
        return web.json_response({"ok": True, "checks": []})
    report = await checker.check()
    return web.json_response(report.to_json(), status=report.status_code)


async def metrics(request: web.Request) -> web.Response:
    """The app's metrics in the Prometheus (or OpenMetrics, if asked for) text format."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


Signal = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def cors_signal(allow_origin: str, base_url: str = "/") -> Signal:
    """An ``app.on_response_prepare`` callback adding the CORS headers to API responses.

    A signal rather than a middleware: ``/build`` streams, and a streamed response's headers
    are sent before its handler returns to any middleware.
    """
    headers = cors_headers(check_allow_origin(allow_origin))

    async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        if cors_applies(request.path, base_url):
            for name, value in headers.items():
                response.headers.setdefault(name, value)

    return add_cors


def cors_preflight(allow_origin: str, base_url: str = "/") -> Middleware:
    """A middleware answering ``OPTIONS`` on the API with an empty 200, as BinderHub does."""
    headers = cors_headers(check_allow_origin(allow_origin))

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and cors_applies(request.path, base_url):
            return web.Response(status=200, headers=headers)
        return await handler(request)

    return preflight
