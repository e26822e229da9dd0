"""BinderHub's per-IP rate limit on ``/build``.

The semantics are BinderHub's ``RateLimiter``: each key (a client address) gets ``limit``
requests per fixed window of ``period_seconds`` that starts at its first request; the window is
not sliding, so the whole allowance can be used at once, and it resets in full when the window
ends. A refused request still counts, so the log shows by how much a client overshoots (a sign
of abuse rather than impatience). ``limit = 0`` turns the limit off. Requests that carry a valid
build token are not limited; the caller knows that and says so.

State is in memory, per process, as in BinderHub: a restart forgives everyone. Memory is bounded
two ways: expired windows are dropped every ``clean_seconds``, and when more than ``max_keys``
addresses are tracked at once the windows that started first go (an attacker spraying addresses
can only make us forget the oldest windows, which are the closest to resetting anyway).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SwarmbinderError

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


@dataclass
class _Window:
    remaining: int
    reset: int


class RateLimiter:
    def __init__(
        self,
        limit: int = 10,
        period_seconds: int = 3600,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = DEFAULT_MAX_KEYS,
        clean_seconds: float = DEFAULT_CLEAN_SECONDS,
    ) -> None:
        if limit < 0 or period_seconds < 1 or max_keys < 1:
            raise ValueError("need limit >= 0, period_seconds >= 1 and max_keys >= 1")
        self.limit = limit
        self.period_seconds = period_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._clean_seconds = clean_seconds
        # Ordered by window start: the first entries are the oldest windows.
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._last_cleaned = clock()

    def __len__(self) -> int:
        """How many clients are being tracked."""
        return len(self._windows)

    def check(self, key: str, *, have_build_token: bool = False) -> RateLimitStatus | None:
        """Count one request from ``key``; :class:`RateLimitExceeded` if over the limit.

        ``None`` when no limit applies (limit 0, or a valid build token).
        """
        if self.limit == 0 or have_build_token:
            return None
        return self.increment(key)

    def __call__(self, key: str) -> None:
        """:meth:`check` for callers that only need the refusal."""
        self.check(key)

    def increment(self, key: str) -> RateLimitStatus:
        now = int(self._clock())
        if now - self._last_cleaned > self._clean_seconds:
            self._clean(now)
        window = self._windows.get(key)
        if window is None or window.reset < now:
            window = _Window(remaining=self.limit, reset=now + self.period_seconds)
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        window.remaining -= 1
        if window.remaining < 0:
            raise RateLimitExceeded(
                key,
                limit=self.limit,
                period=self.period_seconds,
                excess=-window.remaining,
                retry_after=max(window.reset - now, 0),
            )
        return RateLimitStatus(limit=self.limit, remaining=window.remaining, reset=window.reset)

    def _clean(self, now: int) -> None:
        self._last_cleaned = now
        expired = [key for key, window in self._windows.items() if window.reset < now]
        for key in expired:
            del self._windows[key]
        if expired:
            log.debug("rate limiter forgot %d expired windows", len(expired))
