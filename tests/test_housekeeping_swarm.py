"""Node housekeeping for real, on the 3-node ground (never on the engine the tests share: it
prunes). A tiny threshold makes every node prune: an image nothing uses on a worker goes, the
image a running service uses there stays, and each node's disk use reaches the node labels,
``/metrics`` and the admin API's nodes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import multinode_support as mns
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints
from multinode_support import cli, has_image, node_containers, node_host
from prometheus_client import generate_latest

from swarmbinder.admin import node_json
from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.diskuse import disk_labels
from swarmbinder.housekeeping import JOB_NAME, HousekeepingSettings, run_housekeeping
from swarmbinder.jobspec import JobSpec
from swarmbinder.metrics import Metrics
from swarmbinder.swarm import SwarmClient, TaskStateName

pytestmark = pytest.mark.swarm

multinode = mns.multinode
healthy = mns.healthy
swarm = mns.swarm

WORKER = "node2"
NODES = ("node1", "node2", "node3")
UNUSED_BYTES = 8 * 1024 * 1024


@pytest.fixture
async def worker_images(
    healthy: dict[str, Any], swarm: SwarmClient, tmp_path: Path
) -> AsyncIterator[tuple[str, str, str]]:
    """On the worker: an image nothing uses (8 MiB of its own), and an image of its own that a
    running service uses; (unused image, used image, service)."""
    run = uuid.uuid4().hex[:8]
    host = node_host(healthy, WORKER)
    unused, used, service = f"sbhk-unused-{run}:1", f"sbhk-used-{run}:1", f"sbhk-used-{run}"
    (tmp_path / "blob").write_bytes(os.urandom(UNUSED_BYTES))
    await cli("tar", "-C", str(tmp_path), "-cf", str(tmp_path / "blob.tar"), "blob")
    await cli("docker", "-H", host, "import", str(tmp_path / "blob.tar"), unused)
    # An image ID of its own (not the builder's, which housekeeping keeps by name anyway).
    builder = healthy["images"]["builder"]
    await cli("docker", "-H", host, "create", "--name", f"sbhk-base-{run}", builder, "true")
    await cli("docker", "-H", host, "commit", f"sbhk-base-{run}", used)
    await cli("docker", "-H", host, "rm", f"sbhk-base-{run}")
    await swarm.create_job(
        JobSpec(
            name=service,
            image=used,
            command=["sleep", "600"],
            args=[],
            constraints=[f"node.hostname=={WORKER}"],
        )
    )
    async with asyncio.timeout(60):
        while True:
            if any(t.state is TaskStateName.RUNNING for t in await swarm.tasks(service)):
                break
            await asyncio.sleep(0.5)
    try:
        yield unused, used, service
    finally:
        await swarm.remove_service(service, reaper_image=builder)
        for image in (unused, used):
            await cli("docker", "-H", host, "rmi", "-f", image, check=False)


async def test_housekeeping_prunes_unused_images_keeps_used_ones_and_reports_disk_use(
    healthy: dict[str, Any], swarm: SwarmClient, worker_images: tuple[str, str, str]
) -> None:
    unused, used, service = worker_images
    # The ground's own images stay: the other tests build FROM them on every node.
    grounds = tuple(healthy["images"].values())
    settings = HousekeepingSettings(
        image=healthy["images"]["builder"], threshold=0, keep_images=grounds
    )

    reports = await run_housekeeping(swarm, settings)

    assert reports is not None
    by_host = {r.hostname: r for r in reports}
    assert set(by_host) == {"node1", "node2", "node3"}  # a global job: every (build) node
    worker = by_host[WORKER]
    assert worker.pruned and unused in (worker.images_removed or ())
    assert used not in (worker.images_removed or ())
    assert worker.used_before - worker.used >= UNUSED_BYTES // 2, worker
    assert not has_image(healthy, WORKER, unused)
    assert has_image(healthy, WORKER, used)
    assert all(has_image(healthy, WORKER, image) for image in grounds)
    assert [t.state for t in await swarm.tasks(service)] == [TaskStateName.RUNNING]
    # The job (the lock) is gone, and so are its containers on every node.
    assert await swarm.inspect_service(JOB_NAME) is None
    for node in ("node1", "node2", "node3"):
        assert node_containers(healthy, node, JOB_NAME) == []

    # Disk use per node, as Binder recorded it: node labels, /metrics, the admin API.
    nodes = await swarm.nodes()
    metrics = Metrics()
    metrics.set_disks({n.hostname: n.labels for n in nodes})
    text = generate_latest(metrics.registry).decode()
    for node in nodes:
        report = by_host[node.hostname]
        assert f'swarmbinder_node_disk_used_bytes{{node="{node.hostname}"}}' in text
        sample = metrics.registry.get_sample_value
        assert sample("swarmbinder_node_disk_used_bytes", {"node": node.hostname}) == report.used
        assert sample("swarmbinder_node_disk_total_bytes", {"node": node.hostname}) == report.total
        shown = node_json(node, running_builds=0, sticky=0, sample=0)
        assert (shown["disk_used"], shown["disk_total"]) == (report.used, report.total)
    assert worker.total > worker.used


async def test_a_second_round_waits_for_the_first(
    healthy: dict[str, Any], swarm: SwarmClient
) -> None:
    """The job's name is the lock: a round started while one runs does nothing."""
    settings = HousekeepingSettings(image=healthy["images"]["builder"], threshold=100)
    first, second = await asyncio.gather(
        run_housekeeping(swarm, settings), run_housekeeping(swarm, settings)
    )
    assert sorted([first is None, second is None]) == [False, True]
    assert await swarm.inspect_service(JOB_NAME) is None


async def test_binder_runs_housekeeping_and_serves_each_nodes_disk_use(
    healthy: dict[str, Any], swarm: SwarmClient, tmp_path: Path
) -> None:
    """node_housekeeping in a running Binder: its first round starts with the app, and /metrics
    and the admin API's nodes show every node's disk use from the labels it wrote."""
    for node in await swarm.nodes():  # forget earlier rounds' measurements
        await swarm.set_node_labels(node.id, dict.fromkeys(disk_labels(0, 0, 0)))
    token = uuid.uuid4().hex
    config = {
        **ground_endpoints(healthy, tmp_path),
        "image_prefix": healthy["image_prefix"],
        "admin_token": token,
        "node_housekeeping": True,
        "node_housekeeping_threshold": 100,  # measure, never prune
    }
    app = create_app(load_config(env={}, overrides=config))
    async with TestClient(TestServer(app)) as client:
        async with asyncio.timeout(90):
            while True:
                text = await (await client.get("/metrics")).text()
                shown = [f'swarmbinder_node_disk_used_bytes{{node="{n}"}}' in text for n in NODES]
                if all(shown):
                    break
                await asyncio.sleep(1)
        reply = await client.get("/api/admin/nodes", headers={"Authorization": f"Bearer {token}"})
        nodes = (await reply.json())["nodes"]
    assert sorted(n["hostname"] for n in nodes) == list(NODES)
    for node in nodes:
        assert 0 < node["disk_used"] < node["disk_total"], node
        assert f'swarmbinder_node_disk_total_bytes{{node="{node["hostname"]}"}}' in text
    assert await swarm.inspect_service(JOB_NAME) is None  # removed when done
