"""Event-stream frames written to a client's connection without waiting: the /build fast path.

A thousand browsers watching one build each get every log line. Waking a task per browser per
line, walking its chain of generators and awaiting aiohttp's write cost tens of microseconds a
browser, and the last browser heard of a line a long while after the first. A
:class:`FrameWriter` is the fan-out's sink for one response
(:meth:`~swarmbinder.fanout.Subscription.set_sink`): the build's publisher hands it the event,
and it queues the event's frame (encoded once for everyone, :attr:`BuildEvent.sse_frame`) for
one write at the end of the event loop's turn, shared by all writers through a
:class:`WriteBatch`. Lines that arrive together (a chunk of the engine's log stream holds many)
go out in one write per client.

A slow or hostile reader cannot make this grow or stall anyone: a writer refuses a frame when
its client already has :data:`SLOW_CLIENT_BUFFER` bytes waiting in the connection's buffer. A
refused event goes to the subscriber's bounded queue, where the handler's own task writes it
with backpressure and the fan-out drops the oldest lines of a reader that stays behind (it is
told how many). A connection whose buffer stays over the bound for
:data:`STALLED_CLIENT_SECONDS` is closed (:mod:`.streamwatch`, :meth:`FrameWriter.stalled_for`).

Frames are written to the transport below aiohttp's response, with the response's chunked
framing when it uses one; every other write to the response goes through
:meth:`FrameWriter.write`, which writes what is queued first, so frames stay whole and in
order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import hdrs, web

from ..events import BuildEvent

__all__ = [
    "SLOW_CLIENT_BUFFER",
    "STALLED_CLIENT_SECONDS",
    "WRITE_BATCH",
    "FrameWriter",
    "WriteBatch",
]

#: Bytes a client may leave unsent in its connection's buffer (beyond what the kernel holds)
#: before the writer refuses further frames and the slow path takes over. aiohttp drains a
#: response at the same size.
SLOW_CLIENT_BUFFER = 64 * 1024
#: A connection whose unsent bytes stay over :data:`SLOW_CLIENT_BUFFER` this long is closed: a
#: reader that stopped reading holds a stream slot and its buffer for nothing.
STALLED_CLIENT_SECONDS = 60.0


class WriteBatch:
    """The writers with frames queued in this turn of the event loop; written at its end.

    One per application: every stream's writer joins it, so a line published to a thousand
    writers schedules one callback, not a thousand.
    """

    def __init__(self) -> None:
        self._dirty: list[FrameWriter] = []
        self._scheduled = False

    def add(self, writer: FrameWriter) -> None:
        self._dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for writer in dirty:
            writer.flush()


#: The application's batch (made with the /build route).
WRITE_BATCH = web.AppKey("write_batch", WriteBatch)


class _ChunkCache:
    """The last event's frame in chunked framing, built once for all writers: a line reaches
    every writer in turn, so one slot holds it for all of them."""

    def __init__(self) -> None:
        self._event: BuildEvent | None = None
        self._chunk = b""

    def chunk(self, event: BuildEvent) -> bytes:
        if event is not self._event:
            frame = event.sse_frame
            self._chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
            self._event = event
        return self._chunk


_CHUNKS = _ChunkCache()


class FrameWriter:
    """Writes one prepared event-stream response's frames without awaiting; see the module."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        batch: WriteBatch,
        *,
        limit: int = SLOW_CLIENT_BUFFER,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``response`` must be prepared (its headers sent)."""
        if not response.prepared:
            raise RuntimeError("a FrameWriter needs a prepared response")
        self._transport = request.transport
        self._response = response
        self._chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        self._batch = batch
        self._limit = limit
        self._clock = clock or asyncio.get_running_loop().time
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._over_since: float | None = None
        #: When a frame last went to the transport (for keepalives).
        self.last_write = self._clock()
        #: Frames refused because the client was behind (or gone).
        self.refused = 0

    def offer(self, event: BuildEvent) -> bool:
        """Queue ``event``'s frame for this turn's write; False if the client is behind or gone.

        A frame is taken whatever its size when nothing is waiting for the client, so one
        long line still goes the fast way to a client that keeps up."""
        if self._transport is None:
            self.refused += 1
            return False
        return self._queue(_CHUNKS.chunk(event) if self._chunked else event.sse_frame)

    def offer_frame(self, frame: bytes) -> bool:
        """:meth:`offer` for a frame of bytes (a keepalive)."""
        if self._transport is None:
            self.refused += 1
            return False
        return self._queue(b"%x\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame)

    def _queue(self, data: bytes) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            self.refused += 1
            return False
        waiting = transport.get_write_buffer_size() + self._pending_bytes
        if waiting and waiting + len(data) > self._limit:
            self.refused += 1
            return False
        if not self._pending:
            self._batch.add(self)
        self._pending.append(data)
        self._pending_bytes += len(data)
        return True

    def flush(self) -> None:
        """Write what is queued now; call before any other write to the response."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self.last_write = self._clock()

    async def write(self, frame: bytes) -> None:
        """Write ``frame`` through the response, after what is queued, awaiting a slow client
        (the way for what the sink did not take, and keepalives)."""
        self.flush()
        # One synchronous transport write for the whole frame: frames never interleave.
        await self._response.write(frame)
        self.last_write = self._clock()

    def close(self) -> None:
        """Write what is queued; refuse everything after (the response is ending)."""
        self.flush()
        self._transport = None

    def idle_for(self) -> float:
        """Seconds since a frame last went to the transport."""
        return self._clock() - self.last_write

    def stalled_for(self) -> float:
        """Seconds the client's unsent bytes have stayed over the limit (0 if they are not).

        Called now and then (the stream watch's round); a stall is counted from the first call that
        saw the buffer over the limit."""
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() <= self._limit:
            self._over_since = None
            return 0.0
        now = self._clock()
        if self._over_since is None:
            self._over_since = now
        return now - self._over_since
