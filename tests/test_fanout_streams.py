"""Many EventSource clients on one build, over real connections: the /build handler, the launch
flow and a build's fan-out as the service runs them, with only the resolver, the registry and
the engine faked (the log lines are published by the test).

What a hostile slow reader does: it opens a stream and stops reading (a tiny receive window,
then nothing). The lines for it pile up first in the kernel's buffers, then in its connection's
buffer up to the writer's bound, then in its bounded queue in the fan-out, which drops its
oldest lines. (The server's send buffers are kept small here, as on a slow link, so that a
few hundred KiB of log get that far; on loopback the kernel would take megabytes first.)
Meanwhile every other watcher gets every line, in order; the slow reader, if it reads again,
is told how many lines it missed; if it never does, its connection is closed after
``STALLED_CLIENT_SECONDS`` and its stream ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from swarmbinder.app import add_build_routes
from swarmbinder.buildjob import BuildRequest
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build
from swarmbinder.config import load_config
from swarmbinder.events import BuildEvent, Phase, SSEDecoder
from swarmbinder.handlers import framewriter, streamwatch
from swarmbinder.handlers.streamwatch import STREAM_WATCH
from swarmbinder.keys import ADMISSION, CONFIG, FLOW
from swarmbinder.launch_flow import LaunchFlow
from swarmbinder.policy.admission import Admitted
from swarmbinder.resolve import Resolved

REQUEST = BuildRequest(
    provider="git",
    spec="x/main",
    repo_url="http://git.invalid/x.git",
    ref="a" * 40,
    build_slug="http://git.invalid/x.git",
    image="127.0.0.1:5050/binder-x:" + "a" * 40,
)
PATH = "/build/git/x/main?build_only=true"
ADMIN_TOKEN = "a" * 40
HEADERS = {"Accept": "text/event-stream", "Authorization": f"Bearer {ADMIN_TOKEN}"}


class Admission:
    async def admit(self, *, peer: str, **_: Any) -> Admitted:
        return Admitted(client_ip=peer, have_build_token=False)


class OneBuild:
    def __init__(self, build: Build) -> None:
        self.build = build

    async def request(self, request: BuildRequest) -> Build:
        return self.build


def make_app(build: Build) -> web.Application:
    async def resolve(path: str) -> Resolved:
        return Resolved(build=REQUEST, ref_url=REQUEST.repo_url, resolved_spec="x/" + "a" * 40)

    async def image_exists(image: str) -> bool:
        return False

    async def check_quota(resolved: Resolved) -> None:
        return None

    app = web.Application()
    app[CONFIG] = load_config(env={}, overrides={"admin_token": ADMIN_TOKEN})
    app[FLOW] = LaunchFlow(
        resolve=resolve,
        image_exists=image_exists,
        builds=OneBuild(build),
        launcher=None,
        check_quota=check_quota,
    )
    app[ADMISSION] = Admission()  # type: ignore[assignment]
    add_build_routes(app)
    app.on_response_prepare.append(small_send_buffer)
    return app


async def small_send_buffer(request: web.Request, response: web.StreamResponse) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


@pytest.fixture
async def running(aiohttp_server: Any) -> AsyncIterator[tuple[Build, TestServer]]:
    # Each watcher's queue holds at most 256 KiB of lines.
    build = Build(REQUEST, BuildStatus.RUNNING, tail_size=10, created=0.0, memory_bytes=256 * 1024)
    server: TestServer = await aiohttp_server(make_app(build))
    yield build, server


class Watcher:
    """A client that reads everything as it comes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def read(self, session: aiohttp.ClientSession, url: str) -> None:
        decoder = SSEDecoder()
        async with session.get(url, headers=HEADERS) as response:
            async for chunk in response.content.iter_any():
                self.events.extend(decoder.feed(chunk))
                self.changed.set()

    def lines(self) -> list[str]:
        return [e["message"] for e in self.events if e["phase"] == "building"]


async def open_watchers(
    server: TestServer, build: Build, session: aiohttp.ClientSession, count: int
) -> tuple[list[Watcher], list[asyncio.Task[None]]]:
    watchers = [Watcher() for _ in range(count)]
    url = str(server.make_url(PATH))
    tasks = [asyncio.create_task(w.read(session, url)) for w in watchers]
    await eventually(
        lambda: build.fanout.subscriber_count >= count and all(w.events for w in watchers)
    )
    return watchers, tasks


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true in time")


def hostile_socket(server: TestServer) -> socket.socket:
    """A connection that asks for the stream and then never reads (a receive window of a
    few KiB, set before connecting, so the kernel cannot take much for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.connect_ex((server.host, server.port))
    return sock


async def send_request(sock: socket.socket, server: TestServer) -> None:
    loop = asyncio.get_running_loop()
    headers = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    request = f"GET {PATH} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n{headers}\r\n"
    await loop.sock_sendall(sock, request.encode())


async def publish_in_step(build: Build, watchers: list[Watcher], count: int, size: int) -> None:
    """``count`` lines in bursts of ten, each burst once every watcher had the last."""
    for start in range(0, count, 10):
        for n in range(start, start + 10):
            build.publish(BuildEvent.log(Phase.BUILDING, f"{n} " + "x" * size))
        async with asyncio.timeout(10):
            while any(len(w.lines()) < start + 10 for w in watchers):
                for w in watchers:
                    w.changed.clear()
                await asyncio.wait(
                    [asyncio.create_task(w.changed.wait()) for w in watchers],
                    return_when=asyncio.FIRST_COMPLETED,
                )


def slow_streams(app: web.Application) -> list[int]:
    """Unsent bytes in the server's buffer for each watched stream."""
    watch = app[STREAM_WATCH]
    return [
        w.request.transport.get_write_buffer_size()
        for w in watch._streams
        if w.request.transport is not None
    ]


async def test_every_watcher_gets_every_line_in_order_and_the_end(
    running: tuple[Build, TestServer],
) -> None:
    build, server = running
    async with aiohttp.ClientSession() as session:
        watchers, tasks = await open_watchers(server, build, session, 20)
        await publish_in_step(build, watchers, 200, 100)
        build.finish(BuildStatus.BUILT, BuildEvent.built(REQUEST.image))
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
    expected = [f"{n} " + "x" * 100 + "\n" for n in range(200)]
    for w in watchers:
        assert w.lines() == expected
        assert [e["phase"] for e in w.events][-1] == "ready"  # build_only: built is ready


async def test_a_reader_that_stops_reading_holds_back_no_one_and_is_told_what_it_missed(
    running: tuple[Build, TestServer],
) -> None:
    build, server = running
    sock = hostile_socket(server)
    try:
        await send_request(sock, server)
        async with aiohttp.ClientSession() as session:
            watchers, tasks = await open_watchers(server, build, session, 3)
            await eventually(lambda: build.fanout.subscriber_count == 4)
            # 1.6 MiB of log in 4 KiB lines for a reader with a 4 KiB window
            await publish_in_step(build, watchers, 400, 4096)
            for w in watchers:
                assert len(w.lines()) == 400
            # The reader's bytes waiting in the server stay bounded, whatever was published.
            assert max(slow_streams(server.app)) <= 3 * framewriter.SLOW_CLIENT_BUFFER
            build.finish(BuildStatus.BUILT, BuildEvent.built(REQUEST.image))
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)

        # It reads again: some lines, the line saying how many it missed, the later ones.
        reader, writer = await asyncio.open_connection(sock=sock)
        body = b""
        async with asyncio.timeout(10):
            while b'"phase":"ready"' not in body:
                body += await reader.read(65536)
        writer.close()
    finally:
        sock.close()
    messages = [
        json.loads(line[len(b"data: ") :])["message"]
        for line in body.split(b"\n")
        if line.startswith(b"data: ")
    ]
    told = [m for m in messages if "this connection fell behind" in m]
    assert len(told) == 1
    shown = [m for m in messages if m[0].isdigit()]
    missed = int(told[0].split()[0].strip("["))
    assert missed > 0 and len(shown) + missed == 400
    assert shown[-1].startswith("399 ")  # the end of the log is never what is dropped


async def test_a_reader_that_never_reads_again_is_closed_after_the_stall_time(
    running: tuple[Build, TestServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(framewriter, "STALLED_CLIENT_SECONDS", 0.5)
    monkeypatch.setattr(streamwatch, "DISCONNECT_POLL", 0.1)
    build, server = running
    sock = hostile_socket(server)
    try:
        await send_request(sock, server)
        async with aiohttp.ClientSession() as session:
            watchers, tasks = await open_watchers(server, build, session, 2)
            await eventually(lambda: build.fanout.subscriber_count == 3)
            await publish_in_step(build, watchers, 200, 4096)
            await eventually(lambda: build.fanout.subscriber_count == 2)
            assert server.app[STREAM_WATCH].watched == 2  # the others go on
            build.publish(BuildEvent.log(Phase.BUILDING, "after"))
            build.finish(BuildStatus.BUILT, BuildEvent.built(REQUEST.image))
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)
        for w in watchers:
            assert w.lines()[-1] == "after\n"
        # the connection was reset: reading finds its end (after what the kernel held)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            while True:
                try:
                    if not await loop.sock_recv(sock, 65536):
                        break
                except ConnectionResetError:
                    break
    finally:
        sock.close()
