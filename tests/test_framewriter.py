"""Frames written without waiting: the batch per turn, the shared encoding, slow clients.

The writer is driven here over a recording transport (what it writes is what a client would
read); test_fanout_streams.py runs the same path over real connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from swarmbinder.events import KEEPALIVE_FRAME, BuildEvent, Phase, parse_sse
from swarmbinder.handlers.framewriter import FrameWriter, WriteBatch


class Transport:
    """What a selector transport tells the writer, and what was written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class Response:
    def __init__(self, chunked: bool) -> None:
        self.prepared = True
        self.headers = {"Transfer-Encoding": "chunked"} if chunked else {}
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class Request:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport


def writer_for(
    transport: Transport, batch: WriteBatch, *, chunked: bool = True, **kwargs: Any
) -> tuple[FrameWriter, Response]:
    response = Response(chunked)
    writer = FrameWriter(Request(transport), response, batch, **kwargs)  # type: ignore[arg-type]
    return writer, response


def unchunk(data: bytes) -> bytes:
    """The body of HTTP/1.1 chunked data (whole chunks only)."""
    body = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size, 16)
        body, data = body + data[:length], data[length + 2 :]
    return body


def line(n: int, size: int = 10) -> BuildEvent:
    return BuildEvent.log(Phase.BUILDING, f"line {n} " + "x" * size)


async def test_lines_of_one_turn_go_out_in_one_write_per_client() -> None:
    batch = WriteBatch()
    transports = [Transport() for _ in range(3)]
    writers = [writer_for(t, batch)[0] for t in transports]
    events = [line(i) for i in range(4)]
    for event in events:
        assert all(w.offer(event) for w in writers)
    assert all(t.writes == [] for t in transports)  # nothing before the turn ends

    await asyncio.sleep(0)

    for transport in transports:
        assert len(transport.writes) == 1
        assert [e["message"] for e in parse_sse(unchunk(transport.writes[0]))] == [
            e.message for e in events
        ]


async def test_a_frame_is_encoded_once_for_every_client() -> None:
    batch = WriteBatch()
    transports = [Transport() for _ in range(3)]
    writers = [writer_for(t, batch)[0] for t in transports]
    event = line(1)
    for w in writers:
        w.offer(event)
    await asyncio.sleep(0)
    first = transports[0].writes[0]
    assert all(t.writes[0] is first for t in transports)  # one bytes object, shared
    assert unchunk(first) == event.sse_frame


async def test_without_chunked_encoding_frames_are_written_bare() -> None:
    transport = Transport()
    writer, _ = writer_for(transport, WriteBatch(), chunked=False)
    writer.offer(line(1))
    writer.offer_frame(KEEPALIVE_FRAME)
    await asyncio.sleep(0)
    assert transport.writes == [line(1).sse_frame + KEEPALIVE_FRAME]


async def test_a_client_behind_is_refused_and_one_long_line_still_goes_to_a_quick_one() -> None:
    transport = Transport()
    writer, _ = writer_for(transport, WriteBatch(), limit=1000)
    long_line = line(1, size=5000)
    assert writer.offer(long_line)  # nothing waits for this client: taken whatever its size
    assert not writer.offer(line(2))  # now 5 KB wait for it
    await asyncio.sleep(0)
    transport.buffered = 900  # the kernel took it; the transport holds 900 bytes
    assert writer.offer(line(3))  # still fits under the limit
    assert not writer.offer(line(4, size=200))
    assert writer.refused == 2
    transport.closing = True
    assert not writer.offer(line(5))


async def test_a_write_through_the_response_follows_what_is_queued() -> None:
    transport = Transport()
    writer, response = writer_for(transport, WriteBatch())
    writer.offer(line(1))
    await writer.write(b"data: {}\n\n")
    assert len(transport.writes) == 1 and response.written == [b"data: {}\n\n"]
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # the batch finds nothing left to write


async def test_after_close_nothing_is_written() -> None:
    transport = Transport()
    writer, _ = writer_for(transport, WriteBatch())
    writer.offer(line(1))
    writer.close()  # what was queued goes first
    assert len(transport.writes) == 1
    assert not writer.offer(line(2))
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


async def test_a_stall_is_timed_from_when_the_buffer_first_stayed_over_the_limit() -> None:
    now = [100.0]
    transport = Transport()
    writer, _ = writer_for(transport, WriteBatch(), limit=1000, clock=lambda: now[0])
    assert writer.stalled_for() == 0
    transport.buffered = 5000
    assert writer.stalled_for() == 0  # first seen over the limit now
    now[0] += 30
    assert writer.stalled_for() == 30
    transport.buffered = 10  # it read
    assert writer.stalled_for() == 0
    transport.buffered = 5000
    now[0] += 5
    assert writer.stalled_for() == 0


def test_a_writer_needs_a_prepared_response() -> None:
    response = Response(chunked=True)
    response.prepared = False
    with pytest.raises(RuntimeError, match="prepared"):
        FrameWriter(Request(Transport()), response, WriteBatch())  # type: ignore[arg-type]
