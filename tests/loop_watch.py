"""Every async test fails if a callback blocks its event loop, as aiohttp's own suite fails
blocking calls: while one callback runs, every other request of the service waits.

asyncio's debug mode times each callback and logs those slower than the loop's
``slow_callback_duration``; the watch collects those reports and fails the test with them,
naming the callback. Two corrections keep it honest on a busy machine:

* debug mode also records where each coroutine was created, which has nothing to do with
  timing and makes coroutine-heavy code 4 to 20 times slower (the callbacks it reports are
  that overhead), so that part stays off;
* a callback's time includes the time the kernel kept the loop's thread off the CPU, which on
  a loaded machine is most of it (a 0.2 s redraw of the admin console took 6.7 s at a load
  of 8 on 2 cores). On Linux that wait (``/proc/thread-self/schedstat``) is taken off before
  the limit applies: what remains is the callback's own work or its blocking call.

The conftest imports the hook and fixtures below, which puts them to work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from unittest import mock

import pytest
from pytest_asyncio import is_async_test

#: An async test fails when one callback holds its event loop this long (seconds), not
#: counting time spent waiting for a CPU. The slowest callbacks of the suite (textual
#: redrawing a screen, a fan-out to a thousand subscribers) work for up to 0.4 s on a core of a
#: loaded 2-core machine; a second leaves slack for slower machines and still catches what
#: blocks for real: a subprocess, a socket, a sleep.
LOOP_BLOCK_LIMIT = 1.0
#: What asyncio's debug mode logs for a slow callback (asyncio/base_events.py).
SLOW_CALLBACK_MESSAGE = "Executing %s took %.3f seconds"
#: How often the thread's CPU wait is read, so a reading from just before a callback exists.
SAMPLE_INTERVAL = 0.1
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def cpu_wait() -> float:
    """Seconds this thread has waited on a run queue since it started; 0 where unknown."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class _SlowCallbacks(logging.Handler):
    """The callbacks asyncio reported as holding the loop past the limit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []
        self._failed_on = 0
        self._wait_before = cpu_wait()
        self._sampler: asyncio.TimerHandle | None = None

    def sample(self) -> None:
        """Read the CPU wait now, and again every SAMPLE_INTERVAL while the loop runs."""
        self._wait_before = cpu_wait()
        loop = asyncio.get_running_loop()
        self._sampler = loop.call_later(SAMPLE_INTERVAL, self.sample)

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()

    def emit(self, record: logging.LogRecord) -> None:
        # Logged by the loop's thread right after the callback ended.
        if record.msg != SLOW_CALLBACK_MESSAGE or not isinstance(record.args, tuple):
            return
        took = float(record.args[1])
        # Since the last sample, which is at most SAMPLE_INTERVAL older than the callback.
        waited = min(cpu_wait() - self._wait_before, took)
        if took - waited >= LOOP_BLOCK_LIMIT:
            self.reports.append(
                f"{record.getMessage()}, {waited:.3f} s of it waiting for a CPU "
                f"(limit {LOOP_BLOCK_LIMIT:g} s)"
            )

    def forget(self) -> None:
        self._failed_on = len(self.reports)

    def fail_on_new_reports(self, where: str) -> None:
        new, self._failed_on = self.reports[self._failed_on :], len(self.reports)
        if new:
            pytest.fail(f"the event loop was blocked {where}: " + "; ".join(new), pytrace=False)


_SLOW_CALLBACKS = pytest.StashKey[_SlowCallbacks]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    watch = item.stash.get(_SLOW_CALLBACKS, None)
    try:
        result = yield
    except BaseException:
        if watch is not None:
            watch.forget()  # the test failed on its own; its captured log shows any block
        raise
    if watch is not None:  # the test fails, rather than erring at teardown
        watch.fail_on_new_reports("during the test or its setup")
    return result


@pytest.fixture(autouse=True)
def event_loop_never_blocked(request: pytest.FixtureRequest) -> None:
    """Watch the event loop of every async test (see the module docstring)."""
    if is_async_test(request.node):
        request.getfixturevalue(watched_event_loop.__name__)


@pytest.fixture
async def watched_event_loop(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    # A function-scoped async fixture runs on the test's own loop when that loop is function
    # scoped too, as pyproject.toml leaves every test's (asyncio_mode auto, default scopes).
    marker = request.node.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope", "function") if marker else "function"
    if scope != "function":
        pytest.fail(f"the event loop watch sees function-scoped loops only, not {scope!r} ones")
    loop = asyncio.get_running_loop()
    watch = _SlowCallbacks()
    request.node.stash[_SLOW_CALLBACKS] = watch
    logger = logging.getLogger("asyncio")
    logger.addHandler(watch)
    slow_callback_duration = loop.slow_callback_duration
    with mock.patch.object(loop, "_set_coroutine_origin_tracking", lambda enabled: None):
        loop.set_debug(True)
        loop.slow_callback_duration = LOOP_BLOCK_LIMIT
        watch.sample()
        try:
            yield
        finally:
            watch.stop()
            loop.set_debug(False)
            loop.slow_callback_duration = slow_callback_duration
            logger.removeHandler(watch)
    watch.fail_on_new_reports("at teardown")
