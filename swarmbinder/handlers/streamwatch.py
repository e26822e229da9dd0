"""Every open ``/build`` stream looked after by one timer: gone clients, stalled ones, keepalives.

A stream must notice within :data:`DISCONNECT_POLL` seconds that its client left, whatever its
flow waits on (a build of many minutes), and must write a keepalive after
:data:`~swarmbinder.events.KEEPALIVE_INTERVAL` seconds of silence. Each stream polling for that
itself cost a timer and a wake-up per stream twice a second: with a thousand watchers of one
build, a third of the service's CPU time per delivered log line, and wake-ups that got in the
way of the lines. One :class:`StreamWatch` per application checks them all on one timer
instead, which costs a few attribute reads per stream.

For each stream it watches, at every tick:

- the client left (its connection is closing): the stream's ``stop`` is called, which ends
  the handler's wait (it cancels the task relaying the flow, or ends the hold after
  ``ready``);
- the client stalled, its unsent bytes over the writer's bound for
  :data:`~swarmbinder.handlers.framewriter.STALLED_CLIENT_SECONDS`: the connection is aborted
  and ``stop`` is called. A reader that stopped reading would otherwise hold a stream slot and
  its buffer until the build ends, and after ``ready`` for ten minutes;
- nothing was written for :data:`~swarmbinder.events.KEEPALIVE_INTERVAL`: a keepalive goes
  out the writer's fast way (skipped for a client that has unread bytes anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from ..events import KEEPALIVE_FRAME, KEEPALIVE_INTERVAL
from . import framewriter
from .framewriter import FrameWriter

__all__ = ["DISCONNECT_POLL", "STREAM_WATCH", "StreamWatch", "run_stream_watch"]

log = logging.getLogger(__name__)

#: How often the open streams are checked.
DISCONNECT_POLL = 0.5


@dataclass(eq=False)
class _Watched:
    request: web.Request
    writer: FrameWriter
    stop: Callable[[], object]


class StreamWatch:
    """The open event streams of one application; :meth:`run` checks them on one timer."""

    def __init__(self) -> None:
        self._streams: dict[_Watched, None] = {}

    @property
    def watched(self) -> int:
        return len(self._streams)

    @contextlib.contextmanager
    def watching(
        self, request: web.Request, writer: FrameWriter, stop: Callable[[], object]
    ) -> Iterator[None]:
        """Look after this stream while the block runs; ``stop`` is called, once, when its
        client is gone or stalled."""
        watched = _Watched(request, writer, stop)
        self._streams[watched] = None
        try:
            yield
        finally:
            self._streams.pop(watched, None)

    async def run(self) -> None:
        """Check every stream each :data:`DISCONNECT_POLL` seconds, until cancelled."""
        while True:
            await asyncio.sleep(DISCONNECT_POLL)
            self.check()

    def check(self) -> None:
        """One round over the open streams."""
        for watched in list(self._streams):
            try:
                self._check(watched)
            except Exception:  # one stream's trouble must not end the others' care
                log.exception("checking the event stream of %s failed", watched.request.path)

    def _check(self, watched: _Watched) -> None:
        transport = watched.request.transport
        if transport is None or transport.is_closing():
            self._stop(watched)
            return
        writer = watched.writer
        if writer.stalled_for() >= framewriter.STALLED_CLIENT_SECONDS:
            log.info("closing a stalled event stream of %s", watched.request.path)
            transport.abort()
            self._stop(watched)
            return
        if writer.idle_for() >= KEEPALIVE_INTERVAL:
            writer.offer_frame(KEEPALIVE_FRAME)

    def _stop(self, watched: _Watched) -> None:
        if watched in self._streams:
            del self._streams[watched]
            watched.stop()


#: The application's watch (made with the /build route).
STREAM_WATCH = web.AppKey("stream_watch", StreamWatch)


async def run_stream_watch(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the watch's timer runs while the application does."""
    task = asyncio.create_task(app[STREAM_WATCH].run(), name="stream-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
