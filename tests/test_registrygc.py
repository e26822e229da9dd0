"""The registry's garbage collection: its rules over a fake swarm (the order of the steps, and a
registry never left read-only, whatever happens), then for real against a registry service
this test makes on the test ground's engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from docker_cli import adocker

from swarmbinder.buildjob import QUEUED_CONSTRAINT
from swarmbinder.config import load_config
from swarmbinder.diskuse import registry_labels
from swarmbinder.errors import ServiceNameConflict
from swarmbinder.jobspec import JobSpec, VolumeMount
from swarmbinder.labels import LABEL_CREATED
from swarmbinder.registry import RegistryClient
from swarmbinder.registrygc import (
    READ_ONLY_ENV,
    READ_ONLY_VALUE,
    RegistryGCFailed,
    after_sweep,
    collect_garbage,
    job_name,
    job_spec,
    parse_size,
    recover,
)
from swarmbinder.retention import SweepReport, sweep_forever
from swarmbinder.store import Store
from swarmbinder.swarm import NodeInfo, ServiceInfo, SwarmClient, TaskState, TaskStateName

REGISTRY = "binder_registry"
JOB = job_name(REGISTRY)


def task(state: TaskStateName, env: tuple[str, ...] = (), exit_code: int = 0) -> TaskState:
    return TaskState(
        id="t",
        service_id="s",
        node_id="n1",
        state=state,
        desired_state="running",
        message="",
        error="",
        exit_code=exit_code,
        container_id="c",
        timestamp="2026-01-01T00:00:00Z",
        env=env,
    )


def node(id: str) -> NodeInfo:
    return NodeInfo(
        id=id, hostname=id, role="manager", state="ready", availability="active", labels={}, addr=""
    )


class FakeSwarm:
    """A registry service on node n1, and a record of what was done to it, in order."""

    def __init__(self, *, exit_code: int = 0, job_exists_since: float | None = None) -> None:
        self.env = {"REGISTRY_AUTH": "token"}
        self.steps: list[str] = []
        self.exit_code = exit_code
        self.job_exists_since = job_exists_since
        self.job_started = asyncio.Event()
        self.job_hangs = False
        self.labels: dict[str, dict[str, str | None]] = {}

    async def inspect_service(self, name: str) -> ServiceInfo | None:
        if name == JOB:
            if self.job_exists_since is None:
                return None
            labels = {LABEL_CREATED: f"{self.job_exists_since:.3f}"}
            return ServiceInfo("j", JOB, labels, "registry:2", "", ())
        return ServiceInfo(
            "r",
            REGISTRY,
            {},
            "registry:2@sha256:ab",
            "",
            (),
            env=dict(self.env),
            volumes=(VolumeMount("binder_registry-data", "/var/lib/registry"),),
        )

    async def create_job(self, spec: JobSpec) -> ServiceInfo:
        if self.job_exists_since is not None:
            raise ServiceNameConflict(spec.name, "j")
        assert spec.constraints == [QUEUED_CONSTRAINT]
        self.steps.append("lock")
        return ServiceInfo("j", spec.name, dict(spec.labels), spec.image, "", ())

    async def set_service_env(self, name: str, changes: dict[str, str | None]) -> bool:
        assert name == REGISTRY
        for key, value in changes.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.steps.append("read-only" if READ_ONLY_ENV in self.env else "writable")
        return True

    async def tasks(self, name: str, *, every_iteration: bool = False) -> list[TaskState]:
        env = tuple(f"{k}={v}" for k, v in self.env.items())
        return [task(TaskStateName.RUNNING, env)]

    async def update_job(self, name: str, *, constraints: list[str], **kwargs: Any) -> None:
        self.steps.append(f"place {constraints}")

    async def wait_job(self, name: str) -> TaskState:
        self.steps.append("run")
        self.job_started.set()
        if self.job_hangs:
            await asyncio.Event().wait()
        return task(TaskStateName.COMPLETE, exit_code=self.exit_code)

    async def read_logs(self, name: str) -> list[str]:
        return ['time=... msg="marking manifest"', "swarmbinder-registry-size 12345"]

    async def remove_service(self, name: str, **kwargs: Any) -> bool:
        self.steps.append(f"remove {name}")
        return True

    async def set_node_labels(self, node_id: str, changes: dict[str, str | None]) -> bool:
        self.labels[node_id] = changes
        return True

    async def nodes(self) -> list[NodeInfo]:
        return [node("n1"), node("n2")]


def gc(swarm: FakeSwarm, **kwargs: Any) -> Any:
    return collect_garbage(cast(SwarmClient, swarm), REGISTRY, **kwargs)


async def test_the_job_runs_on_the_registrys_node_while_it_is_read_only() -> None:
    swarm = FakeSwarm()
    report = await gc(swarm)
    assert swarm.steps == [
        "lock",
        "read-only",
        "place ['node.id==n1']",
        "run",
        f"remove {JOB}",  # the job stops before anyone may write again
        "writable",
    ]
    assert report is not None and (report.node_id, report.size) == ("n1", 12345)
    assert swarm.env == {"REGISTRY_AUTH": "token"}
    # The size is recorded on the registry's node, and removed where the registry was before.
    assert swarm.labels["n1"]["swarmbinder.registry.size"] == "12345"
    assert swarm.labels["n2"]["swarmbinder.registry.size"] is None


async def test_a_failed_job_leaves_the_registry_writable() -> None:
    swarm = FakeSwarm(exit_code=1)
    with pytest.raises(RegistryGCFailed, match="failed"):
        await gc(swarm)
    assert swarm.steps[-2:] == [f"remove {JOB}", "writable"]
    assert READ_ONLY_ENV not in swarm.env


async def test_a_cancel_or_a_timeout_leaves_the_registry_writable() -> None:
    swarm = FakeSwarm()
    swarm.job_hangs = True
    running = asyncio.create_task(gc(swarm))
    await swarm.job_started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert swarm.steps[-2:] == [f"remove {JOB}", "writable"]
    assert READ_ONLY_ENV not in swarm.env

    slow = FakeSwarm()
    slow.job_hangs = True
    with pytest.raises(RegistryGCFailed, match="took over"):
        await gc(slow, time_limit=0.2)
    assert slow.steps[-1] == "writable"


async def test_another_replicas_collection_is_left_alone() -> None:
    import time

    swarm = FakeSwarm(job_exists_since=time.time())
    assert await gc(swarm) is None
    assert swarm.steps == []  # no read-only, no write
    # A registry read-only under a live collection is not "recovered" either.
    swarm.env[READ_ONLY_ENV] = READ_ONLY_VALUE
    assert not await recover(cast(SwarmClient, swarm), REGISTRY)
    assert swarm.steps == []


async def test_a_registry_left_read_only_is_made_writable_under_the_lock() -> None:
    swarm = FakeSwarm()
    assert not await recover(cast(SwarmClient, swarm), REGISTRY)  # writable: nothing to do
    swarm.env[READ_ONLY_ENV] = READ_ONLY_VALUE
    assert await recover(cast(SwarmClient, swarm), REGISTRY)
    assert swarm.steps == ["lock", f"remove {JOB}", "writable"]
    assert READ_ONLY_ENV not in swarm.env


def test_the_job_is_the_registrys_image_environment_and_volumes_held_back() -> None:
    registry = ServiceInfo(
        "r",
        REGISTRY,
        {},
        "registry:2",
        "",
        (),
        env={"REGISTRY_AUTH": "token", READ_ONLY_ENV: READ_ONLY_VALUE},
        volumes=(VolumeMount("data", "/srv/registry"),),
    )
    body = job_spec(registry, JOB, 1.0).to_api()
    container = body["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == "registry:2"
    assert container["Env"] == ["REGISTRY_AUTH=token"]  # the job itself may write
    assert container["Mounts"] == [
        {"Type": "volume", "Source": "data", "Target": "/srv/registry", "ReadOnly": False}
    ]
    assert "garbage-collect --delete-untagged" in container["Command"][2]
    assert body["TaskTemplate"]["Placement"]["Constraints"] == [QUEUED_CONSTRAINT]
    assert body["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert parse_size(["x", "swarmbinder-registry-size 42", ""]) == 42
    assert parse_size(["swarmbinder-registry-size lots"]) is None


class SweepRegistry:
    """A registry with one old image under the prefix, for a whole retention round."""

    async def list_repositories(self) -> list[str]:
        return ["binder-old"]

    async def list_tags(self, image: str) -> list[str]:
        return ["1"]

    async def delete_tag(self, name: str, tag: str) -> bool:
        return True


async def test_a_retention_round_that_deleted_images_collects_and_one_that_did_not_recovers(
    tmp_path: Path,
) -> None:
    swarm = FakeSwarm()
    swarm.env[READ_ONLY_ENV] = READ_ONLY_VALUE  # left so by a replica that died
    config = load_config(
        env={},
        overrides={
            "registry_gc": True,
            "registry_service": REGISTRY,
            "image_retention_days": 1,
            "store_path": str(tmp_path / "store.sqlite"),
        },
    )
    run = after_sweep(config, cast(SwarmClient, swarm))
    await run(SweepReport())
    assert swarm.steps == ["lock", f"remove {JOB}", "writable"]  # recovered, nothing collected
    swarm.steps.clear()

    # A whole round of the sweep: the image was first seen a day and more ago, so it goes,
    # and the collection follows.
    store = await Store.open(tmp_path / "store.sqlite")
    try:
        await store.touch_images(["127.0.0.1:5000/binder-old:1"], 0.0)
        swept = asyncio.Event()

        async def then_collect(report: SweepReport) -> None:
            await run(report)
            swept.set()

        class NoServices:
            async def list_services(self, labels: dict[str, str | None]) -> list[ServiceInfo]:
                return []

        round_ = asyncio.create_task(
            sweep_forever(
                swarm=cast(SwarmClient, NoServices()),
                registry=cast(RegistryClient, SweepRegistry()),
                store=store,
                image_prefix="127.0.0.1:5000/binder-",
                keep_days=1,
                interval=3600,
                clock=lambda: 2 * 24 * 3600.0,
                after_sweep=then_collect,
            )
        )
        await asyncio.wait_for(swept.wait(), 10)
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_
    finally:
        await store.close()
    assert swarm.steps[:2] == ["lock", "read-only"] and swarm.steps[-1] == "writable"


# -- for real ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def layer_image(tmp_path: Path, name: str, size: int) -> str:
    """A one-layer image of ``size`` random bytes (a blob no other image shares)."""
    blob = tmp_path / f"{uuid.uuid4().hex}.bin"
    blob.write_bytes(os.urandom(size))
    archive = tmp_path / f"{blob.name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(blob, arcname="blob")
    await adocker("import", str(archive), name)
    return name


async def volume_du(volume: str, image: str, path: str = "") -> str:
    """The volume's size in bytes, then "there" if ``path`` exists in it."""
    script = f"du -sb /r | cut -f1; if test -e '/r/{path}'; then echo there; fi"
    return await adocker(
        "run", "--rm", "-v", f"{volume}:/r", "--entrypoint", "sh", image, "-c", script
    )  # fmt: skip


@pytest.fixture
async def registry_service(testground: dict[str, Any]) -> AsyncIterator[tuple[str, str, str]]:
    """A registry service of this test's own (the stack's image, no auth) on a free port;
    (service, volume, host:port)."""
    run = uuid.uuid4().hex[:8]
    service, volume, port = f"sbgc-{run}", f"sbgc-{run}-data", free_port()
    await adocker(
        "service", "create", "--quiet", "--detach", "--name", service,
        "--publish", f"mode=host,target=5000,published={port}",
        "--mount", f"type=volume,source={volume},target=/var/lib/registry",
        "--no-resolve-image", testground["images"]["registry"],
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        async with RegistryClient(address) as registry, asyncio.timeout(60):
            while True:
                if await _answers(registry):
                    break
                await asyncio.sleep(0.5)
        yield service, volume, address
    finally:
        async with SwarmClient.connect() as swarm:
            await swarm.remove_service(service)
            await swarm.remove_service(job_name(service))
            # The size label the collection wrote on the engine's node goes with the registry.
            for node in await swarm.nodes():
                await swarm.set_node_labels(node.id, registry_labels(None, 0))
        with contextlib.suppress(AssertionError):
            await adocker("volume", "rm", "-f", volume)


async def _answers(registry: RegistryClient) -> bool:
    try:
        await registry.list_repositories()
        return True
    except Exception:
        return False


@pytest.mark.swarm
async def test_a_real_collection_frees_the_deleted_images_blob_and_refuses_pushes_meanwhile(
    testground: dict[str, Any], registry_service: tuple[str, str, str], tmp_path: Path
) -> None:
    service, volume, address = registry_service
    image = testground["images"]["registry"]
    size = 4 * 1024 * 1024
    gone, kept, late = (f"{address}/sbgc/{name}:1" for name in ("gone", "kept", "late"))
    made = [await layer_image(tmp_path, name, size) for name in (gone, kept, late)]
    try:
        for name in (gone, kept):
            await adocker("push", "--quiet", name)
        blob = await layer_blob(address, "sbgc/gone", "1")
        async with RegistryClient(address) as registry:
            assert await registry.delete_tag(f"{address}/sbgc/gone", "1")
        blob_path = f"docker/registry/v2/blobs/sha256/{blob[7:9]}/{blob[7:]}/data"
        before = (await volume_du(volume, image, blob_path)).split()
        assert before[1:] == ["there"]  # deleting the manifest left the blob on the disk

        refused: list[bool] = []

        async def push_while_read_only() -> None:
            try:
                await adocker("push", "--quiet", late)
                refused.append(False)
            except AssertionError:
                refused.append(True)

        async with SwarmClient.connect() as swarm:
            report = await collect_garbage(
                swarm, service, time_limit=300, while_read_only=push_while_read_only
            )
            assert report is not None and report.size is not None
            assert refused == [True]  # read-only while collecting
            # The registry is writable again, and its size was recorded on its node.
            registry_now = await swarm.inspect_service(service)
            assert registry_now is not None and READ_ONLY_ENV not in registry_now.env
            labels = {n.id: n.labels for n in await swarm.nodes()}
            assert labels[report.node_id]["swarmbinder.registry.size"] == str(report.size)
        after = await volume_du(volume, image, blob_path)
        assert after.split() == [str(report.size)]  # the deleted image's blob is gone
        assert int(before[0]) - report.size >= size * 0.9
        await adocker("rmi", kept)
        await adocker("pull", "--quiet", kept)  # the other one still pulls
        await adocker("push", "--quiet", late)  # and pushes work again
    finally:
        for name in made:
            with contextlib.suppress(AssertionError):
                await adocker("rmi", "-f", name)


async def layer_blob(address: str, repository: str, tag: str) -> str:
    """The digest of the image's (one) layer blob, from its manifest."""
    url = f"http://{address}/v2/{repository}/manifests/{tag}"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Accept": accept}) as reply,
    ):
        manifest = await reply.json(content_type=None)
    return str(manifest["layers"][0]["digest"])
