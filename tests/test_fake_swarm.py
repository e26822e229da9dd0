"""The fake swarm behaves as the engine does where the build manager relies on it (the facts
each test pins are the ones the real-Swarm tests show, or ``swarm.py`` documents)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.fake_swarm import FakeSwarm

from swarmbinder.errors import ServiceNameConflict, SwarmRequestFailed, SwarmUnavailable
from swarmbinder.jobspec import JobSpec, SecretMount
from swarmbinder.swarm import TaskStateName


def job(name: str = "job", **fields: Any) -> JobSpec:
    return JobSpec(name=name, image="builder:1", args=["--x"], **fields)


async def test_a_name_is_taken_once() -> None:
    fake = FakeSwarm()
    created = await fake.create_job(job())
    with pytest.raises(ServiceNameConflict) as conflict:
        await fake.create_job(job())
    assert conflict.value.service_id == created.id
    assert await fake.inspect_service(created.id) == created


async def test_a_task_waits_pending_until_a_node_fits_and_an_update_starts_a_new_one() -> None:
    fake = FakeSwarm(("node1", "node2"))
    fake.set_node("node2", state="down")
    await fake.create_job(job(constraints=["node.hostname==node2"]))
    (pending,) = await fake.tasks("job")
    assert pending.state is TaskStateName.PENDING and not pending.node_id
    assert pending.error.startswith("no suitable node")

    fake.set_node("node2", state="ready")
    (running,) = await fake.tasks("job")
    assert running.state is TaskStateName.RUNNING and running.node_id == fake.node_id("node2")
    fake.set_node("node2", state="down")  # Swarm keeps reporting it running
    assert (await fake.tasks("job"))[-1].state is TaskStateName.RUNNING

    await fake.update_job("job", constraints=["node.role==manager"], labels={"v": "2"})
    (current,) = await fake.tasks("job")  # the superseded iteration is not listed
    assert current.id != running.id and current.node_id == fake.node_id("node1")
    assert (await fake.inspect_service("job")) is not None
    fake.finish_task("job", 3)
    (failed,) = await fake.tasks("job")
    assert failed.terminal and not failed.succeeded and failed.exit_code == 3

    with pytest.raises(SwarmRequestFailed):
        await fake.create_job(job("other", constraints=["engine.nonsense==1"]))


async def test_secrets_must_exist_to_be_mounted_and_cannot_go_while_mounted() -> None:
    fake = FakeSwarm()
    missing = SecretMount("nope", "nope", "/x/config.json")
    with pytest.raises(SwarmRequestFailed, match="secret not found"):
        await fake.create_job(job(secrets=[missing]))
    secret = await fake.ensure_secret("login", b"{}", {"kind": "auth"})
    assert await fake.ensure_secret("login", b"other") == await fake.find_secret("login")
    await fake.create_job(job(secrets=[SecretMount(secret.id, secret.name, "/x/config.json")]))
    with pytest.raises(SwarmRequestFailed) as in_use:
        await fake.remove_secret(secret.id)
    assert in_use.value.status == 400
    assert await fake.remove_service("job")
    assert await fake.remove_secret(secret.id)
    assert not await fake.remove_secret(secret.id)
    assert await fake.list_secrets({"kind": None}) == []


async def test_a_log_is_followed_from_its_tail_and_never_ends_by_itself() -> None:
    fake = FakeSwarm()
    await fake.create_job(job())
    fake.feed_log("job", "one", "two", "x" * 70_000)
    stream = fake.follow_logs("job", tail=2)
    assert await anext(stream) == "two"
    assert (await anext(stream)).endswith("[log line cut: 4464 more characters]")
    fake.finish_task("job")
    with pytest.raises(TimeoutError):  # a finished job's log stream stays open
        async with asyncio.timeout(0.05):
            await anext(stream)
    await stream.aclose()
    assert await fake.read_logs("job") == [
        "one",
        "two",
        "x" * 65536 + " [log line cut: 4464 more characters]",
    ]


async def test_an_engine_that_does_not_answer() -> None:
    fake = FakeSwarm()
    await fake.create_job(job())
    stream = fake.follow_logs("job")
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    fake.answering = False
    with pytest.raises(SwarmUnavailable):
        await fake.tasks("job")
    with pytest.raises(SwarmUnavailable):  # open streams drop too
        await waiting
    fake.answering = True
    fake.reject_task("job", "No such image: builder:1")
    (rejected,) = await fake.tasks("job")
    assert rejected.state is TaskStateName.REJECTED and "No such image" in rejected.error
