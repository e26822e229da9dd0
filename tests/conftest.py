"""Shared fixtures.

Tests marked ``swarm`` run against the real test ground (``stack/testground up``): a Docker
engine in swarm mode, the stack's registry as a Swarm service, and a git smart-HTTP server with
the test repositories. ``testground`` brings it up once per session (idempotent and cached, so
a warm run costs a few seconds) and yields the JSON it prints.

Every async test, in every tier, fails if a callback blocks its event loop for
:data:`LOOP_BLOCK_LIMIT` seconds (``event_loop_never_blocked``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pytest_asyncio import is_async_test

REPO_ROOT = Path(__file__).resolve().parent.parent

# -- the event loop is never blocked -----------------------------------------------------------

#: An async test fails when one callback holds its event loop this long (seconds). The slowest
#: callbacks of the suite take up to 0.5 s on a 2-core machine with a load of 3 to 13 (textual
#: redrawing a screen, a fan-out to a thousand subscribers); twice that is slack for a busier
#: machine, and still catches what blocks for real: a subprocess, a socket, a sleep.
LOOP_BLOCK_LIMIT = 1.0
#: What asyncio's debug mode logs for such a callback (asyncio/base_events.py).
SLOW_CALLBACK_MESSAGE = "Executing %s took %.3f seconds"


class _SlowCallbacks(logging.Handler):
    """The callbacks asyncio reported as holding the loop past the limit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []
        self._failed_on = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == SLOW_CALLBACK_MESSAGE:
            self.reports.append(record.getMessage())

    def forget(self) -> None:
        self._failed_on = len(self.reports)

    def fail_on_new_reports(self, where: str) -> None:
        new, self._failed_on = self.reports[self._failed_on :], len(self.reports)
        if new:
            pytest.fail(
                f"the event loop was blocked {where} (limit {LOOP_BLOCK_LIMIT:g} s): "
                + "; ".join(new),
                pytrace=False,
            )


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
    """An async test fails if a callback blocks its event loop, as aiohttp's own suite fails
    blocking calls: while one callback runs, every other request of the service waits."""
    if is_async_test(request.node):
        request.getfixturevalue(_watched_event_loop.__name__)


@pytest.fixture
async def _watched_event_loop(request: pytest.FixtureRequest) -> AsyncIterator[None]:
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
    # Debug mode times every callback; it also records where each coroutine was created,
    # which has nothing to do with timing and makes coroutine-heavy code 4 to 20 times slower
    # (the callbacks it would report are that overhead), so that part stays off.
    with mock.patch.object(loop, "_set_coroutine_origin_tracking", lambda enabled: None):
        loop.set_debug(True)
        loop.slow_callback_duration = LOOP_BLOCK_LIMIT
        try:
            yield
        finally:
            loop.set_debug(False)
            loop.slow_callback_duration = slow_callback_duration
            logger.removeHandler(watch)
    watch.fail_on_new_reports("at teardown")


@pytest.fixture(scope="session")
def testground() -> Iterator[dict[str, Any]]:
    """The test ground's description: docker_host, registry, git_base_url, repos, images."""
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "testground"), "up", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"stack/testground up failed with exit code {proc.returncode}")
    ground: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    os.environ.setdefault("DOCKER_HOST", ground["docker_host"])
    started = time.time()
    yield ground
    asyncio.run(_remove_finished_test_builds(ground, since=started))


async def _remove_finished_test_builds(ground: dict[str, Any], since: float) -> None:
    """Build services this session's apps left when they stopped. A running service keeps its
    finished builds for housekeeping and the next start adopts them, but each test serves under
    an image prefix of its own that no later service adopts. Only finished builds created during
    this session are removed, so another session's builds on a shared engine stay."""
    from swarmbinder.swarm import SwarmClient

    async with SwarmClient.connect(ground["docker_host"]) as swarm:
        for service in await swarm.list_services({"swarmbinder.kind": "build"}):
            labels = service.labels
            if not labels.get("swarmbinder.image", "").startswith(ground["image_prefix"]):
                continue
            if float(labels.get("swarmbinder.created") or 0) < since:
                continue
            tasks = await swarm.tasks(service.name)
            if tasks and all(task.terminal for task in tasks):
                await swarm.remove_service(service.name)


def _build_and_push(dockerfile: str, tag: str) -> None:
    """Build an image from a Dockerfile given as text and push it to the test ground registry."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    subprocess.run(["docker", "push", "-q", tag], capture_output=True, check=True, timeout=300)


@pytest.fixture(scope="session")
def launchable_image(testground: dict[str, Any]) -> Iterator[str]:
    """An image under the hub's image prefix that runs jupyterhub-singleuser, in the registry.

    FROM the single-user base with one label layer: the push shares every other layer, so it
    takes about a second.
    """
    run = uuid.uuid4().hex[:10]
    tag = f"{testground['image_prefix']}launchtest-jupyter:{run}"
    _build_and_push(
        f"FROM {testground['images']['singleuser']}\nLABEL swarmbinder.test-run={run}\n", tag
    )
    yield tag
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


@pytest.fixture(scope="session")
def image_without_jupyter(testground: dict[str, Any]) -> Iterator[str]:
    """An image under the hub's image prefix that has no jupyterhub-singleuser at all."""
    run = uuid.uuid4().hex[:10]
    tag = f"{testground['image_prefix']}launchtest-nojupyter:{run}"
    base = testground["base_images"]["debian"]
    _build_and_push(f"FROM {base}\nLABEL swarmbinder.test-run={run}\n", tag)
    yield tag
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)
