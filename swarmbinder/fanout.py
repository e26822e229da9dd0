"""One source, many watchers, bounded memory.

A build has one log reader and any number of browsers watching it. The reader calls
:meth:`Fanout.publish`, which never waits: each item goes into a ring buffer of the last
``tail_size`` items (replayed to whoever subscribes later) and into every subscriber's own
queue of at most ``queue_size`` items. A subscriber that falls behind loses its oldest items,
counted in :attr:`Subscription.dropped`; it never slows the reader or the other watchers.

Items can also be weighed (``size_of``, e.g. a log line's length): then the ring and each
queue also hold at most ``max_size`` of weight, so a source of few but huge items (64 KiB log
lines) is bounded in memory too, not only in count. One item heavier than ``max_size`` is still
kept, alone. What left the ring is counted in :attr:`Subscription.missed`, so a late
subscriber can say that it starts in the middle.

:meth:`Fanout.finish` ends the stream with an optional final item (``built`` or ``failed``) that
is kept apart from the queues and so is never dropped. Subscribing is a context manager: leaving
it, by cancellation or a client hanging up, unsubscribes at once.

A subscriber that can take an item synchronously (a web client's connection, written without
waiting) gives the subscription a *sink* (:meth:`Subscription.set_sink`). While the subscriber
waits for its next item with nothing queued, :meth:`Fanout.publish` hands the item to the sink
instead of queueing it and waking the subscriber's task. With a thousand watchers of one build
that wake-up, and the iteration through each watcher's chain of generators that followed it,
were most of the time a log line took to reach the last of them, and most of the garbage the
collector then had to walk. A sink that cannot take an item now (its client reads slowly)
refuses it, and the item is queued as for any subscriber: the bounds above still hold, and a
slow client never slows the publisher or the other watchers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

__all__ = ["Fanout", "Subscription"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Subscription(Generic[T]):
    """One watcher's view: the tail at subscribe time, then live items, then the final item."""

    def __init__(
        self,
        backlog: list[T],
        queue_size: int,
        *,
        missed: int = 0,
        size_of: Callable[[T], int] | None = None,
        max_size: int = 0,
    ) -> None:
        self._queue: deque[T] = deque()
        self._queue_size = queue_size
        self._size_of = size_of
        self._max_size = max_size
        self._size = 0
        self._final: list[T] = []
        self._ended = False
        self._wakeup = asyncio.Event()
        self._sink: Callable[[T], bool] | None = None
        #: The subscriber waits in ``__anext__`` and everything before was read: an item may
        #: go to the sink without overtaking one still queued or being written.
        self._waiting = False
        self.missed = missed
        """Items published before this subscriber came that had already left the tail."""
        self.dropped = 0
        """Items this subscriber lost because it fell ``queue_size`` (or ``max_size``)
        behind."""
        for item in backlog:
            self._put(item)

    @property
    def pending(self) -> int:
        """Items queued and not yet read (the final item not counted)."""
        return len(self._queue)

    def set_sink(self, sink: Callable[[T], bool] | None) -> None:
        """Hand live items to ``sink`` while this subscriber waits with nothing queued.

        ``sink(item)`` runs inside :meth:`Fanout.publish`, so it must be quick and must not
        block: it takes the item (``True``) or refuses it (``False``), and a refused item is
        queued and the subscriber woken as if there were no sink. The tail replayed at
        subscription, items that arrive while the subscriber is busy, and the final item always
        come through iteration. A sink that raises is logged and not called again.
        """
        self._sink = sink

    def _put(self, item: T) -> None:
        if self._waiting and self._sink is not None and not self._queue:
            try:
                if self._sink(item):
                    return
            except Exception:
                log.exception("a fan-out sink failed; its subscriber reads by iteration now")
                self._sink = None
        if len(self._queue) >= self._queue_size:
            self._pop_oldest()
        self._queue.append(item)
        if self._size_of is not None:
            self._size += self._size_of(item)
            while self._size > self._max_size and len(self._queue) > 1:
                self._pop_oldest()
        self._wakeup.set()

    def _pop_oldest(self) -> None:
        item = self._queue.popleft()
        if self._size_of is not None:
            self._size -= self._size_of(item)
        self.dropped += 1

    def _end(self, final: list[T]) -> None:
        self._final = final
        self._ended = True
        self._wakeup.set()

    def _close(self) -> None:
        self._sink = None
        self._queue.clear()
        self._size = 0
        self._final = []
        self._ended = True

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if self._size_of is not None:
                    self._size -= self._size_of(item)
                return item
            if self._final:
                return self._final.pop()
            if self._ended:
                raise StopAsyncIteration
            # nothing can be published between this check and the wait: no await in between
            self._wakeup.clear()
            self._waiting = True
            try:
                await self._wakeup.wait()
            finally:
                self._waiting = False


class Fanout(Generic[T]):
    """Broadcast items from one synchronous publisher to many asynchronous subscribers."""

    def __init__(
        self,
        *,
        tail_size: int,
        queue_size: int = 2000,
        size_of: Callable[[T], int] | None = None,
        max_size: int = 0,
    ) -> None:
        """``size_of`` and ``max_size`` (> 0) go together: the weight of an item, and the most
        weight the tail and each subscriber's queue hold."""
        if tail_size < 0:
            raise ValueError(f"tail_size must be >= 0, not {tail_size}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size}")
        if (size_of is None) != (max_size <= 0):
            raise ValueError("size_of and a max_size > 0 go together")
        self._tail: deque[T] = deque()
        self._tail_size = tail_size
        self._tail_weight = 0
        self._size_of = size_of
        self._max_size = max_size
        self._queue_size = queue_size
        #: Items that left the tail: a subscriber arriving now has missed them.
        self._evicted = 0
        self._subscribers: set[Subscription[T]] = set()
        self._final: list[T] = []
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        """Deliver ``item`` to every subscriber and the tail. Never blocks."""
        if self._finished:
            raise RuntimeError("publish() after finish()")
        self._tail.append(item)
        if self._size_of is not None:
            self._tail_weight += self._size_of(item)
        while len(self._tail) > self._tail_size or (
            self._size_of is not None and self._tail_weight > self._max_size and len(self._tail) > 1
        ):
            evicted = self._tail.popleft()
            if self._size_of is not None:
                self._tail_weight -= self._size_of(evicted)
            self._evicted += 1
        for subscriber in self._subscribers:
            subscriber._put(item)

    def finish(self, final: T | None = None) -> None:
        """End every subscription after what it has queued, then ``final`` if one is given."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._final = [] if final is None else [final]
        for subscriber in self._subscribers:
            subscriber._end(self._final.copy())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription[T]]:
        """Watch the stream from the current tail on; unsubscribed when the block is left.

        The tail snapshot and the registration happen together, with no await between them, so
        every item is seen exactly once: in the tail or live. A tail longer than ``queue_size``
        starts the subscriber with its oldest items counted as dropped.
        """
        subscription = Subscription(
            list(self._tail),
            self._queue_size,
            missed=self._evicted,
            size_of=self._size_of,
            max_size=self._max_size,
        )
        if self._finished:
            subscription._end(self._final.copy())
        else:
            self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription._close()
