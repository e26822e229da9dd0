from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from swarmbinder.fanout import Fanout, Subscription


async def read_n(sub: Subscription[int], n: int) -> list[int]:
    return [await anext(sub) for _ in range(n)]


async def drain_ready(sub: Subscription[int]) -> list[int]:
    """What a subscription holds right now; reading queued items never suspends."""
    return await read_n(sub, sub.pending)


async def read_all(sub: Subscription[int]) -> list[int]:
    return [item async for item in sub]


async def test_tail_then_live_with_no_gap_or_duplicate_under_interleaving() -> None:
    rng = random.Random(7)
    fanout: Fanout[int] = Fanout(tail_size=25, queue_size=100_000)
    published: list[int] = []
    watchers: list[tuple[int, Subscription[int], list[int]]] = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(300):
            for _ in range(rng.randrange(0, 40)):
                item = len(published)
                fanout.publish(item)
                published.append(item)
            if rng.random() < 0.1:
                sub = await stack.enter_async_context(fanout.subscribe())
                watchers.append((len(published), sub, []))
            for _, sub, got in watchers:
                # read part of what is queued: the rest stays queued across later publishes
                got.extend(await read_n(sub, rng.randrange(0, sub.pending + 1)))
        fanout.finish()
        for _, sub, got in watchers:
            got.extend(await read_all(sub))
    assert len(watchers) > 10
    for joined_at, sub, got in watchers:
        assert got == published[max(0, joined_at - 25) :]
        assert sub.dropped == 0


async def test_concurrent_consumer_sees_every_item_once() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10, queue_size=1000)
    for i in range(30):
        fanout.publish(i)
    caught_up: asyncio.Future[None] | None = None
    last = 29
    subscribed = asyncio.Event()

    async def consume() -> list[int]:
        got: list[int] = []
        async with fanout.subscribe() as sub:
            subscribed.set()
            async for item in sub:
                got.append(item)
                if item == last and caught_up is not None and not caught_up.done():
                    caught_up.set_result(None)
        return got

    task = asyncio.create_task(consume())
    await subscribed.wait()
    item = 30
    for burst in range(1, 60):
        caught_up = asyncio.get_running_loop().create_future()
        for _ in range(burst):
            fanout.publish(item)
            item += 1
        last = item - 1
        await caught_up
    fanout.finish(-1)
    assert await task == [*range(20, item), -1]


async def test_thousand_subscribers_that_keep_up_get_everything_exactly_once() -> None:
    n_subs, bursts, burst_size = 1000, 20, 25
    fanout: Fanout[int] = Fanout(tail_size=5, queue_size=burst_size)
    loop = asyncio.get_running_loop()
    all_subscribed = loop.create_future()
    burst_done: asyncio.Future[None] = loop.create_future()
    subscribed = 0
    finished_burst = 0
    results: list[list[int]] = []
    drops: list[int] = []
    max_pending = 0

    async def consume() -> None:
        nonlocal subscribed, finished_burst, burst_done, max_pending
        got: list[int] = []
        async with fanout.subscribe() as sub:
            subscribed += 1
            if subscribed == n_subs:
                all_subscribed.set_result(None)
            async for item in sub:
                max_pending = max(max_pending, sub.pending)
                got.append(item)
                if item % burst_size == burst_size - 1:
                    finished_burst += 1
                    if finished_burst == n_subs:
                        burst_done.set_result(None)
            drops.append(sub.dropped)
        results.append(got)

    tasks = [asyncio.create_task(consume()) for _ in range(n_subs)]
    await all_subscribed
    assert fanout.subscriber_count == n_subs
    for b in range(bursts):
        finished_burst = 0
        burst_done = loop.create_future()
        for i in range(b * burst_size, (b + 1) * burst_size):
            fanout.publish(i)
        await burst_done
    fanout.finish()
    await asyncio.gather(*tasks)
    expected = list(range(bursts * burst_size))
    assert len(results) == n_subs
    assert all(got == expected for got in results)
    assert drops == [0] * n_subs
    assert max_pending < burst_size
    assert fanout.subscriber_count == 0


async def test_slow_subscriber_drops_while_fast_one_gets_everything() -> None:
    fanout: Fanout[int] = Fanout(tail_size=0, queue_size=10)
    loop = asyncio.get_running_loop()
    caught_up: asyncio.Future[None] = loop.create_future()
    wanted = -1
    fast: list[int] = []

    async def fast_reader(sub: Subscription[int]) -> None:
        async for item in sub:
            fast.append(item)
            if item == wanted:
                caught_up.set_result(None)

    async with fanout.subscribe() as slow, fanout.subscribe() as quick:
        task = asyncio.create_task(fast_reader(quick))
        for start in range(0, 100, 5):
            caught_up = loop.create_future()
            for i in range(start, start + 5):
                fanout.publish(i)
                assert slow.pending <= 10
            wanted = start + 4
            await caught_up
        fanout.finish(999)
        await task
        slow_got = await read_all(slow)
    assert fast == [*range(100), 999]
    assert quick.dropped == 0
    assert slow_got == [*range(90, 100), 999]
    assert slow.dropped == 90


async def test_final_item_is_never_dropped() -> None:
    fanout: Fanout[int] = Fanout(tail_size=2, queue_size=3)
    async with fanout.subscribe() as sub:
        for i in range(50):
            fanout.publish(i)
        fanout.finish(-1)
        assert sub.pending == 3
        assert await read_all(sub) == [47, 48, 49, -1]
        assert sub.dropped == 47


async def test_finish_without_final_ends_a_waiting_consumer() -> None:
    fanout: Fanout[int] = Fanout(tail_size=2)
    subscribed = asyncio.Event()

    async def consume() -> list[int]:
        async with fanout.subscribe() as sub:
            subscribed.set()
            return await read_all(sub)

    task = asyncio.create_task(consume())
    await subscribed.wait()
    fanout.publish(1)
    fanout.finish()
    assert await task == [1]
    assert fanout.finished


async def test_subscribe_after_finish_gets_tail_and_final_and_ends() -> None:
    fanout: Fanout[int] = Fanout(tail_size=3)
    for i in range(10):
        fanout.publish(i)
    fanout.finish(-1)
    for _ in range(2):
        async with fanout.subscribe() as sub:
            assert fanout.subscriber_count == 0
            assert await read_all(sub) == [7, 8, 9, -1]
    fanout_no_final: Fanout[int] = Fanout(tail_size=3)
    fanout_no_final.publish(1)
    fanout_no_final.finish()
    async with fanout_no_final.subscribe() as sub:
        assert await read_all(sub) == [1]


async def test_cancelling_a_consumer_unsubscribes_it() -> None:
    fanout: Fanout[int] = Fanout(tail_size=1)
    subscribed = asyncio.Event()
    got: list[int] = []

    async def consume() -> None:
        async with fanout.subscribe() as sub:
            subscribed.set()
            async for item in sub:
                got.append(item)

    task = asyncio.create_task(consume())
    await subscribed.wait()
    assert fanout.subscriber_count == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fanout.subscriber_count == 0
    fanout.publish(1)
    assert got == []


async def test_leaving_early_or_by_error_unsubscribes_and_frees_the_queue() -> None:
    fanout: Fanout[int] = Fanout(tail_size=0)
    async with fanout.subscribe() as sub:
        fanout.publish(1)
        fanout.publish(2)
        async for _item in sub:
            break
    assert fanout.subscriber_count == 0
    assert sub.pending == 0
    assert await read_all(sub) == []

    with pytest.raises(ConnectionResetError):
        async with fanout.subscribe():
            assert fanout.subscriber_count == 1
            raise ConnectionResetError
    assert fanout.subscriber_count == 0


async def test_memory_is_bounded_for_a_subscriber_that_never_reads() -> None:
    fanout: Fanout[int] = Fanout(tail_size=50, queue_size=200)
    async with fanout.subscribe() as sub:
        for i in range(10_000):
            fanout.publish(i)
            assert sub.pending <= 200
        assert sub.pending == 200
        assert sub.dropped == 9_800
        assert await drain_ready(sub) == list(range(9_800, 10_000))
        async with fanout.subscribe() as late:
            assert late.pending == 50
            assert await drain_ready(late) == list(range(9_950, 10_000))


async def test_tail_longer_than_queue_counts_the_excess_as_dropped() -> None:
    fanout: Fanout[int] = Fanout(tail_size=8, queue_size=5)
    for i in range(8):
        fanout.publish(i)
    async with fanout.subscribe() as sub:
        assert sub.dropped == 3
        assert await drain_ready(sub) == [3, 4, 5, 6, 7]


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        Fanout[int](tail_size=-1)
    with pytest.raises(ValueError):
        Fanout[int](tail_size=1, queue_size=0)
    fanout: Fanout[int] = Fanout(tail_size=1)
    fanout.finish()
    with pytest.raises(RuntimeError):
        fanout.publish(1)
    with pytest.raises(RuntimeError):
        fanout.finish()


async def test_joining_while_a_producer_task_runs_loses_and_repeats_nothing() -> None:
    fanout: Fanout[int] = Fanout(tail_size=4, queue_size=10_000)
    total = 400
    published = 0

    async def produce() -> None:
        nonlocal published
        for i in range(total):
            fanout.publish(i)
            published += 1
            await asyncio.sleep(0)  # a bare yield to the loop, not a wait for time
        fanout.finish(-1)

    async def watch() -> tuple[int, list[int]]:
        async with fanout.subscribe() as sub:
            return published, await read_all(sub)

    producer = asyncio.create_task(produce())
    watchers = []
    for _ in range(total // 10):
        watchers.append(asyncio.create_task(watch()))
        for _ in range(10):
            await asyncio.sleep(0)
    await producer
    results = await asyncio.gather(*watchers)
    assert len({joined for joined, _ in results}) > 20  # joins were spread over the run
    for joined, got in results:
        assert got == [*range(max(0, joined - 4), total), -1]


async def test_a_size_budget_bounds_the_tail_and_each_queue_by_weight() -> None:
    """Few but heavy items (64 KiB log lines) are bounded by weight as well as by count; one
    item heavier than the budget is still kept, alone."""
    fanout: Fanout[str] = Fanout(tail_size=100, queue_size=100, size_of=len, max_size=1000)
    async with fanout.subscribe() as slow:
        for i in range(50):
            fanout.publish(str(i % 10) * 300)
        assert slow.pending == 3 and slow.dropped == 47
        async with fanout.subscribe() as late:
            assert late.missed == 47 and late.pending == 3 and late.dropped == 0
        fanout.publish("x" * 5000)
        assert slow.pending == 1
        async with fanout.subscribe() as later:
            assert later.missed == 50 and [await anext(later)] == ["x" * 5000]


async def test_missed_counts_what_left_the_tail_before_subscribing() -> None:
    fanout: Fanout[int] = Fanout(tail_size=5)
    for i in range(3):
        fanout.publish(i)
    async with fanout.subscribe() as early:
        assert early.missed == 0
    for i in range(3, 12):
        fanout.publish(i)
    async with fanout.subscribe() as late:
        assert late.missed == 7
        assert await drain_ready(late) == [7, 8, 9, 10, 11]


def test_a_size_budget_needs_both_parts() -> None:
    with pytest.raises(ValueError):
        Fanout[str](tail_size=1, size_of=len)
    with pytest.raises(ValueError):
        Fanout[str](tail_size=1, max_size=10)


# --------------------------------------------------------------------------- direct sinks


class Sink:
    """Takes items while ``accept`` is true, in the order they come."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.accept = True
        self.calls = 0

    def __call__(self, item: int) -> bool:
        self.calls += 1
        if self.accept:
            self.taken.append(item)
        return self.accept


async def waiting_reader(sub: Subscription[int], got: list[int]) -> asyncio.Task[None]:
    """A task reading ``sub`` into ``got``, already waiting for its next item."""

    async def read() -> None:
        async for item in sub:
            got.append(item)

    task = asyncio.create_task(read())
    await asyncio.sleep(0)
    return task


async def test_a_waiting_reader_s_items_go_to_its_sink_without_waking_it() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10)
    sink, got = Sink(), []
    async with fanout.subscribe() as sub:
        sub.set_sink(sink)
        reader = await waiting_reader(sub, got)
        for i in range(5):
            fanout.publish(i)
        await asyncio.sleep(0)
        assert sink.taken == [0, 1, 2, 3, 4]
        assert got == [] and sub.pending == 0
        fanout.finish(99)
        await reader
    assert got == [99]  # the end always comes through iteration


async def test_the_tail_and_items_published_while_busy_come_through_iteration() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10)
    fanout.publish(0)
    sink, got = Sink(), []
    async with fanout.subscribe() as sub:
        sub.set_sink(sink)
        fanout.publish(1)  # the reader has not asked yet: queued
        reader = await waiting_reader(sub, got)
        assert got == [0, 1]
        fanout.publish(2)
        fanout.finish()
        await reader
    assert (sink.taken, got) == ([2], [0, 1])


async def test_a_refused_item_is_queued_and_order_holds_until_the_reader_catches_up() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10)
    sink, got = Sink(), []
    async with fanout.subscribe() as sub:
        sub.set_sink(sink)
        reader = await waiting_reader(sub, got)
        fanout.publish(0)
        sink.accept = False
        fanout.publish(1)  # refused: queued, the reader is woken
        sink.accept = True
        fanout.publish(2)  # queued behind 1, though the sink would take it now
        assert sink.taken == [0] and sub.pending == 2
        await asyncio.sleep(0)
        assert got == [1, 2]
        fanout.publish(3)  # the reader waits again: the sink's
        fanout.finish()
        await reader
    assert sink.taken == [0, 3]
    assert sorted(sink.taken + got) == [0, 1, 2, 3]


async def test_a_slow_sink_reader_is_bounded_like_any_subscriber() -> None:
    fanout: Fanout[int] = Fanout(tail_size=3, queue_size=5)
    sink = Sink()
    sink.accept = False  # a client that never keeps up
    async with fanout.subscribe() as sub:
        sub.set_sink(sink)
        got: list[int] = []
        reader = await waiting_reader(sub, got)
        reader.cancel()  # and never reads again
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        for i in range(1000):
            fanout.publish(i)
        assert sub.pending == 5 and sub.dropped == 995
        assert sink.calls == 0  # nobody waits: the sink is not asked


async def test_a_sink_that_raises_is_dropped_and_its_item_queued() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10)
    calls: list[int] = []

    def broken(item: int) -> bool:
        calls.append(item)
        raise RuntimeError("boom")

    got: list[int] = []
    async with fanout.subscribe() as sub:
        sub.set_sink(broken)
        reader = await waiting_reader(sub, got)
        fanout.publish(1)
        await asyncio.sleep(0)
        fanout.publish(2)
        fanout.finish()
        await reader
    assert calls == [1] and got == [1, 2]


async def test_other_subscribers_get_an_item_whatever_one_sink_does() -> None:
    fanout: Fanout[int] = Fanout(tail_size=10)
    refusing, taking, plain_got = Sink(), Sink(), []
    refusing.accept = False
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(fanout.subscribe()) for _ in range(3)]
        subs[0].set_sink(refusing)
        subs[1].set_sink(taking)
        gots: list[list[int]] = [[], [], plain_got]
        readers = [await waiting_reader(sub, got) for sub, got in zip(subs, gots, strict=True)]
        fanout.publish(7)
        assert taking.taken == [7] and refusing.calls == 1
        await asyncio.sleep(0)
        assert plain_got == [7] and subs[0].pending == 0
        fanout.finish()
        await asyncio.gather(*readers)
