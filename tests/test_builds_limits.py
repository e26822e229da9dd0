"""Limits and housekeeping of builds, and what a build does when the engine or the registry
stops answering, against the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from build_fixtures import (
    EngineProxy,
    FixtureRegistry,
    GitRepo,
    build_settings,
    cleanup_builds,
    collect,
    git_repo,
    ground_request,
    make_request,
    remove_registry,
    run_id,
    running_registry,
    service_json,
    slow_dockerfile,
    swarm,
    wait_until_gone,
)

from swarmbinder.buildlogs import BuildLogRecorder, read_build_log, recording_manager
from swarmbinder.builds import BuildManager
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.events import Phase
from swarmbinder.store import Store
from swarmbinder.swarm import SwarmClient

__all__ = ["cleanup_builds", "run_id", "swarm"]  # fixtures, imported for pytest

pytestmark = pytest.mark.swarm


@pytest.fixture
def chatty_repo(testground: dict[str, Any]) -> Iterator[GitRepo]:
    """A Dockerfile repository whose build prints a line every 0.1 s for a minute: it is
    still printing when build_max_age stops it."""
    dockerfile = (
        f"FROM {testground['images']['singleuser']}\n"
        f"RUN echo {uuid.uuid4().hex} && "
        "for i in $(seq 1 600); do echo chatty line $i; sleep 0.1; done\n"
    )
    files = {"Dockerfile": dockerfile, "README.md": "A build that prints as it is stopped\n"}
    with git_repo(testground, files, "sbtest-chatty") as repo:
        yield repo


@pytest.fixture
def slow_repo(testground: dict[str, Any]) -> Iterator[GitRepo]:
    """A Dockerfile repository whose build sleeps for a minute."""
    with git_repo(testground, slow_dockerfile(testground, 60), "sbtest-slow") as repo:
        yield repo


async def build_and_read_spec(
    manager: BuildManager, testground: dict[str, Any], run_id: str
) -> tuple[dict[str, Any], list[Any]]:
    """Build the Dockerfile test repository; the build service's spec and the build's events."""
    req = ground_request(testground, "binder-dockerfile", run_id)
    build = await manager.request(req)
    spec: dict[str, Any] = service_json(req.service_name)["Spec"]
    return spec, await collect(build)


async def test_memory_limit_lands_on_the_service(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    limit = 3 * 1024**3
    manager = BuildManager(swarm, build_settings(testground, memory_limit=limit))
    try:
        spec, events = await build_and_read_spec(manager, testground, run_id)
    finally:
        await manager.close()
    assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == limit
    assert f"--build-memory-limit={limit}" in spec["TaskTemplate"]["ContainerSpec"]["Args"]
    assert events[-1].phase is Phase.BUILT


async def test_a_labelled_build_node_pins_builds_to_labelled_nodes(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    """Once any node carries swarmbinder.build=true, builds carry that constraint too, so
    losing every labelled node makes builds wait rather than land on a node kept free."""
    node = testground["node_hostname"]
    label = ["docker", "node", "update", "--label-add", "swarmbinder.build=true", node]
    await asyncio.to_thread(subprocess.run, label, check=True)
    manager = BuildManager(swarm, build_settings(testground))
    try:
        spec, events = await build_and_read_spec(manager, testground, run_id)
    finally:
        await manager.close()
        unlabel = ["docker", "node", "update", "--label-rm", "swarmbinder.build", node]
        await asyncio.to_thread(subprocess.run, unlabel, check=True)
    constraints = spec["TaskTemplate"]["Placement"]["Constraints"]
    assert "node.labels.swarmbinder.build==true" in constraints
    assert f"node.hostname=={node}" in constraints
    assert events[-1].phase is Phase.BUILT


async def test_housekeeping_removes_built_at_once_and_failed_later(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    keep_failed_for = 12.0
    settings = build_settings(testground, cleanup_interval=0.5, keep_failed_for=keep_failed_for)
    manager = BuildManager(swarm, settings)
    await manager.start()  # starts housekeeping; nobody calls cleanup() here
    try:
        good = await manager.request(ground_request(testground, "binder-dockerfile", run_id))
        bad = await manager.request(ground_request(testground, "binder-failing", run_id))
        good_events, bad_events = await asyncio.gather(collect(good), collect(bad))
        assert good_events[-1].phase is Phase.BUILT and bad_events[-1].phase is Phase.FAILED
        assert good.finished is not None and bad.finished is not None

        await wait_until_gone(swarm, good.name, 10)
        # the failed one stays until keep_failed_for has passed since it failed
        assert time.time() - bad.finished < keep_failed_for
        assert await swarm.inspect_service(bad.name) is not None
        await wait_until_gone(swarm, bad.name, keep_failed_for + 15)
        assert time.time() - bad.finished >= keep_failed_for
    finally:
        await manager.close()


async def test_an_overdue_build_is_stopped_and_says_it_timed_out(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    chatty_repo: GitRepo,
    cleanup_builds: None,
    tmp_path: Path,
) -> None:
    """The build prints all the while, so lines are still read as it is stopped (the race
    of issue 16 left such a build's record ``running``): its end reaches the store."""
    req = make_request(
        run_id, chatty_repo.url, chatty_repo.sha, registry=testground["registry"], label="slow"
    )
    async with await Store.open(str(tmp_path / "store.sqlite")) as store:
        recorder = BuildLogRecorder(store)
        await recorder.start()
        # Long enough for the clone and the first build step even on a busy machine, far
        # shorter than the repository's minute of printing.
        manager = recording_manager(swarm, build_settings(testground, max_age=15), recorder)
        try:
            build = await manager.request(req)
            events = await collect(build, within=40)
            # the service goes right after the failure event (removal is not instant)
            await wait_until_gone(swarm, req.service_name, 20)
        finally:
            await manager.close()
            await recorder.close()
        stored = await read_build_log(store, service_name=req.service_name)
    final = events[-1]
    assert final.phase is Phase.FAILED
    assert "timed out" in final.message and "build_max_age (15 s)" in final.message
    assert build.status is BuildStatus.FAILED
    assert any("chatty line" in e.message for e in events)  # stopped while it printed
    assert stored is not None
    assert stored.record.status == BuildStatus.FAILED and "build_max_age" in stored.record.reason
    assert stored.record.finished_at == build.finished
    assert any("chatty line" in line for line in stored.lines)


@contextlib.contextmanager
def proxy_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sbtest-engine-") as tmp:
        yield Path(tmp) / "docker.sock"


async def test_engine_gone_mid_build_fails_in_bounded_time_and_leaks_nothing(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    slow_repo: GitRepo,
    cleanup_builds: None,
) -> None:
    req = make_request(
        run_id, slow_repo.url, slow_repo.sha, registry=testground["registry"], label="cut"
    )
    with proxy_path() as path:
        proxy = EngineProxy(path)
        await proxy.start()
        proxied = SwarmClient.connect(proxy.url)
        settings = build_settings(testground, engine_grace=3, cleanup_interval=0.5)
        manager = BuildManager(proxied, settings)
        await manager.start()
        try:
            build = await manager.request(req)
            async with asyncio.timeout(60):
                async for event in build.events():
                    if event.phase is Phase.BUILDING:
                        break
            await proxy.cut()
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            events = await collect(build, within=30)
            took = loop.time() - cut_at
            final = events[-1]
            assert final.phase is Phase.FAILED
            assert "Docker engine stopped answering" in final.message
            assert took < 20  # engine_grace (3 s) plus a few polls: never a hang
            # still running in Swarm: nothing could remove it
            assert await swarm.inspect_service(req.service_name) is not None

            await proxy.start()  # the engine answers again
            await wait_until_gone(swarm, req.service_name, 30)
        finally:
            await manager.close()
            await proxy.cut()
            await proxied.close()


@pytest.fixture
def pushfail_repo(testground: dict[str, Any]) -> Iterator[GitRepo]:
    with git_repo(testground, slow_dockerfile(testground, 4), "sbtest-pushfail") as repo:
        yield repo


@pytest.fixture
def plain_registry(testground: dict[str, Any]) -> Iterator[FixtureRegistry]:
    """A registry of its own (fixtures run off the event loop: it takes seconds to start)."""
    with running_registry(testground, auth=False) as registry:
        yield registry


async def test_registry_gone_mid_build_fails_with_the_push_error(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    cleanup_builds: None,
    pushfail_repo: GitRepo,
    plain_registry: FixtureRegistry,
) -> None:
    repo, registry = pushfail_repo, plain_registry
    req = make_request(run_id, repo.url, repo.sha, registry=registry.host, label="pushfail")
    manager = BuildManager(swarm, build_settings(testground))
    try:
        build = await manager.request(req)
        async with asyncio.timeout(60):
            async for event in build.events():
                if event.phase is Phase.BUILDING:
                    break
        # the registry goes away while the image is still building
        await asyncio.to_thread(remove_registry, registry.service)
        events = await collect(build, within=120)
    finally:
        await manager.close()
    final = events[-1]
    assert final.phase is Phase.FAILED
    # repo2docker's push error, as the node's daemon reported it
    assert f"{registry.host}/v2/" in final.message and "connection refused" in final.message
