"""LaunchSlots: a few launches at a time, in arrival order, each told its place."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from swarmbinder.launchslots import LaunchSlots, auto_limit


async def take(slots: LaunchSlots, seen: list[int] | None = None) -> None:
    async with contextlib.aclosing(slots.take()) as turns:
        async for ahead in turns:
            if seen is not None:
                seen.append(ahead)


async def test_no_limit_never_waits() -> None:
    slots = LaunchSlots(0)
    seen: list[int] = []
    for _ in range(50):
        await take(slots, seen)
    assert seen == [] and slots.running == 0 and slots.queued == 0


async def test_launches_over_the_limit_wait_in_arrival_order_and_are_told_their_place() -> None:
    slots = LaunchSlots(2, report_interval=0.01)
    await take(slots)
    await take(slots)
    assert slots.running == 2
    order: list[str] = []
    places: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    async def launch(name: str) -> None:
        await take(slots, places[name])
        order.append(name)

    waiting = []
    for name in "abc":
        waiting.append(asyncio.create_task(launch(name)))
        await asyncio.sleep(0.02)
    assert slots.queued == 3 and order == []
    slots.give_back()
    await asyncio.sleep(0.05)
    assert order == ["a"]
    slots.give_back()
    await asyncio.sleep(0.05)
    assert order == ["a", "b"]
    slots.give_back()
    await asyncio.gather(*waiting)
    assert order == ["a", "b", "c"]
    # Each was told its place on arrival, and again when it moved up.
    assert places == {"a": [0], "b": [1, 0], "c": [2, 1, 0]}
    assert slots.running == 2 and slots.queued == 0


async def test_a_launch_that_leaves_the_queue_holds_no_slot_and_keeps_the_order() -> None:
    slots = LaunchSlots(1, report_interval=0.01)
    await take(slots)
    order: list[str] = []

    async def launch(name: str) -> None:
        await take(slots)
        order.append(name)

    first = asyncio.create_task(launch("first"))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(launch("second"))
    await asyncio.sleep(0.02)
    first.cancel()  # its client went away
    await asyncio.gather(first, return_exceptions=True)
    assert slots.queued == 1
    slots.give_back()
    await second
    assert order == ["second"]
    slots.give_back()
    assert slots.running == 0


async def test_a_slot_handed_over_as_its_launch_is_cancelled_is_passed_on() -> None:
    slots = LaunchSlots(1, report_interval=10)
    await take(slots)
    first = asyncio.create_task(take(slots))
    second = asyncio.create_task(take(slots))
    await asyncio.sleep(0.01)
    slots.give_back()  # to first, which is cancelled before it runs again
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert slots.running == 1 and slots.queued == 0


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="0 \\(none\\) or more"):
        LaunchSlots(-1)


async def test_a_larger_limit_lets_waiting_launches_start_at_once_a_smaller_one_as_they_end() -> (
    None
):
    slots = LaunchSlots(1, report_interval=10)
    await take(slots)
    waiting = [asyncio.create_task(take(slots)) for _ in range(3)]
    await asyncio.sleep(0.01)
    slots.resize(3)  # two more slots: two of the three start now
    await asyncio.sleep(0.01)
    assert [t.done() for t in waiting] == [True, True, False]
    slots.resize(1)  # three hold slots; none is free until two have ended
    slots.give_back()
    slots.give_back()
    await asyncio.sleep(0.01)
    assert not waiting[2].done()
    slots.give_back()
    await asyncio.wait_for(waiting[2], 1)
    assert slots.running == 1


def test_auto_limit_is_two_per_cpu_and_at_least_two() -> None:
    assert [auto_limit(c) for c in (0, 0.5, 1, 2, 16)] == [2, 2, 2, 4, 32]
    with pytest.raises(ValueError):
        LaunchSlots(0).resize(4)
