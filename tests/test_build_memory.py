"""Bounded memory of a running build, against the in-memory swarm: a build that prints far
more than it keeps holds a bounded replay ring, a watcher who joins late is told how many lines
it missed and where the whole log is, and the watcher's own record of the log does not grow.

The real-Swarm side is tests/test_buildlogs.py (a real build's stored log, cut) and
test_builds_limits.py (a stop while the build prints); bench/buildmemory.py measures it.
"""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from pathlib import Path

from fakes.fake_swarm import FakeSwarm
from test_build_rules import (
    FakeClock,
    Managers,
    clock,
    fake,
    managers,
    r2d,
    request,
    settings,
    start_building,
)

from swarmbinder.buildlogs import BuildLogRecorder
from swarmbinder.builds import BuildManager
from swarmbinder.buildwatch import EVENT_OVERHEAD, Build, LogSummary
from swarmbinder.events import Phase, parse_repo2docker_line
from swarmbinder.store import Store

__all__ = ["clock", "fake", "managers"]  # fixtures, imported for pytest

#: What the test build prints: far more than the ring keeps.
PRINTED = 20_000
SKIPPED = re.compile(r"^\[(\d+) lines of the build log are not shown: (.*)\]$")


async def print_lines(fake: FakeSwarm, build: Build, count: int, width: int = 100) -> None:
    """The builder prints ``count`` numbered lines; returns once the watcher has read them."""
    for start in range(0, count, 1000):
        fake.feed_log(
            build.name,
            *(
                r2d("building", f"line {i:06d} " + "x" * width)
                for i in range(start, min(start + 1000, count))
            ),
        )
    last = f"line {count - 1:06d}"
    async with asyncio.timeout(10):
        async for event in build.events():
            if event.message.startswith(last):
                return


async def test_a_late_watcher_gets_the_ring_and_a_line_saying_what_it_missed(
    fake: FakeSwarm, managers: Managers
) -> None:
    manager = managers(fake, log_tail_lines=100)
    build = await manager.request(request("loud"))
    await start_building(fake, build)
    await print_lines(fake, build, PRINTED)

    async with build.fanout.subscribe() as peek:
        held = peek.pending
    assert held <= 100 + 8  # the ring, not the 20,000 lines printed

    late: list[str] = []
    async with asyncio.timeout(5):
        async for event in build.events():
            late.append(event.message.rstrip("\n"))
            if event.message.startswith(f"line {PRINTED - 1:06d}"):
                break
    marker = SKIPPED.match(late[0])
    assert marker is not None, late[0]
    assert "printed before you connected" in marker.group(2)
    assert int(marker.group(1)) + len(late) - 1 == PRINTED + 2  # + start_building's two lines
    assert late[1:] == [m for m in late[1:] if m.startswith("line ")]
    assert "admin API" not in late[0]  # nothing is stored here: nowhere to point to


async def test_the_marker_says_where_the_whole_log_is_when_it_is_stored(
    fake: FakeSwarm, clock: FakeClock, tmp_path: Path
) -> None:
    async with await Store.open(str(tmp_path / "store.sqlite")) as store:
        recorder = BuildLogRecorder(store)
        await recorder.start()
        manager = BuildManager(
            fake.client(), settings(log_tail_lines=10), clock=clock, **recorder.callbacks()
        )
        try:
            build = await manager.request(request("stored"))
            await start_building(fake, build)
            await print_lines(fake, build, 500)
            first = await anext(aiter(build.events()))
        finally:
            await manager.close()
            await recorder.close()
    assert SKIPPED.match(first.message.rstrip("\n"))
    assert f"admin API: builds/{build.name}" in first.message
    assert first.phase is Phase.BUILDING  # a marker never ends a client's stream


async def test_huge_lines_are_bounded_by_build_log_memory_bytes(
    fake: FakeSwarm, managers: Managers
) -> None:
    """A repository that prints lines of nearly 64 KiB (the cut): the ring holds
    build_log_memory_bytes of them, not log_tail_lines (100 x 64 KiB)."""
    budget = 256 * 1024
    manager = managers(fake, log_tail_lines=100, log_memory_bytes=budget)
    build = await manager.request(request("wide"))
    await start_building(fake, build)
    await print_lines(fake, build, 100, width=60 * 1024)
    async with build.fanout.subscribe() as peek:
        held = [await anext(peek) for _ in range(peek.pending)]
    assert 1 <= len(held) <= budget // (60 * 1024)
    assert sum(len(e.message) + EVENT_OVERHEAD for e in held) <= budget


async def test_a_watcher_that_falls_behind_is_told_how_many_lines_it_lost(
    fake: FakeSwarm, managers: Managers
) -> None:
    manager = managers(fake, log_tail_lines=10, log_memory_bytes=64 * 1024)
    build = await manager.request(request("behind"))
    await start_building(fake, build)
    events = build.events()
    first = await anext(events)  # subscribed, then stops reading while the build prints
    await print_lines(fake, build, 5000)
    got = [first.message]
    async with asyncio.timeout(5):
        async for event in events:
            got.append(event.message)
            if event.message.startswith(f"line {4999:06d}"):
                break
    markers = [m for m in got if SKIPPED.match(m.rstrip("\n"))]
    assert len(markers) == 1 and "this connection fell behind" in markers[0]
    lost = int(SKIPPED.match(markers[0].rstrip("\n")).group(1))  # type: ignore[union-attr]
    assert lost + len(got) - 1 == 5000 + 2


def test_the_watchers_summary_of_a_log_does_not_grow() -> None:
    summary = LogSummary()
    tracemalloc.start()
    try:
        for i in range(10_000):
            line = r2d("building", f"line {i} " + "y" * 200)
            summary.add(line, parse_repo2docker_line(line))
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.count == 10_000 and len(summary.recent) == LogSummary.RECENT
    assert held < 64 * 1024  # three lines, not 10,000 (about 2.5 MB)
