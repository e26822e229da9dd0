"""Builds the aiohttp application from a Config: routes, shared state, background tasks."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .handlers import build, ops
from .keys import CONFIG


def create_app(config: Config) -> web.Application:
    """The application for ``config``; wiring only, no behaviour of its own."""
    app = web.Application()
    app[CONFIG] = config

    base = config.server.base_url
    app.router.add_get(f"{base}versions", ops.versions)
    app.router.add_get(f"{base}health", ops.health)

    add_build_routes(app)

    # Background tasks (build watcher, build_cleanup_interval sweeper, event readers) go here:
    # one asynccontextmanager each, appended to app.cleanup_ctx, that creates the task, stores
    # it under an AppKey from keys.py, and cancels and awaits it after its yield.
    return app


def add_build_routes(app: web.Application) -> None:
    """``/build/<provider>/<spec>``; the handler needs FLOW and ADMISSION on the app."""
    base = app[CONFIG].server.base_url
    app.router.add_get(f"{base}build/{{provider}}/{{spec:.+}}", build.build)
