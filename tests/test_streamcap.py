"""The cap on open ``/build`` event streams per client (``max_streams_per_ip``).

Unit tests of :class:`~swarmbinder.policy.streamcap.StreamSlots`, then the ``/build`` handler on
a real aiohttp server on loopback, with clients on real sockets: the stream past the cap is
refused with a 429 and a clear ``failed`` event, and slots come back when streams end, also
when a client drops its connection without a word (a TCP reset).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from swarmbinder.app import add_build_routes
from swarmbinder.config import load_config
from swarmbinder.events import BuildEvent, SSEDecoder
from swarmbinder.keys import ADMISSION, CONFIG, FLOW, STREAM_SLOTS
from swarmbinder.launch_flow import LaunchRequest
from swarmbinder.policy.admission import Admitted
from swarmbinder.policy.streamcap import StreamSlots, TooManyStreams

ADMIN_TOKEN = "admin-" + "9" * 32


# -- StreamSlots ---------------------------------------------------------------------------------


def test_slots_are_counted_per_key_and_given_back() -> None:
    slots = StreamSlots(2)
    with slots.hold("a"), slots.hold("a"):
        assert slots.open_streams("a") == 2
        with pytest.raises(TooManyStreams) as refused:
            with slots.hold("a"):
                pass
        assert refused.value.status_code == 429
        assert "Too many launches open from your address (2 at once)" in (
            refused.value.user_message
        )
        with slots.hold("b"):  # another client has slots of its own
            assert slots.open_streams("b") == 1
    assert slots.open_streams("a") == 0 and slots.clients == 0


def test_a_slot_is_given_back_when_the_stream_fails() -> None:
    slots = StreamSlots(1)
    with pytest.raises(RuntimeError):
        with slots.hold("a"):
            raise RuntimeError("the client went away")
    with slots.hold("a"):
        pass


def test_zero_caps_nothing() -> None:
    slots = StreamSlots(0)
    with slots.hold("a"), slots.hold("a"), slots.hold("a"):
        assert slots.clients == 0


# -- the handler on a real server ----------------------------------------------------------------


class EndlessFlow:
    """A build that never ends: each stream stays open until its client leaves."""

    def __init__(self) -> None:
        self.running = 0

    async def run(
        self, request: LaunchRequest, direct: object = None
    ) -> AsyncGenerator[BuildEvent, None]:
        self.running += 1
        try:
            yield BuildEvent.waiting()
            await asyncio.Event().wait()
        finally:
            self.running -= 1


class LetEveryoneIn:
    async def admit(
        self,
        *,
        peer: str,
        headers: Mapping[str, str],
        path: str,
        build_token: str | None,
        operator: bool = False,
    ) -> Admitted:
        return Admitted(client_ip=peer, have_build_token=False)


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> TestServer:
    app = web.Application()
    app[CONFIG] = load_config(
        env={},
        overrides={
            "max_streams_per_ip": 2,
            "trusted_proxies": ["127.0.0.0/8"],
            "admin_token": ADMIN_TOKEN,
        },
    )
    app[FLOW] = EndlessFlow()  # type: ignore[assignment]
    app[ADMISSION] = LetEveryoneIn()  # type: ignore[assignment]
    add_build_routes(app)
    return await aiohttp_server(app)


class Stream:
    """One client of /build on its own socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.events: list[dict[str, Any]] = []

    def drop(self) -> None:
        """Leave without a word: SO_LINGER 0 makes the close a TCP reset."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def open_stream(
    server: TestServer, headers: dict[str, str] | None = None, query: str = ""
) -> Stream:
    """Send the request and read up to the first event (the handler holds its slot then)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = [
        f"GET /build/gh/org/repo/main{query} HTTP/1.1",
        f"Host: {server.host}:{server.port}",
        "Accept: text/event-stream",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    stream = Stream(reader, writer)
    async with asyncio.timeout(5):
        stream.status = int((await reader.readline()).split()[1])
        while await reader.readline() not in (b"\r\n", b""):
            pass
        decoder = SSEDecoder()
        while not stream.events:
            chunk = await reader.read(4096)
            assert chunk, "the server closed the stream before its first event"
            stream.events.extend(decoder.feed(chunk))
    return stream


async def eventually(condition: Callable[[], bool], within: float = 5) -> None:
    """The server notices a client that left within half a second (the handler's poll)."""
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not come true in time")


@pytest.fixture
async def streams() -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.writer.transport.abort()


async def test_the_stream_past_the_cap_is_refused_and_a_dropped_one_frees_its_slot(
    server: TestServer, streams: list[Stream]
) -> None:
    slots = server.app[STREAM_SLOTS]
    for _ in range(2):
        streams.append(await open_stream(server))
        assert streams[-1].status == 200 and streams[-1].events[0]["phase"] == "waiting"
    refused = await open_stream(server)
    assert refused.status == 429
    assert refused.events == [
        {
            "phase": "failed",
            "message": "Too many launches open from your address (2 at once). Close other "
            "Binder launch pages, or wait for their launches to finish, then try again.\n",
            "status_code": 429,
        }
    ]
    await refused.close()

    streams[0].drop()  # a browser tab killed, a laptop lid shut: no goodbye
    await eventually(lambda: slots.open_streams("127.0.0.1") == 1)
    streams.append(await open_stream(server))
    assert streams[-1].status == 200

    await streams[1].close()  # a polite close frees its slot too
    await eventually(lambda: slots.open_streams("127.0.0.1") == 1)
    # ... and each stream's launch iteration was closed with it.
    await eventually(lambda: server.app[FLOW].running == 1)  # type: ignore[attr-defined]


async def test_an_ipv6_client_is_capped_per_64_and_an_operator_not_at_all(
    server: TestServer, streams: list[Stream]
) -> None:
    """Behind a trusted proxy, fresh addresses from one /64 share its two slots."""
    for host in ("2001:db8:3:4::1", "2001:db8:3:4::2"):
        streams.append(await open_stream(server, {"X-Forwarded-For": host}))
        assert streams[-1].status == 200
    refused = await open_stream(server, {"X-Forwarded-For": "2001:db8:3:4:ffff::3"})
    assert refused.status == 429
    await refused.close()
    neighbour = await open_stream(server, {"X-Forwarded-For": "2001:db8:3:5::1"})
    streams.append(neighbour)
    assert neighbour.status == 200
    # swarmbinder prebuild --url opens many streams from one address with the admin token.
    for _ in range(3):
        prebuild = await open_stream(
            server,
            {"X-Forwarded-For": "2001:db8:3:4::9", "Authorization": f"Bearer {ADMIN_TOKEN}"},
            query="?build_only=true",
        )
        streams.append(prebuild)
        assert prebuild.status == 200
    assert server.app[STREAM_SLOTS].open_streams("2001:db8:3:4::/64") == 2
