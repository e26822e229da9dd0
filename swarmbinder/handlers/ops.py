"""Operational endpoints: /versions and /health."""

from __future__ import annotations

from aiohttp import web

from .. import __version__
from ..keys import CONFIG


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
    """BinderHub's /health shape. No checks are wired in yet: ``ok`` only means "it answers"."""
    return web.json_response({"ok": True, "checks": []})
