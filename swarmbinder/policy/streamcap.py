"""How many ``/build`` event streams one client may hold open at once (``max_streams_per_ip``).

An event stream is cheap to open and lasts as long as its build and launch, then up to ten
minutes more after ``ready``: a client that opens thousands of them ties up a task, a socket and
a subscription to a build's log each. Counted per client key (an IPv4 address or an IPv6 /64,
:func:`~.clientip.limit_key`), so fresh IPv6 addresses gain nothing.

The count lives in this process: with N replicas behind a load balancer a client can hold up to
N times the cap, which still bounds what each replica carries. A stream's slot is given back
when its handler ends, whichever way: the build ended, the client closed the stream, or the
connection dropped without a word (the handler notices within half a second and returns).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import SwarmbinderError


class TooManyStreams(SwarmbinderError, status=429):
    """The client already holds ``limit`` open event streams here (429)."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(
            f"{key} already has {limit} event streams open",
            user_message=(
                f"Too many launches open from your address ({limit} at once). Close other "
                "Binder launch pages, or wait for their launches to finish, then try again."
            ),
        )
        self.key = key
        self.limit = limit


class StreamSlots:
    """Open streams per client key; ``limit`` 0 counts nothing and refuses nothing."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 or more")
        self.limit = limit
        self._open: dict[str, int] = {}

    def open_streams(self, key: str) -> int:
        return self._open.get(key, 0)

    @property
    def clients(self) -> int:
        """How many clients hold a stream now (keys are dropped at zero: no growth)."""
        return len(self._open)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One stream for ``key`` while the block runs; :class:`TooManyStreams` at the cap."""
        if self.limit == 0:
            yield
            return
        count = self._open.get(key, 0)
        if count >= self.limit:
            raise TooManyStreams(key, self.limit)
        self._open[key] = count + 1
        try:
            yield
        finally:
            remaining = self._open[key] - 1
            if remaining:
                self._open[key] = remaining
            else:
                del self._open[key]
