"""The Swarm adapter against the real engine of the test ground."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from docker_cli import adocker, adocker_json

from swarmbinder.errors import ServiceNameConflict, SwarmRequestFailed, SwarmUnavailable
from swarmbinder.jobspec import JobSpec, LogRotation, SecretMount
from swarmbinder.swarm import SwarmClient, TaskStateName

pytestmark = pytest.mark.swarm


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    client = SwarmClient.connect()
    yield client
    await client.close()


@pytest.fixture
def run_label() -> dict[str, str]:
    return {"swarmbinder.test-run": uuid.uuid4().hex[:12]}


@pytest.fixture
async def cleanup(swarm: SwarmClient, run_label: dict[str, str]) -> AsyncIterator[None]:
    yield
    for service in await swarm.list_services(run_label):
        await swarm.remove_service(service.id)


def job(name: str, image: str, script: str, labels: dict[str, str]) -> JobSpec:
    return JobSpec(name=name, image=image, command=["sh", "-c"], args=[script], labels=labels)


async def test_one_shot_job_completes_logs_and_is_removed(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-job-{run_label['swarmbinder.test-run']}"
    spec = job(name, testground["images"]["singleuser"], "echo hello; echo oops >&2", run_label)
    service = await swarm.create_job(spec)
    assert service.name == name
    assert service.labels["swarmbinder.test-run"] == run_label["swarmbinder.test-run"]

    async with asyncio.timeout(60):
        task = await swarm.wait_job(name)
    assert task.state is TaskStateName.COMPLETE
    assert task.exit_code == 0
    assert task.succeeded

    lines = await swarm.read_logs(name)
    assert "hello" in lines and "oops" in lines

    assert await swarm.remove_service(name) is True
    assert await swarm.inspect_service(name) is None
    # Job containers stay behind after `service rm` unless we remove them ourselves.
    assert await swarm.remove_leftover_containers(name) == 0
    assert await swarm.remove_service(name) is False


async def test_failed_job_reports_exit_code(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-fail-{run_label['swarmbinder.test-run']}"
    await swarm.create_job(job(name, testground["images"]["singleuser"], "exit 7", run_label))
    async with asyncio.timeout(60):
        task = await swarm.wait_job(name)
    assert task.state is TaskStateName.FAILED
    assert task.exit_code == 7
    assert not task.succeeded
    # A job is never restarted.
    assert len(await swarm.tasks(name)) == 1


async def test_follow_logs_streams_lines_while_job_runs(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-follow-{run_label['swarmbinder.test-run']}"
    script = "for i in 1 2 3; do echo line-$i; sleep 0.3; done"
    await swarm.create_job(job(name, testground["images"]["singleuser"], script, run_label))
    seen: list[str] = []
    stream = swarm.follow_logs(name)
    try:
        async with asyncio.timeout(60):
            async for line in stream:
                seen.append(line)
                if line == "line-3":
                    break
    finally:
        await stream.aclose()
    assert seen[-3:] == ["line-1", "line-2", "line-3"]


async def test_second_create_with_same_name_is_a_conflict(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-lock-{run_label['swarmbinder.test-run']}"
    spec = job(name, testground["images"]["singleuser"], "sleep 5", run_label)
    first = await swarm.create_job(spec)
    with pytest.raises(ServiceNameConflict) as caught:
        await swarm.create_job(spec)
    assert caught.value.service_id == first.id


async def test_nodes_lists_this_manager(swarm: SwarmClient, testground: dict[str, Any]) -> None:
    nodes = await swarm.nodes()
    me = [n for n in nodes if n.id == testground["node_id"]]
    assert me and me[0].role == "manager" and me[0].state == "ready"


async def test_unreachable_engine_is_swarm_unavailable() -> None:
    client = SwarmClient.connect("tcp://127.0.0.1:9")
    try:
        with pytest.raises(SwarmUnavailable, match="did not answer"):
            await client.nodes()
    finally:
        await client.close()


async def test_removing_a_job_while_it_starts_leaves_no_container(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-race-{run_label['swarmbinder.test-run']}"
    await swarm.create_job(job(name, testground["images"]["singleuser"], "sleep 1", run_label))
    assert await swarm.remove_service(name) is True
    assert await swarm.remove_leftover_containers(name) == 0


async def test_secrets_are_created_once_reused_and_removed(
    swarm: SwarmClient, run_label: dict[str, str]
) -> None:
    name = f"sbtest-secret-{run_label['swarmbinder.test-run']}"
    try:
        first = await swarm.ensure_secret(name, b"content", run_label)
        again = await swarm.ensure_secret(name, b"content", run_label)
        assert again.id == first.id and again.name == name
        assert again.labels == run_label
        # the name filter matches prefixes; find_secret does not
        assert await swarm.find_secret(name[:-1]) is None
        assert [s.id for s in await swarm.list_secrets(run_label)] == [first.id]
        racing = await asyncio.gather(
            *(swarm.ensure_secret(name + "-race", b"x", run_label) for _ in range(5))
        )
        assert len({s.id for s in racing}) == 1
    finally:
        for secret in await swarm.list_secrets(run_label):
            await swarm.remove_secret(secret.id)
    assert await swarm.find_secret(name) is None
    assert await swarm.remove_secret(name) is False


async def test_a_job_reads_its_secret_as_a_file(
    swarm: SwarmClient, testground: dict[str, Any], run_label: dict[str, str], cleanup: None
) -> None:
    name = f"sbtest-secretjob-{run_label['swarmbinder.test-run']}"
    secret = await swarm.ensure_secret(name, b"the-secret-content", run_label)
    try:
        spec = JobSpec(
            name=name,
            image=testground["images"]["singleuser"],
            command=["sh", "-c"],
            args=["cat /etc/sbtest/secret.txt"],
            labels=run_label,
            secrets=[SecretMount(secret.id, secret.name, "/etc/sbtest/secret.txt")],
        )
        await swarm.create_job(spec)
        async with asyncio.timeout(60):
            task = await swarm.wait_job(name)
        assert task.succeeded
        assert await swarm.read_logs(name) == ["the-secret-content"]
        with pytest.raises(SwarmRequestFailed):  # in use by the service
            await swarm.remove_secret(secret.id)
    finally:
        await swarm.remove_service(name)
        await swarm.remove_secret(secret.id)


async def test_a_job_that_prints_without_end_keeps_a_bounded_log(
    testground: dict[str, Any], run_label: dict[str, str]
) -> None:
    """Every service the client creates logs through json-file with rotation: a job that
    prints 2 MB keeps at most max_files files of about max_bytes on the node's disk."""
    rotation = LogRotation(max_bytes=64 * 1024, max_files=2)
    name = f"sbtest-chatty-{run_label['swarmbinder.test-run']}"
    script = "i=0; while [ $i -lt 20000 ]; do echo line $i of a chatty build 0123456789abcdef0123456789abcdef0123456789abcdef0123456789; i=$((i+1)); done"  # noqa: E501
    async with SwarmClient.connect(log_rotation=rotation) as swarm:
        try:
            await swarm.create_job(job(name, testground["images"]["singleuser"], script, run_label))
            async with asyncio.timeout(90):
                task = await swarm.wait_job(name)
            assert task.succeeded, task
            by_service = f"label=com.docker.swarm.service.name={name}"
            (container,) = (await adocker("ps", "-aq", "--filter", by_service)).split()
            (inspected,) = await adocker_json("inspect", container)
            assert inspected["HostConfig"]["LogConfig"] == {
                "Type": "json-file", "Config": {"max-size": "65536", "max-file": "2"}
            }  # fmt: skip
            log_path = Path(inspected["LogPath"])
            files = sorted(log_path.parent.glob(log_path.name + "*"))
            assert 1 <= len(files) <= 2, files
            # Each file is cut near max-size (a line may straddle it); 2 MB were printed.
            assert sum(f.stat().st_size for f in files) <= 2 * (64 * 1024 + 4096)
            assert "line 19999 " in files[0].read_text()
        finally:
            await swarm.remove_service(name)
            await swarm.remove_leftover_containers(name)
