"""BinderHub's per-IP rate limit on ``/build``.

The semantics are BinderHub's ``RateLimiter``: each key (a client address) gets ``limit``
requests per fixed window of ``period_seconds`` that starts at its first request; the window is
not sliding, so the whole allowance can be used at once, and it resets in full when the window
ends. A refused request still counts, so the log shows by how much a client overshoots (a sign
of abuse rather than impatience). ``limit = 0`` turns the limit off. Requests that carry a valid
build token are not limited; the caller knows that and says so.

The windows live where :class:`RateLimiter` is told to keep them. :class:`MemoryWindows` keeps
them in this process, as BinderHub does (a restart forgives everyone); its memory is bounded two
ways: expired windows are dropped every ``clean_seconds``, and when more than ``max_keys``
addresses are tracked at once the windows that started first go (an attacker spraying addresses
can only make us forget the oldest windows, which are the closest to resetting anyway).
:class:`StoreWindows` keeps them in the store, counted by one atomic statement, so the limit
holds across every replica sharing a PostgreSQL database (and across a restart); a store that
does not answer refuses the request with its 503 rather than letting it through unlimited.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import SwarmbinderError
from ..store import RateWindow

log = logging.getLogger(__name__)

DEFAULT_MAX_KEYS = 100_000
DEFAULT_CLEAN_SECONDS = 600


class RateLimitExceeded(SwarmbinderError, status=429):
    """Too many requests from one address in this window (429)."""

    def __init__(self, key: str, *, limit: int, period: int, excess: int, retry_after: int) -> None:
        super().__init__(
            f"rate limit exceeded (by {excess}) for {key!r}, reset in {retry_after}s",
            # BinderHub's message names the period, not the time left; kept word for word.
            user_message=f"Rate limit exceeded. Try again in {period} seconds.",
        )
        self.limit = limit
        self.period = period
        self.excess = excess
        #: Seconds until this client's window resets: the ``Retry-After`` header's value.
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), "X-RateLimit-Limit": str(self.limit)}


@dataclass(frozen=True)
class RateLimitStatus:
    """Where a client stands after a request that was let through."""

    limit: int
    remaining: int
    #: Unix time (whole seconds) at which the window resets.
    reset: int

    def headers(self) -> dict[str, str]:
        """BinderHub's ``x-ratelimit-*`` response headers."""
        return {
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
            "X-RateLimit-Limit": str(self.limit),
        }


class Windows(Protocol):
    """Where the windows are kept."""

    async def count(self, key: str, limit: int, period: int, now: int) -> RateWindow:
        """Count one request from ``key`` at ``now``: a fresh window of ``limit`` when there is
        none or it ended before ``now``, one fewer left otherwise."""

    async def clean(self, now: int) -> int:
        """Forget the windows that ended before ``now``; how many went."""


class WindowStore(Protocol):
    """The part of :class:`~swarmbinder.store.Store` that keeps rate-limit windows."""

    async def count_request(self, key: str, limit: int, period: int, now: int) -> RateWindow: ...

    async def forget_rate_windows(self, before: int) -> int: ...


@dataclass
class _Window:
    remaining: int
    reset: int


class MemoryWindows:
    """The windows of this process alone, at most ``max_keys`` of them."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("need max_keys >= 1")
        self._max_keys = max_keys
        # Ordered by window start: the first entries are the oldest windows.
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    async def count(self, key: str, limit: int, period: int, now: int) -> RateWindow:
        window = self._windows.get(key)
        if window is None or window.reset < now:
            window = _Window(remaining=limit, reset=now + period)
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        window.remaining -= 1
        return RateWindow(window.remaining, window.reset)

    async def clean(self, now: int) -> int:
        expired = [key for key, window in self._windows.items() if window.reset < now]
        for key in expired:
            del self._windows[key]
        return len(expired)


class StoreWindows:
    """The windows in the store, shared by every replica that uses it."""

    def __init__(self, store: WindowStore) -> None:
        self._store = store

    async def count(self, key: str, limit: int, period: int, now: int) -> RateWindow:
        return await self._store.count_request(key, limit, period, now)

    async def clean(self, now: int) -> int:
        return await self._store.forget_rate_windows(now)


class RateLimiter:
    def __init__(
        self,
        limit: int = 10,
        period_seconds: int = 3600,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = DEFAULT_MAX_KEYS,
        clean_seconds: float = DEFAULT_CLEAN_SECONDS,
        windows: Windows | None = None,
    ) -> None:
        """``windows``: where to count (default: this process's memory, ``max_keys`` at most)."""
        if limit < 0 or period_seconds < 1 or max_keys < 1:
            raise ValueError("need limit >= 0, period_seconds >= 1 and max_keys >= 1")
        self.limit = limit
        self.period_seconds = period_seconds
        self._clock = clock
        self._clean_seconds = clean_seconds
        self._windows: Windows = windows if windows is not None else MemoryWindows(max_keys)
        self._last_cleaned = clock()

    def __len__(self) -> int:
        """How many clients are being tracked (in memory; 0 when the store keeps them)."""
        return len(self._windows) if isinstance(self._windows, MemoryWindows) else 0

    async def check(self, key: str, *, have_build_token: bool = False) -> RateLimitStatus | None:
        """Count one request from ``key``; :class:`RateLimitExceeded` if over the limit.

        ``None`` when no limit applies (limit 0, or a valid build token).
        """
        if self.limit == 0 or have_build_token:
            return None
        return await self.increment(key)

    async def __call__(self, key: str) -> None:
        """:meth:`check` for callers that only need the refusal."""
        await self.check(key)

    async def increment(self, key: str) -> RateLimitStatus:
        now = int(self._clock())
        if now - self._last_cleaned > self._clean_seconds:
            self._last_cleaned = now
            forgotten = await self._windows.clean(now)
            if forgotten:
                log.debug("rate limiter forgot %d expired windows", forgotten)
        window = await self._windows.count(key, self.limit, self.period_seconds, now)
        if window.remaining < 0:
            raise RateLimitExceeded(
                key,
                limit=self.limit,
                period=self.period_seconds,
                excess=-window.remaining,
                retry_after=max(window.reset - now, 0),
            )
        return RateLimitStatus(limit=self.limit, remaining=window.remaining, reset=window.reset)
