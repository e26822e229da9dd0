"""Pools for the most launched specs of the last hour (``warm_pool_auto``), as pure logic.

A launch costs a client little, so the counts are hostile input: a client launching many
specs once each must move nothing, and a burst must not make pools drain and refill in a
loop. Hence a spec needs ``min_launches`` in the hour to enter, the set changes at most every
``change_interval`` seconds, and the number of specs counted is bounded (memory).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: The window launches are counted in.
LAUNCH_WINDOW = 3600.0
#: Specs counted at most: past this, the specs with the fewest launches are forgotten (a
#: client cycling through millions of specs cannot grow the counter without end).
MAX_COUNTED_SPECS = 10_000


@dataclass
class LaunchCounts:
    """Launches per spec (``provider/spec``) in the last :data:`LAUNCH_WINDOW` seconds."""

    window: float = LAUNCH_WINDOW
    max_specs: int = MAX_COUNTED_SPECS
    #: casefolded spec -> (the spec as launched last, launch times)
    _launches: dict[str, tuple[str, deque[float]]] = field(default_factory=dict)

    def add(self, path: str, now: float) -> None:
        key = path.casefold()
        entry = self._launches.get(key)
        times = entry[1] if entry else deque()
        times.append(now)
        self._launches[key] = (path, times)
        if len(self._launches) > self.max_specs:
            self._prune(now)
            while len(self._launches) > self.max_specs:
                fewest = min(self._launches, key=lambda k: len(self._launches[k][1]))
                del self._launches[fewest]

    def top(self, n: int, *, min_launches: int, now: float) -> list[str]:
        """The ``n`` specs launched most (at least ``min_launches`` times), most first; ties go
        to the spec launched last (the one more likely launched next)."""
        self._prune(now)
        eligible = [
            (len(times), times[-1], path)
            for path, times in self._launches.values()
            if len(times) >= min_launches
        ]
        eligible.sort(reverse=True)
        return [path for _, _, path in eligible[:n]]

    def count(self, path: str, now: float) -> int:
        self._prune(now)
        entry = self._launches.get(path.casefold())
        return len(entry[1]) if entry else 0

    def _prune(self, now: float) -> None:
        for key in list(self._launches):
            times = self._launches[key][1]
            while times and times[0] < now - self.window:
                times.popleft()
            if not times:
                del self._launches[key]


@dataclass
class AutoSet:
    """The specs holding an auto pool; changes at most every ``change_interval`` seconds."""

    size: int
    min_launches: int
    change_interval: float
    counts: LaunchCounts = field(default_factory=LaunchCounts)
    specs: tuple[str, ...] = ()
    changed_at: float = -math.inf

    def update(self, now: float) -> tuple[list[str], list[str]] | None:
        """The specs that enter and leave the set, or None when it did not change (or may
        not change yet)."""
        if now - self.changed_at < self.change_interval:
            return None
        wanted = self.counts.top(self.size, min_launches=self.min_launches, now=now)
        held = {p.casefold() for p in self.specs}
        entering = [p for p in wanted if p.casefold() not in held]
        keep = {p.casefold() for p in wanted}
        leaving = [p for p in self.specs if p.casefold() not in keep]
        if not entering and not leaving:
            return None
        self.specs = tuple(wanted)
        self.changed_at = now
        return entering, leaving
