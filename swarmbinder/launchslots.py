"""At most N user servers starting at once, first come first served.

A Jupyter server spends its start in CPU (imports, extensions). When twenty start together on
a small swarm they share the cores, all of them finish late, and the hub's readiness probe
(``http_timeout``) gives up on some. Started in order, a few at a time, each gets the CPU it
needs: the first ones are ready in about a single launch's time, the median launch finishes
about twice as early as when all share, and none times out. JupyterHub's own
``concurrent_spawn_limit`` refuses the launches over the limit (429); we queue them and tell
each one its place.

The queue lives in the process: a launch waiting in it has a client attached, and a restart
ends that client's request anyway. With several binder replicas the limit is per replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

#: How often a waiting launch is told its place again.
REPORT_INTERVAL = 2.0


class LaunchSlots:
    """``limit`` concurrent launches; 0 means no limit."""

    def __init__(self, limit: int, *, report_interval: float = REPORT_INTERVAL) -> None:
        if limit < 0:
            raise ValueError("the launch limit must be 0 (none) or more")
        self.limit = limit
        self._report_interval = report_interval
        self._free = limit
        # Waiting launches in arrival order; the first gets the next free slot.
        self._waiting: list[asyncio.Future[None]] = []

    @property
    def running(self) -> int:
        return self.limit - self._free if self.limit else 0

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def take(self) -> AsyncGenerator[int, None]:
        """Wait for a slot, yielding how many launches are ahead of this one (at once, then
        every ``report_interval`` seconds while the number changes). When the generator is
        exhausted the caller holds a slot and must :meth:`give_back` it exactly once. A caller
        cancelled while waiting holds nothing."""
        if not self.limit:
            return
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        told = -1
        try:
            while True:
                ahead = self._waiting.index(turn)
                if ahead != told:
                    told = ahead
                    yield ahead
                done, _ = await asyncio.wait({turn}, timeout=self._report_interval)
                if done:
                    return  # give_back handed its slot over to us
        except BaseException:
            if turn.done() and not turn.cancelled():
                # A slot was handed to us just as we left: pass it on.
                self.give_back()
            raise
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)

    def resize(self, limit: int) -> None:
        """A new limit (at least 1) for a limited instance: more slots are handed to waiting
        launches at once; fewer take effect as running launches finish."""
        if not self.limit or limit < 1:
            raise ValueError("only a limited instance can be resized, to 1 or more")
        self._free += limit - self.limit
        self.limit = limit
        while self._free > 0 and self._waiting:
            self._free -= 1
            self._hand_over()

    def give_back(self) -> None:
        """Return a slot: it goes to the longest-waiting launch, or back to the pool."""
        if not self.limit:
            return
        if self._free < 0:  # the limit was lowered: this slot goes away
            self._free += 1
            return
        self._hand_over()

    def _hand_over(self) -> None:
        """One slot to the longest-waiting launch, or back to the pool."""
        while self._waiting:
            turn = self._waiting.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


def auto_limit(cpus: float) -> int:
    """The limit for ``concurrent_launch_limit: null``: two starting servers per CPU of the
    nodes that run them, at least two."""
    return max(2, int(2 * cpus))
