"""Small bounded caches for provider API answers.

An :class:`EtagCache` keeps what was learned from a response with its ETag so the next request
can be conditional: an unchanged answer (304) costs GitHub no rate-limit quota. A
:class:`NegativeCache` remembers misses for a short while; a 404 has no ETag, and a branch that
does not exist now may be pushed a minute later, so misses expire. :class:`SharedLookups`
makes concurrent lookups of one key one call, and reuses its answer for a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    etag: str
    value: T


class EtagCache(Generic[T]):
    """Least-recently-used map of URL to (ETag, value)."""

    def __init__(self, max_size: int = 1024) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._entries: OrderedDict[str, Cached[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Cached[T] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def set(self, key: str, etag: str, value: T) -> None:
        self._entries[key] = Cached(etag, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)


class NegativeCache:
    """Keys that recently turned out not to exist, each forgotten after ``ttl`` seconds."""

    def __init__(
        self,
        max_size: int = 1024,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[key]
            return False
        return True

    def add(self, key: str) -> None:
        self._expiry[key] = self._clock() + self.ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self.max_size:
            self._expiry.popitem(last=False)

    def discard(self, key: str) -> None:
        self._expiry.pop(key, None)


class SharedLookups(Generic[T]):
    """One lookup per key at a time, its answer reused for ``ttl`` seconds.

    Concurrent callers of one key await the same call; a caller that is cancelled leaves the
    call running for the others. Failures are shared by the callers already waiting but never
    kept: the next caller tries again.
    """

    def __init__(
        self,
        ttl: float,
        max_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._answers: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._running: dict[str, asyncio.Task[T]] = {}

    async def get(self, key: str, lookup: Callable[[], Awaitable[T]]) -> T:
        answer = self._answers.get(key)
        if answer is not None:
            expiry, value = answer
            if expiry > self._clock():
                return value
            del self._answers[key]
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(lookup())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        self._running.pop(key, None)
        if self.ttl <= 0 or task.cancelled() or task.exception() is not None:
            return
        self._answers[key] = (self._clock() + self.ttl, task.result())
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_size:
            self._answers.popitem(last=False)
