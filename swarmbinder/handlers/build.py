"""``GET /build/<provider>/<spec>``: BinderHub's EventSource protocol over :mod:`launch_flow`.

The handler refuses ``block_build_user_agents``, parses, takes one of the client's
open-stream slots (``max_streams_per_ip``), admits (network bans, build token, rate limit), and
writes what the flow yields as ``data: <json>`` frames, with a ``:keepalive`` comment whenever
nothing else was written for :data:`~swarmbinder.events.KEEPALIVE_INTERVAL` seconds.

Errors found before the stream starts are answered with their HTTP status *and* a ``failed``
event in an event-stream body, as BinderHub does: an EventSource client never sees the status,
only the event.

After ``ready`` the stream stays open (keepalives only) until the client closes it: browsers'
EventSource reconnects when the server closes first, and a reconnect would start a new launch.
A client that goes away is noticed within :data:`~.streamwatch.DISCONNECT_POLL` seconds,
whatever the flow is waiting on, and only this request's iteration stops; the build keeps
running for other watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..errors import BuildOnlyRefused, SwarmbinderError
from ..events import (
    SSE_HEADERS,
    BuildEvent,
    Phase,
    sse_frame,
)
from ..keys import ADMISSION, CLIENT_IP, CONFIG, FLOW, STREAM_SLOTS, USER_AGENT_BLOCK
from ..launch_flow import LaunchRequest
from ..policy.admintoken import AdminAccess, check_admin_token
from ..policy.admission import Admitted
from ..policy.ratelimit import RateLimitExceeded
from ..policy.streamcap import TooManyStreams
from ..policy.useragents import UserAgentBlocked
from .client import client_scheme
from .framewriter import WRITE_BATCH, FrameWriter
from .streamwatch import STREAM_WATCH

log = logging.getLogger(__name__)

#: A stream left open after ``ready`` is closed after this long even if the client stays.
HOLD_OPEN_SECONDS = 600.0


def _error_stream(status: int, message: str, headers: dict[str, str]) -> web.Response:
    body = sse_frame(BuildEvent.failed(message, status))
    return web.Response(status=status, body=body, headers={**SSE_HEADERS, **headers})


def _refusal(error: SwarmbinderError, cors: dict[str, str]) -> web.Response:
    status = error.status_code if 400 <= error.status_code < 600 else 400
    # BinderHub's Retry-After and X-RateLimit-Limit on a 429.
    limited = error.headers() if isinstance(error, RateLimitExceeded) else {}
    return _error_stream(status, error.user_message, {**cors, **limited})


def _spec_path(request: web.Request) -> str:
    """``<provider>/<spec>`` exactly as sent, percent-escapes kept (``git`` specs carry an
    escaped URL, and unescaping it here would split it at its slashes)."""
    prefix = f"{request.app[CONFIG].server.base_url}build/"
    raw = request.raw_path.split("?", 1)[0]
    return raw[len(prefix) :] if raw.startswith(prefix) else raw.lstrip("/")


def _build_only(request: web.Request, admin: bool) -> bool:
    if request.query.get("build_only", "").lower() != "true":
        return False
    # Outside API-only mode, building without launching is for administrators only
    # (``swarmbinder prebuild --url``), as BinderHub keeps it off its public pages.
    if not request.app[CONFIG].server.enable_api_only_mode and not admin:
        raise BuildOnlyRefused()
    return True


def _admin(request: web.Request) -> bool:
    """The request carries the admin token (see :mod:`~swarmbinder.policy.admintoken`)."""
    access = check_admin_token(
        request.app[CONFIG].admin.admin_token, request.headers.get("Authorization", "")
    )
    return access is AdminAccess.GRANTED


def _launch_host(request: web.Request) -> str:
    config = request.app[CONFIG]
    badge_base_url = config.pages.badge_base_url
    if badge_base_url:
        return badge_base_url
    return f"{client_scheme(request)}://{request.host}{config.server.base_url}"


async def build(request: web.Request) -> web.StreamResponse:
    # CORS headers are added by the app's response signal, to streams and errors alike.
    cors: dict[str, str] = {}
    # BinderHub's order: a refused User-Agent first, then the Accept header.
    try:
        request.app[USER_AGENT_BLOCK].check(request.headers)
    except UserAgentBlocked as error:
        log.info("refused an event stream: %s", error)
        return _refusal(error, cors)
    accept = {part.strip().lower() for part in request.headers.get("Accept", "").split(",")}
    accept |= {part.split(";")[0].strip() for part in accept}
    if "text/event-stream" not in accept:
        return _error_stream(400, "Missing Accept header: text/event-stream", cors)

    # The admin token is looked at first: an operator's build_only request (a prebuild) is
    # not a browser and has no hub login to be sent to. It opens nothing else: a launch
    # with the token is admitted like anyone's.
    admin = _admin(request)
    try:
        build_only = _build_only(request, admin)
    except SwarmbinderError as error:
        return _refusal(error, cors)
    operator = admin and build_only
    # The slot is taken before admission: a client at its cap is refused without being
    # charged a launch, and it is held until this handler ends, however the stream ends.
    # An operator's prebuild of many specs at once is not capped.
    key = request.app[CLIENT_IP].limit_key(request.remote, request.headers)
    slots = request.app[STREAM_SLOTS]
    try:
        with contextlib.nullcontext() if operator else slots.hold(key):
            return await _admitted_stream(request, cors, build_only, operator)
    except TooManyStreams as error:
        log.info("refused an event stream: %s", error)
        return _refusal(error, cors)


async def _admitted_stream(
    request: web.Request, cors: dict[str, str], build_only: bool, operator: bool
) -> web.StreamResponse:
    path = _spec_path(request)
    try:
        admitted: Admitted = await request.app[ADMISSION].admit(
            peer=request.remote or "",
            headers=request.headers,
            path=path,
            build_token=request.query.get("build_token"),
            operator=operator,
        )
    except SwarmbinderError as error:
        return _refusal(error, cors)

    provider_prefix, _, spec = path.partition("/")
    launch = LaunchRequest(
        provider_prefix=provider_prefix,
        spec=spec.rstrip("/"),
        launch_host=_launch_host(request),
        build_only=build_only,
        username=admitted.username,
        origin=request.host,
        request_origin=request.headers.get("Origin") or request.headers.get("Sec-Fetch-Site") or "",
        have_build_token=admitted.have_build_token,
        client_ip=admitted.client_ip,
    )
    # BinderHub's X-RateLimit-* headers: how many launches this client has left, and when
    # its window resets.
    limit = admitted.rate_limit.headers() if admitted.rate_limit is not None else {}
    response = web.StreamResponse(headers={**SSE_HEADERS, **cors, **limit})
    await response.prepare(request)
    writer = FrameWriter(request, response, request.app[WRITE_BATCH])
    stream = request.app[FLOW].run(launch, writer.offer)
    try:
        await _relay(request, writer, stream, hold_open=not build_only)
    except (ConnectionResetError, ConnectionError):
        log.info("client left %s", request.path)
    finally:
        await stream.aclose()
        writer.close()  # before aiohttp ends the response: nothing may follow its end
    return response


async def _relay(
    request: web.Request,
    writer: FrameWriter,
    stream: AsyncIterator[BuildEvent],
    *,
    hold_open: bool,
) -> None:
    """Write the flow's events; after a launch's ``ready`` hold the stream open (a
    ``build_only`` request has nothing to reconnect to, so it ends, as BinderHub's).

    A task (the pump) writes each event the flow yields; a build's live log lines mostly skip
    it, going from the build's publisher to ``writer`` (see :mod:`.framewriter`). The
    application's :mod:`.streamwatch` writes keepalives and stops the pump, or the hold, when
    the client leaves or stalls. Waiting on each event with a timeout instead costs a task and
    a timer per event per client, and a poll of its own per stream a timer and a wake-up twice
    a second: with a thousand watchers of one build that was most of the time a log line took
    to reach them.
    """
    final: BuildEvent | None = None

    async def pump() -> None:
        nonlocal final
        async for event in stream:
            await writer.write(event.sse_frame)
            final = event

    watch = request.app[STREAM_WATCH]
    pump_task = asyncio.create_task(pump(), name=f"relay {request.path}")
    try:
        with watch.watching(request, writer, pump_task.cancel):
            await asyncio.wait((pump_task,))
        if pump_task.cancelled():
            return  # by the watch: the client left or stalled
        pump_task.result()  # a write to a client that left raises here
        if hold_open and final is not None and final.phase is Phase.READY:
            await _hold_open(request, writer)
    finally:
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump_task


async def _hold_open(request: web.Request, writer: FrameWriter) -> None:
    """Until the client leaves, or for :data:`HOLD_OPEN_SECONDS`, with keepalives."""
    left = asyncio.get_running_loop().create_future()

    def client_left() -> None:
        if not left.done():
            left.set_result(None)

    with request.app[STREAM_WATCH].watching(request, writer, client_left):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_OPEN_SECONDS):
                await left
