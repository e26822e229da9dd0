"""``/api/admin/``: the admin console's API, for the TUI and for scripts.

Every route needs ``Authorization: Bearer <admin_token>`` (or ``token <admin_token>``, checked
by :mod:`~swarmbinder.policy.admintoken`). No header (or another scheme) is 401, a wrong token
403; the token is never logged. With no ``admin_token`` configured the whole API answers 404 with
a message saying how to turn it on: there is nothing to retry, so it is not a 503. CORS never
applies here (see :mod:`swarmbinder.cors`).

The :class:`~swarmbinder.admin.AdminService` behind the routes is made by the app's wiring (or
put on the app by a test); these routes run its live feed while the app runs.

Resources (JSON): ``GET builds``, ``builds/{id}`` (with its log; ``?tail=N``), ``servers``,
``nodes``, ``prebuilds`` (prebuild jobs on the swarm), ``pools`` (the warm pools: size, ready,
starting, handed out in the last hour, building, last error; empty without ``warm_pools``),
``bans``, ``quotas``, ``audit`` (``?limit=N``), ``snapshot`` (all of them at once),
and ``events``, the live stream (``text/event-stream``: a ``snapshot`` event, then live
events, see :mod:`swarmbinder.admin`; ``:keepalive`` comments in between).

Actions: ``DELETE builds/{id}`` (cancel), ``DELETE servers/{user}`` (``?server_name=``),
``DELETE prebuilds/{name}`` (remove a prebuild job, running or finished, and its secret),
``POST bans`` ``{"kind": "spec"|"network", "pattern", "reason"}``, ``DELETE bans/{id}``,
``POST quotas`` ``{"pattern", "quota", "expires_in"|"expires_at"}`` (a per-repo override),
``DELETE quotas?pattern=...``, ``PUT quotas/pod`` ``{"quota", "expires_in"|"expires_at"}``,
``DELETE quotas/pod``. Bad input is 400 with ``{"message": ...}`` (a spec ban's also has
``help``: which forms a spec pattern is matched against, also given as ``spec_patterns`` by
``GET bans`` and ``POST bans``; see :mod:`swarmbinder.policy.canonical`). Changes are audited under
the actor ``admin``, or ``admin:<name>`` when the request says who it is in
``X-Swarmbinder-Actor``.

Every answer and stream event is scrubbed of the known secrets (the app's ``SCRUBBER``) as it
is serialised: build logs and failure reasons are a repository's words, and a hostile one may
have been made to print a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import SwarmbinderError
from ..events import SSE_HEADERS
from ..keys import ADMIN, CONFIG, SCRUBBER
from ..policy.admintoken import AdminAccess, check_admin_token
from ..policy.bans import InvalidBan
from ..policy.canonical import PATTERN_FORMS_HELP
from ..scrub import DEFAULT_SCRUBBER, Scrubber

log = logging.getLogger(__name__)


#: Seconds between keepalive comments on the event stream: below common proxy idle timeouts,
#: and often enough for the console to notice a dead connection.
EVENTS_KEEPALIVE = 15.0
ACTOR_HEADER = "X-Swarmbinder-Actor"
_ACTOR_NAME = re.compile(r"[^A-Za-z0-9@._-]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_admin_routes(app: web.Application) -> None:
    """The admin API's routes, the live feed of the service behind them, and its shutdown."""
    prefix = f"{app[CONFIG].server.base_url}api/admin/"
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "snapshot", snapshot),
        ("GET", "events", events),
        ("GET", "builds", list_builds),
        ("GET", "builds/{id}", get_build),
        ("DELETE", "builds/{id}", cancel_build),
        ("GET", "servers", list_servers),
        ("DELETE", "servers/{user}", stop_server),
        ("GET", "nodes", list_nodes),
        ("GET", "prebuilds", list_prebuilds),
        ("DELETE", "prebuilds/{name}", remove_prebuild),
        ("GET", "pools", list_pools),
        ("GET", "bans", list_bans),
        ("POST", "bans", add_ban),
        ("DELETE", "bans/{id}", remove_ban),
        ("GET", "quotas", list_quotas),
        ("POST", "quotas", set_repo_quota),
        ("DELETE", "quotas", clear_repo_quota),
        ("PUT", "quotas/pod", set_pod_quota),
        ("DELETE", "quotas/pod", clear_pod_quota),
        ("GET", "audit", list_audit),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, prefix + path, _guarded(handler))
    app.router.add_route("*", prefix + "{tail:.*}", _guarded(_not_found))
    app.cleanup_ctx.append(run_admin_feed)
    app.on_shutdown.append(_close_streams)


async def run_admin_feed(app: web.Application) -> AsyncIterator[None]:
    """Run the admin service's live feed (the ``events`` stream) while the app runs."""
    if ADMIN not in app:
        yield
        return
    task = asyncio.create_task(app[ADMIN].run(), name="admin-feed")
    try:
        yield
    finally:
        app[ADMIN].close_feed()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_streams(app: web.Application) -> None:
    # Open event streams would otherwise hold graceful shutdown up until its timeout.
    if ADMIN in app:
        app[ADMIN].close_feed()


# -- guard -----------------------------------------------------------------------------------


def _message(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _scrubber(app: web.Application) -> Scrubber:
    return app[SCRUBBER] if SCRUBBER in app else DEFAULT_SCRUBBER


def _json(request: web.Request, data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(_scrubber(request.app).scrub_obj(data), status=status)


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        refusal = _check_token(request)
        if refusal is not None:
            return refusal
        if ADMIN not in request.app:
            return _message(503, "The admin API is starting or its store is unavailable.")
        try:
            return await handler(request)
        except SwarmbinderError as error:
            status = error.status_code if 400 <= error.status_code < 500 else 503
            if status == 503:
                log.warning("admin %s %s failed: %s", request.method, request.path, error)
            return _message(status, _scrubber(request.app).scrub(error.user_message))

    return guarded


def _check_token(request: web.Request) -> web.Response | None:
    access = check_admin_token(
        request.app[CONFIG].admin.admin_token, request.headers.get("Authorization", "")
    )
    if access is AdminAccess.DISABLED:
        return _message(
            404,
            "The admin API is disabled: set admin_token (SWARMBINDER_ADMIN_TOKEN, or "
            "admin_token_file for a Swarm secret) to enable it.",
        )
    if access is AdminAccess.MISSING:
        return web.json_response(
            {"message": "The admin API needs an 'Authorization: Bearer <admin token>' header."},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="swarmbinder admin"'},
        )
    if access is AdminAccess.WRONG:
        log.warning("admin API: wrong token from %s", request.remote)
        return _message(403, "The admin token is wrong.")
    return None


def _actor(request: web.Request) -> str:
    name = _ACTOR_NAME.sub("", request.headers.get(ACTOR_HEADER, ""))[:64]
    return f"admin:{name}" if name else "admin"


async def _not_found(request: web.Request) -> web.StreamResponse:
    return _message(404, f"No admin resource {request.method} {request.path}.")


# -- reading ---------------------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > 100_000:
        raise _BadRequest(f"{name} must be a whole number from 0 to 100000, not {raw!r}.")
    return int(raw)


async def snapshot(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].snapshot())


async def list_builds(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].list_builds())


async def get_build(request: web.Request) -> web.StreamResponse:
    tail = _int_param(request, "tail", None)
    return _json(request, await request.app[ADMIN].get_build(request.match_info["id"], tail))


async def list_servers(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].servers())


async def list_nodes(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].nodes())


async def list_prebuilds(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].prebuilds())


async def list_pools(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].pools())


async def list_bans(request: web.Request) -> web.StreamResponse:
    # ``spec_patterns`` says what a spec pattern is matched against, for scripts and people
    # who write bans without reading the docs.
    return _json(request, {"bans": request.app[ADMIN].bans(), "spec_patterns": PATTERN_FORMS_HELP})


async def list_quotas(request: web.Request) -> web.StreamResponse:
    return _json(request, request.app[ADMIN].quotas())


async def list_audit(request: web.Request) -> web.StreamResponse:
    limit = _int_param(request, "limit", 100)
    return _json(request, {"audit": await request.app[ADMIN].audit(limit or 0)})


async def events(request: web.Request) -> web.StreamResponse:
    """The snapshot, then live events, as an event stream, until the client or we go."""
    admin = request.app[ADMIN]
    # Per watcher, unlike build events: admin consoles are few, and one stream reads the rest.
    scrub = _scrubber(request.app).scrub_obj
    response = web.StreamResponse(headers=SSE_HEADERS)
    async with admin.subscribe() as subscription:
        # Subscribed before the snapshot is taken: a change in between is seen twice at worst.
        first = await admin.snapshot()
        await response.prepare(request)
        try:
            await response.write(_frame(scrub(first)))
            items = aiter(subscription)
            while True:
                try:
                    event = await asyncio.wait_for(anext(items), EVENTS_KEEPALIVE)
                except TimeoutError:
                    await response.write(b":keepalive\n\n")
                    continue
                except StopAsyncIteration:
                    break
                await response.write(_frame(scrub(event)))
        except (ConnectionResetError, ConnectionError):
            log.debug("admin event stream client left")
    return response


def _frame(event: dict[str, Any]) -> bytes:
    body = json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)
    return b"data: " + body.encode("ascii") + b"\n\n"


# -- actions ---------------------------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


class _BadRequest(SwarmbinderError, status=400): ...


def _expiry(body: dict[str, Any]) -> float | None:
    """``expires_at`` (epoch seconds) or ``expires_in`` (seconds from now), or neither."""
    at, within = body.get("expires_at"), body.get("expires_in")
    if at is not None and within is not None:
        raise _BadRequest("Give expires_at or expires_in, not both.")
    for name, value in (("expires_at", at), ("expires_in", within)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise _BadRequest(f"{name} must be a positive number of seconds.")
    if within is not None:
        return time.time() + float(within)
    return None if at is None else float(at)


async def cancel_build(request: web.Request) -> web.StreamResponse:
    build = await request.app[ADMIN].cancel_build(request.match_info["id"], _actor(request))
    return _json(request, {"build": build})


async def stop_server(request: web.Request) -> web.StreamResponse:
    stopped = await request.app[ADMIN].stop_server(
        request.match_info["user"], request.query.get("server_name", ""), _actor(request)
    )
    return _json(request, {"server": stopped})


async def remove_prebuild(request: web.Request) -> web.StreamResponse:
    job = await request.app[ADMIN].remove_prebuild(request.match_info["name"], _actor(request))
    return _json(request, {"prebuild": job})


async def add_ban(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    try:
        ban = await request.app[ADMIN].add_ban(
            body.get("kind"), body.get("pattern"), body.get("reason", ""), _actor(request)
        )
    except InvalidBan as error:
        if error.kind != "spec":
            raise
        # The usual 400, plus which forms a spec pattern may take.
        message = _scrubber(request.app).scrub(error.user_message)
        return web.json_response({"message": message, "help": PATTERN_FORMS_HELP}, status=400)
    return _json(request, {"ban": ban, "spec_patterns": PATTERN_FORMS_HELP}, status=201)


async def remove_ban(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit():
        return _message(400, f"Ban ids are numbers, not {raw!r}.")
    await request.app[ADMIN].remove_ban(int(raw), _actor(request))
    return _json(request, {"removed": int(raw)})


async def set_repo_quota(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    quotas = await request.app[ADMIN].set_repo_quota(
        body.get("pattern"), body.get("quota"), _actor(request), _expiry(body)
    )
    return _json(request, quotas)


async def clear_repo_quota(request: web.Request) -> web.StreamResponse:
    pattern = request.query.get("pattern", "")
    if not pattern:
        return _message(400, "Say which override to clear: ?pattern=<the override's pattern>.")
    return _json(request, await request.app[ADMIN].clear_repo_quota(pattern, _actor(request)))


async def set_pod_quota(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    quotas = await request.app[ADMIN].set_pod_quota(
        body.get("quota"), _actor(request), _expiry(body)
    )
    return _json(request, quotas)


async def clear_pod_quota(request: web.Request) -> web.StreamResponse:
    return _json(request, await request.app[ADMIN].clear_pod_quota(_actor(request)))
