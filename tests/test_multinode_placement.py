"""Launch placement by image on a real 3-node swarm: the server starts where its image is.

The ground is ``stack/testground up --nodes 3`` (see tests/multinode_support.py): node1 the
manager, node2 and node3 the workers user servers run on (the ground's hub constrains them to
``node.role==worker``). A repository whose sticky build node is node2 is built there by the real
BuildManager, so only node2 (and the registry) holds its image. node2 is also made the busier
worker, so that Swarm's own spread would put a server on node3: the control launch without a
preference shows it does, and the launch with one must land on node2 all the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import multinode_support as mns
import pytest
from multinode_support import cli, finished, has_image, node_host, repo_ranked, request_for

from swarmbinder import naming
from swarmbinder.builds import BuildManager
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.events import Phase
from swarmbinder.hubclient import HubClient
from swarmbinder.launcher import PREFER_NODE_OPTION, Launcher
from swarmbinder.placement import ImagePlacement
from swarmbinder.store import Store
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

multinode = mns.multinode
healthy = mns.healthy
swarm = mns.swarm
manager_factory = mns.manager_factory
run_id = mns.run_id

BUILD_TIMEOUT = 150
LAUNCH_TIMEOUT = 120


@pytest.fixture
async def hub(multinode: dict[str, Any]) -> AsyncIterator[HubClient]:
    async with aiohttp.ClientSession() as session:
        yield HubClient(multinode["hub_api_url"], multinode["hub_api_token"], session)


async def _busy_node2(ground: dict[str, Any], name: str) -> None:
    """Two idle tasks on node2: Swarm's spread then prefers node3 for a new service."""
    await cli(
        "docker", "-H", ground["docker_host"], "service", "create", "--detach", "--quiet",
        "--name", name, "--replicas", "2", "--constraint", "node.hostname==node2",
        "--no-resolve-image", "--entrypoint", "sleep", ground["images"]["singleuser"], "3600",
    )  # fmt: skip
    async with asyncio.timeout(60):
        while True:
            proc = await cli(
                "docker", "-H", ground["docker_host"], "service", "ps", name,
                "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
            )  # fmt: skip
            states = proc.stdout.split("\n")
            if len([s for s in states if s.startswith("Running")]) == 2:
                return
            await asyncio.sleep(0.5)


def _launcher(ground: dict[str, Any], hub: HubClient, swarm: SwarmClient, **kw: Any) -> Launcher:
    return Launcher(
        hub, swarm, hub_url=ground["hub_url"], registry=None, launch_timeout=LAUNCH_TIMEOUT, **kw
    )


async def _launch(launcher: Launcher, image: str, repo_url: str) -> str:
    """Launch until ready; the temporary user's name."""
    events = [
        event
        async for event in launcher.launch(
            image,
            repo_url=repo_url,
            provider_spec="git/placement/main",
            ref_url=repo_url,
            binder_request="v2/git/placement/main",
            binder_persistent_request="v2/git/placement/main",
            binder_launch_host="http://binder.test/",
        )
    ]
    assert events[-1].phase is Phase.READY, events[-1]
    url = events[-1].fields["url"]
    return str(url.rstrip("/").rsplit("/", 1)[-1])


async def _server_node(swarm: SwarmClient, user: str, server_name: str = "") -> str:
    service = naming.spawner_service_name(user, server_name)
    nodes = {n.id: n.hostname for n in await swarm.nodes()}
    running = [t for t in await swarm.tasks(service) if t.state == "running"]
    assert len(running) == 1, running
    return nodes[running[0].node_id]


async def _forget_image(ground: dict[str, Any], hostname: str, image: str) -> None:
    """Remove ``image`` from a node: the stopped server's container may still be shutting
    down there (and an image a running container uses cannot be removed), so its containers
    go first, until the image is gone."""
    host = node_host(ground, hostname)
    async with asyncio.timeout(60):
        while has_image(ground, hostname, image):
            listed = await cli("docker", "-H", host, "ps", "-aq", "--filter", f"ancestor={image}")
            if listed.stdout.split():
                await cli("docker", "-H", host, "rm", "-f", *listed.stdout.split(), check=False)
            await cli("docker", "-H", host, "image", "rm", "-f", image, check=False)


async def _tasks_per_node(swarm: SwarmClient) -> dict[str, int]:
    """Running tasks per node: what Swarm's spread weighs (shown when an assertion fails)."""
    nodes = {n.id: n.hostname for n in await swarm.nodes()}
    counts: dict[str, int] = {}
    for task in await swarm.list_tasks({"desired-state": ["running"]}):
        hostname = nodes.get(task.node_id, "-")
        counts[hostname] = counts.get(hostname, 0) + 1
    return counts


async def _stop(hub: HubClient, swarm: SwarmClient, user: str, server_name: str = "") -> None:
    await hub.stop_server(user, server_name)
    await hub.delete_user_once_stopped(user, patience=30)
    await swarm.remove_service(naming.spawner_service_name(user, server_name), settle_seconds=3)


async def _answers(
    http: aiohttp.ClientSession, ground: dict[str, Any], user: str, token: str
) -> int:
    async with http.get(
        f"{ground['hub_url']}user/{user}/api/status", headers={"Authorization": f"token {token}"}
    ) as resp:
        return resp.status


async def test_a_server_starts_on_the_node_that_built_its_image_and_elsewhere_when_drained(
    healthy: dict[str, Any],
    manager_factory: Callable[..., BuildManager],
    swarm: SwarmClient,
    hub: HubClient,
    tmp_path: Path,
    run_id: str,
) -> None:
    ground = healthy
    dockerfile = f"FROM {ground['images']['singleuser']}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    repo = repo_ranked(ground, tmp_path, f"place{run_id}", dockerfile, lambda r: r[0] == "node2")
    build = await finished(
        await manager_factory(ground).request(request_for(ground, run_id, repo, repo.head)),
        BUILD_TIMEOUT,
    )
    assert build.status is BuildStatus.BUILT, build.reason
    assert has_image(ground, "node2", build.image)
    assert not has_image(ground, "node3", build.image)
    busy = f"sbpl-busy-{run_id}"
    users: list[str] = []
    async with await Store.open(tmp_path / "store.sqlite") as store:
        placement = ImagePlacement(swarm, store, hub_id=None, max_imbalance=4, clock=time.time)
        try:
            await _busy_node2(ground, busy)
            preferring = _launcher(ground, hub, swarm, placement=placement)
            # Control: without a preference Swarm spreads the server to the idle worker.
            user = await _launch(_launcher(ground, hub, swarm), build.image, repo.url)
            users.append(user)
            assert await _server_node(swarm, user) == "node3", await _tasks_per_node(swarm)
            await _stop(hub, swarm, user)
            await _forget_image(ground, "node3", build.image)

            # With it: the server starts on node2, which built the image (asked of Swarm: the
            # build's service is still there), and nothing was pulled anywhere.
            user = await _launch(preferring, build.image, repo.url)
            users.append(user)
            assert await _server_node(swarm, user) == "node2", await _tasks_per_node(swarm)
            assert not has_image(ground, "node3", build.image)
            # The scan records node2 in the store (and the build's node with it).
            await placement.scan()
            assert await store.image_nodes(build.image) == ["node2"]
            await _stop(hub, swarm, user)

            # node2 drained: never preferred, the server starts on node3 (pulling the image).
            await cli("docker", "-H", ground["docker_host"], "node", "update",
                      "--availability", "drain", "node2")  # fmt: skip
            user = await _launch(preferring, build.image, repo.url)
            users.append(user)
            assert await _server_node(swarm, user) == "node3", await _tasks_per_node(swarm)
            assert has_image(ground, "node3", build.image)
            await placement.scan()
            assert sorted(await store.image_nodes(build.image)) == ["node2", "node3"]
        finally:
            await cli("docker", "-H", ground["docker_host"], "node", "update",
                      "--availability", "active", "node2", check=False)  # fmt: skip
            await cli("docker", "-H", ground["docker_host"], "service", "rm", busy, check=False)
            for user in users:
                await _stop(hub, swarm, user)


async def test_the_hub_drops_a_preference_it_cannot_keep_and_ignores_one_from_a_user(
    healthy: dict[str, Any], swarm: SwarmClient, hub: HubClient, run_id: str
) -> None:
    """Straight to the hub's API: a preference for a node outside the user servers'
    constraints (the manager) is dropped and the server starts on a worker; a user's own spawn
    request naming a node is not pinned at all (only swarmbinder's token may pick nodes)."""
    ground = healthy
    image = f"{ground['image_prefix']}sbpl-plain:{run_id}"
    await cli("docker", "-H", ground["docker_host"], "tag", ground["images"]["singleuser"], image)
    await cli("docker", "-H", ground["docker_host"], "push", image)
    manager = next(n.id for n in await swarm.nodes() if n.hostname == "node1")
    node2 = next(n.id for n in await swarm.nodes() if n.hostname == "node2")
    binder_user, own_user = f"sbpl-b{run_id}", f"sbpl-u{run_id}"
    async with aiohttp.ClientSession() as http:
        try:
            await hub.create_user(binder_user)
            token = uuid.uuid4().hex
            options = {"image": image, "token": token, PREFER_NODE_OPTION: manager}
            await hub.start_server(binder_user, "", options)
            await _ready(hub, binder_user)
            assert await _server_node(swarm, binder_user) in ("node2", "node3")
            service = await swarm.inspect_service(naming.spawner_service_name(binder_user))
            assert service is not None and f"node.id=={manager}" not in service.constraints
            assert await _answers(http, ground, binder_user, token) == 200

            # A user with a hub token of their own (as with auth_enabled) names node2.
            await hub.create_user(own_user)
            own_token = await hub.create_token(own_user, scopes=["servers!user"], note="test")
            theirs = HubClient(ground["hub_api_url"], own_token, http)
            options = {"image": image, "token": uuid.uuid4().hex, PREFER_NODE_OPTION: node2}
            await theirs.start_server(own_user, "", options)
            await _ready(hub, own_user)
            service = await swarm.inspect_service(naming.spawner_service_name(own_user))
            assert service is not None
            assert service.constraints == ("node.role==worker",)
        finally:
            for user in (binder_user, own_user):
                await _stop(hub, swarm, user)


async def _ready(hub: HubClient, user: str) -> None:
    async with asyncio.timeout(LAUNCH_TIMEOUT):
        async for event in hub.progress(user, ""):
            assert not event.get("failed"), event
            if event.get("ready"):
                return
    raise AssertionError("progress ended before ready")
