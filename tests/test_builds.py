"""Builds as one-shot Swarm services: unit tests of the spec, real tests on the test ground."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from swarmbinder.buildjob import BuildRequest, BuildSettings, repo2docker_args
from swarmbinder.builds import BuildManager
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build, announces_push_of, as_log_event, failure_reason
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.labels import KIND_BUILD
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.swarm import SwarmClient, TaskState, TaskStateName


def request(
    slug: str = "org-repo", ref: str = "a" * 40, url: str = "https://x/r.git"
) -> BuildRequest:
    return BuildRequest(
        provider="git",
        spec="x/y",
        repo_url=url,
        ref=ref,
        build_slug=slug,
        image=f"reg/{slug}:{ref}",
    )


# ----------------------------------------------------------------------------- unit


def test_argv_cannot_be_read_as_options() -> None:
    hostile = request(ref="--help", url="--upload-pack=touch /tmp/x")
    args = repo2docker_args(hostile, BuildSettings(builder_image="b", appendix="RUN echo hi"))
    assert "--ref=--help" in args
    assert args[-2:] == ["--", "--upload-pack=touch /tmp/x"]
    assert "--push" in args and "--no-run" in args and "--json-logs" in args
    assert "--appendix=RUN echo hi" in args


def test_only_repo2docker_announcing_this_image_ends_a_build_early() -> None:
    image = "reg/org-repo:" + "a" * 40

    def line(message: str, phase: str = "pushing") -> BuildEvent:
        return as_log_event(json.dumps({"message": message, "phase": phase}))

    assert announces_push_of(line(f"Successfully pushed {image}"), image)
    assert not announces_push_of(line(f"Successfully pushed {image}x"), image)
    assert not announces_push_of(line(f"Successfully pushed {image}", "building"), image)
    # A build step printing repo2docker's line is the message of a building line, not a line.
    forged = json.dumps({"message": f"Successfully pushed {image}", "phase": "pushing"})
    assert not announces_push_of(line(forged + "\n", "building"), image)
    assert not announces_push_of(as_log_event(f"Successfully pushed {image}"), image)


def test_no_push_without_registry() -> None:
    args = repo2docker_args(request(), BuildSettings(builder_image="b", push=False))
    assert "--push" not in args


def task(state: str, exit_code: int | None = None, error: str = "") -> TaskState:
    return TaskState(
        id="t",
        service_id="s",
        node_id="n",
        state=TaskStateName(state),
        desired_state="complete",
        message="",
        error=error,
        exit_code=exit_code,
        container_id="",
        timestamp="",
    )


def test_failure_reason_prefers_repo2docker_error() -> None:
    lines = [
        '{"message": "Step 2/5 : RUN false", "phase": "building"}',
        '{"message": "The command returned a non-zero code: 3", "phase": "failed"}',
    ]
    assert failure_reason(lines, task("failed", 1)) == "The command returned a non-zero code: 3"


def test_failure_reason_falls_back_to_task_error_and_exit_code() -> None:
    assert "no such image" in failure_reason([], task("rejected", None, "no such image"))
    reason = failure_reason(["plain output"], task("failed", 137))
    assert reason.startswith("repo2docker exited with code 137") and "plain output" in reason


# ----------------------------------------------------------------------------- real swarm


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    client = SwarmClient.connect()
    yield client
    await client.close()


@pytest.fixture
async def cleanup_builds(swarm: SwarmClient, run_id: str) -> AsyncIterator[None]:
    yield
    for service in await swarm.list_services({KIND_LABEL: KIND_BUILD}):
        if run_id in service.labels.get("swarmbinder.build-slug", ""):
            await swarm.remove_service(service.id)


def settings(ground: dict[str, Any], **overrides: Any) -> BuildSettings:
    return BuildSettings(
        builder_image=ground["images"]["builder"], sticky=True, cleanup_interval=3600, **overrides
    )


def ground_request(
    ground: dict[str, Any], repo: str, run_id: str, commit: int = -1
) -> BuildRequest:
    info = ground["repos"][repo]
    slug = f"test-{run_id}-{repo}"
    ref = info["commits"][commit]
    return BuildRequest(
        provider="git",
        spec=f"{info['url']}/{ref}",
        repo_url=info["url"],
        ref=ref,
        build_slug=slug,
        image=f"{ground['registry']}/sbtest-{slug}:{ref}",
    )


def manifest_exists(ground: dict[str, Any], image: str) -> bool:
    name, tag = image.removeprefix(ground["registry"] + "/").rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{ground['registry']}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10):
            return True
    except urllib.error.HTTPError:
        return False


async def collect(build: Build, within: float = 240) -> list[BuildEvent]:
    events = []
    async with asyncio.timeout(within):
        async for event in build.events():
            events.append(event)
    return events


@pytest.mark.swarm
async def test_build_streams_phases_and_pushes_the_image(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    manager = BuildManager(swarm, settings(testground))
    await manager.start()
    try:
        req = ground_request(testground, "binder-dockerfile", run_id)
        build = await manager.request(req)
        events = await collect(build)
    finally:
        await manager.close()
    phases = [e.phase for e in events]
    assert {Phase.FETCHING, Phase.BUILDING, Phase.PUSHING} <= set(phases)
    assert phases[-1] is Phase.BUILT and events[-1].fields["imageName"] == req.image
    assert build.status is BuildStatus.BUILT
    assert build.node == testground["node_hostname"]  # sticky placement on the only node
    assert manifest_exists(testground, req.image)
    service = await swarm.inspect_service(req.service_name)
    assert service is not None and service.labels["swarmbinder.image"] == req.image
    assert f"node.hostname=={testground['node_hostname']}" in service.constraints


@pytest.fixture
def lingering_builder(testground: dict[str, Any], run_id: str) -> Iterator[str]:
    """A builder that says repo2docker's last line for its image, then takes 60 s to exit."""
    tag = f"swarmbinder-test/lingering-builder:{run_id}"
    script = (
        'for a; do case "$a" in --image-name=*) image="${a#--image-name=}";; esac; done; '
        'printf \'{"message": "Successfully pushed %s", "phase": "pushing"}\\n\' "$image"; '
        "exec sleep 60"
    )
    dockerfile = (
        f"FROM {testground['images']['builder']}\n"
        f"ENTRYPOINT {json.dumps(['sh', '-c', script, 'builder'])}\n"
    )
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"], input=dockerfile, text=True, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


@pytest.mark.swarm
async def test_built_comes_with_the_push_not_with_the_builders_exit(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    lingering_builder: str,
    cleanup_builds: None,
) -> None:
    manager = BuildManager(
        swarm, BuildSettings(builder_image=lingering_builder, sticky=True, cleanup_interval=3600)
    )
    await manager.start()
    try:
        req = ground_request(testground, "binder-dockerfile", run_id)
        events = await collect(await manager.request(req), within=45)
        assert events[-1].phase is Phase.BUILT, events[-3:]
        assert events[-1].fields["imageName"] == req.image
        # Published while the builder still runs: Swarm has not seen it exit.
        tasks = await swarm.tasks(req.service_name)
        assert not tasks[-1].terminal, tasks[-1]
        # The finished build's service goes at the next cleanup, its running builder with it.
        assert req.service_name in await manager.cleanup()
        assert await swarm.inspect_service(req.service_name) is None
    finally:
        await manager.close()


@pytest.mark.swarm
async def test_ten_concurrent_requests_share_one_service(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    managers = [BuildManager(swarm, settings(testground)) for _ in range(2)]
    try:
        req = ground_request(testground, "binder-two-commits", run_id)
        # Two managers (as two replicas would) and ten requests racing for one build.
        builds = await asyncio.gather(*(managers[i % 2].request(req) for i in range(10)))
        results = await asyncio.gather(*(collect(b) for b in builds))
    finally:
        for manager in managers:
            await manager.close()
    services = [
        s
        for s in await swarm.list_services({KIND_LABEL: KIND_BUILD})
        if s.labels.get("swarmbinder.build-slug") == req.build_slug
    ]
    assert len(services) == 1
    assert all(events[-1].phase is Phase.BUILT for events in results)


@pytest.mark.swarm
async def test_failed_build_says_why_and_a_new_request_retries(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    manager = BuildManager(swarm, settings(testground))
    try:
        req = ground_request(testground, "binder-failing", run_id)
        build = await manager.request(req)
        events = await collect(build)
        assert events[-1].phase is Phase.FAILED
        assert "returned a non-zero code: 3" in events[-1].message
        assert events[-1].message.endswith("\n")
        assert any("fails on purpose" in e.message for e in events)
        retry = await manager.request(req)
        assert retry is not build
    finally:
        await manager.close()


@pytest.mark.swarm
async def test_bad_ref_fails_fast_with_repo2docker_message(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    manager = BuildManager(swarm, settings(testground))
    try:
        good = ground_request(testground, "binder-dockerfile", run_id)
        bad = BuildRequest(**{**good.__dict__, "ref": "f" * 40, "image": good.image + "bad"})
        events = await collect(await manager.request(bad), within=60)
    finally:
        await manager.close()
    assert events[-1].phase is Phase.FAILED
    # repo2docker's own reason, naming the ref it could not check out
    assert "f" * 40 in events[-1].message and "Error during build" in events[-1].message


@pytest.mark.swarm
async def test_concurrency_limit_queues_visibly_then_runs(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    manager = BuildManager(swarm, settings(testground, concurrent_limit=1))
    try:
        first = await manager.request(ground_request(testground, "binder-dockerfile", run_id))
        second = await manager.request(ground_request(testground, "binder-two-commits", run_id, 0))
        assert second.status is BuildStatus.QUEUED
        assert manager.queue_position(second.name) == 1
        second_events = asyncio.create_task(collect(second))
        first_events = await collect(first)
        events = await second_events
    finally:
        await manager.close()
    assert first_events[-1].phase is Phase.BUILT
    waiting = [e for e in events if e.phase is Phase.WAITING]
    assert waiting and "position 1" in waiting[0].message
    assert events[-1].phase is Phase.BUILT


@pytest.mark.swarm
async def test_build_survives_a_restart_of_the_manager(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    req = ground_request(testground, "binder-two-commits", run_id, 0)
    first = BuildManager(swarm, settings(testground))
    build = await first.request(req)
    async with asyncio.timeout(60):
        async for event in build.events():
            if event.phase in (Phase.FETCHING, Phase.BUILDING):
                break
    await first.close()  # the service keeps running in Swarm

    # Another deployment on the same swarm (another image_prefix) leaves the build alone.
    other = BuildManager(swarm, settings(testground, image_prefix="127.0.0.1:1/other-"))
    try:
        await other.recover()
        assert other.get(req.service_name) is None
    finally:
        await other.close()

    second = BuildManager(swarm, settings(testground, image_prefix=req.image.split("/")[0]))
    try:
        await second.start()
        assert second.get(req.service_name) is not None
        again = await second.request(req)
        events = await collect(again)
    finally:
        await second.close()
    assert events[-1].phase is Phase.BUILT
    # the re-attached watcher got the log tail, not just the ending
    assert any(e.phase in (Phase.FETCHING, Phase.BUILDING, Phase.PUSHING) for e in events)
    assert manifest_exists(testground, req.image)
