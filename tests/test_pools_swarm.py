"""Warm pools for real: the test ground's JupyterHub, SwarmSpawner, registry and git server.

Each test serves under an image prefix of its own (``...binder-i15pool<run>-``) and removes
every user and service its pools made, checking that none is left. The images are the
single-user image under the names the specs resolve to (pushed in a second: a label layer), so
no test waits for repo2docker; the pool's own build path is covered over fakes.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints, spec_for

from swarmbinder.app import create_app
from swarmbinder.config import Config, load_config
from swarmbinder.events import SSEDecoder
from swarmbinder.hubclient import HubClient
from swarmbinder.keys import POOLS
from swarmbinder.labels import LABEL_IMAGE, LABEL_USER
from swarmbinder.launcher import Launcher
from swarmbinder.pools import PoolManager, PoolServers, rules_from_config
from swarmbinder.registry import RegistryClient
from swarmbinder.resolve import (
    Resolved,
    policy_from_config,
    provider_session,
    providers_from_config,
    resolve,
)
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

SSE = {"Accept": "text/event-stream"}


def push_image(ground: dict[str, Any], tag: str) -> None:
    run = uuid.uuid4().hex[:8]
    dockerfile = f"FROM {ground['images']['singleuser']}\nLABEL swarmbinder.test-run={run}\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        check=True,
        timeout=300,
    )
    subprocess.run(["docker", "push", "-q", tag], capture_output=True, check=True, timeout=300)
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


ADMIN_TOKEN = "i15pool-admin-" + uuid.uuid4().hex


def pool_config(
    ground: dict[str, Any], tmp_path: Path, pools: dict[str, int], **options: Any
) -> Config:
    run = uuid.uuid4().hex[:8]
    return load_config(
        env={},
        overrides={
            **ground_endpoints(ground, tmp_path),
            "image_prefix": f"{ground['image_prefix']}i15pool{run}-",
            "warm_pools": pools,
            "launch_timeout": 90,
            "rate_limit": 0,
            "admin_token": ADMIN_TOKEN,
            **options,
        },
    )


async def resolve_real(config: Config, path: str) -> Resolved:
    async with provider_session(config) as http:
        return await resolve(
            path,
            providers=providers_from_config(config, http),
            policy=policy_from_config(config),
            image_prefix=config.registry.image_prefix,
        )


@asynccontextmanager
async def ground_clients(ground: dict[str, Any]) -> AsyncIterator[tuple[HubClient, SwarmClient]]:
    async with aiohttp.ClientSession() as session, SwarmClient.connect() as swarm:
        yield HubClient(ground["hub_api_url"], ground["hub_api_token"], session), swarm


async def pool_users(swarm: SwarmClient, image: str, *, waiting: bool | None = True) -> set[str]:
    servers = await PoolServers(_NoHub(), swarm, hub_url="http://unused/").list()
    return {
        s.user for s in servers if s.image == image and (waiting is None or s.waiting == waiting)
    }


class _NoHub:
    """PoolServers.list asks only Swarm."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the hub was asked for {name}")


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.5)


async def remove_everything_of(ground: dict[str, Any], images: list[str]) -> None:
    """Delete every user and service with these images, then check nothing is left."""
    async with ground_clients(ground) as (hub, swarm):
        for image in images:
            for service in await swarm.list_services({LABEL_IMAGE: image}):
                user = service.labels.get(LABEL_USER, "")
                if user:
                    await hub.stop_server(user, "pool", remove=True)
                    for _ in range(50):
                        try:
                            await hub.delete_user(user)
                            break
                        except Exception:
                            await asyncio.sleep(0.2)
                await swarm.remove_service(service.id, settle_seconds=3)
        for image in images:
            leftover = await swarm.list_services({LABEL_IMAGE: image})
            assert leftover == [], [s.name for s in leftover]


def manager_of(client: TestClient[Any, Any]) -> PoolManager:
    return client.server.app[POOLS]


async def ready_servers(manager: PoolManager, image: str) -> int:
    return sum(s.waiting for s in manager.status() if s.image == image)


async def read_events(client: TestClient[Any, Any], path: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    async with client.get(path, headers=SSE, timeout=aiohttp.ClientTimeout(total=180)) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in ("ready", "failed"):
                break
    return events


def user_of(ready: dict[str, Any]) -> str:
    return str(ready["url"].rstrip("/").split("/")[-2])


async def test_pooled_launches_through_build_hand_out_fresh_servers_and_survive_a_restart(
    testground: dict[str, Any], tmp_path: Path
) -> None:
    spec = spec_for(testground, "binder-dockerfile")
    config = pool_config(testground, tmp_path, {spec: 2})
    image = (await resolve_real(config, spec)).build.image
    await asyncio.to_thread(push_image, testground, image)
    try:
        async with TestClient(TestServer(create_app(config))) as binder:
            manager = manager_of(binder)

            async def full() -> bool:
                return await ready_servers(manager, image) == 2

            await until(full, 120, "the pool filled to 2")
            async with ground_clients(testground) as (hub, swarm):
                first_pool = await pool_users(swarm, image)
            assert len(first_pool) == 2
            async with binder.get("/metrics") as resp:
                scraped = await resp.text()
            assert f'swarmbinder_warm_pool_servers{{pool="{spec}",state="waiting"}} 2.0' in scraped
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with binder.get("/api/admin/pools", headers=admin) as resp:
                assert resp.status == 200
                shown = (await resp.json())["pools"]
            assert [(p["spec"], p["image"], p["size"], p["waiting"]) for p in shown] == [
                (spec, image, 2, 2)
            ], shown

            started = time.monotonic()
            events = await read_events(binder, f"/build/{spec}")
            elapsed = time.monotonic() - started
            assert [e["phase"] for e in events] == ["built", "launching", "ready"], events
            ready = events[-1]
            assert elapsed < 2.0, f"a pooled launch took {elapsed:.2f} s"
            assert ready["url"].endswith("/pool/") and ready["image"] == image
            for name in (
                "repo_url",
                "binder_ref_url",
                "binder_request",
                "binder_persistent_request",
            ):
                assert ready[name], name
            assert ready["binder_client_ip"] == "127.0.0.1"
            handed = user_of(ready)
            assert handed in first_pool
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"token {ready['token']}"}
                async with session.get(ready["url"] + "api/status", headers=headers) as resp:
                    assert resp.status == 200
                async with session.get(ready["url"] + "api/status", allow_redirects=False) as resp:
                    assert resp.status in (302, 403)

            async with ground_clients(testground) as (hub, swarm):
                # handed out: claimed in Swarm, so it counts; a replacement is started at once
                assert handed in await pool_users(swarm, image, waiting=False)

                async def replaced() -> bool:
                    now = await pool_users(swarm, image)
                    return len(now) == 2 and handed not in now and bool(now - first_pool)

                await until(replaced, 120, "a replacement joined the pool")
                await until(full, 60, "the replacement is ready")

            second = await read_events(binder, f"/build/{spec}")
            assert second[-1]["phase"] == "ready" and user_of(second[-1]) != handed
            assert second[-1]["token"] != ready["token"]
            await until(full, 120, "the pool filled again")
            async with ground_clients(testground) as (hub, swarm):
                before_restart = await pool_users(swarm, image)

        # The app stopped; its waiting servers did not. A new app hands them out.
        async with TestClient(TestServer(create_app(config))) as binder:
            manager = manager_of(binder)
            await until(full, 30, "the restarted manager found the pool")
            again = await read_events(binder, f"/build/{spec}")
            assert again[-1]["phase"] == "ready"
            assert user_of(again[-1]) in before_restart
    finally:
        await remove_everything_of(testground, [image])


async def test_a_new_commit_drains_the_pool_and_fills_it_with_the_new_image(
    testground: dict[str, Any], tmp_path: Path
) -> None:
    """The branch moves from the first commit to the second (the resolver is told so); the
    pool's waiting servers of the old image stop and servers of the new one take their place."""
    repo = testground["repos"]["binder-two-commits"]
    moving = spec_for(testground, "binder-two-commits", repo["ref"])
    config = pool_config(testground, tmp_path, {moving: 1})
    old_commit, new_commit = repo["commits"]
    at = {"ref": old_commit}
    old = await resolve_real(config, spec_for(testground, "binder-two-commits", old_commit))
    new = await resolve_real(config, spec_for(testground, "binder-two-commits", new_commit))
    await asyncio.to_thread(push_image, testground, old.build.image)
    await asyncio.to_thread(push_image, testground, new.build.image)

    async def branch(path: str) -> Resolved:
        assert path == moving
        return old if at["ref"] == old_commit else new

    try:
        async with aiohttp.ClientSession() as session, SwarmClient.connect() as swarm:
            hub = HubClient(testground["hub_api_url"], testground["hub_api_token"], session)
            registry = RegistryClient(testground["registry_url"], session=session)
            launcher = Launcher(
                hub, swarm, hub_url=testground["hub_url"], registry=registry, launch_timeout=90
            )

            async def image_exists(image: str) -> bool:
                name, _, tag = image.rpartition(":")
                return await registry.manifest_exists(name, tag)

            manager = PoolManager(
                rules_from_config(config.pools.warm_pools),
                PoolServers(
                    hub, swarm, hub_url=testground["hub_url"], hub_id=testground["hub_service"]
                ),
                spawner=launcher,
                resolve=branch,
                image_exists=image_exists,
                builds=_NoBuilds(),
                resolve_interval=3600,
                interval=1,
            )
            runner = asyncio.create_task(manager.run())
            try:

                async def old_ready() -> bool:
                    return await ready_servers(manager, old.build.image) == 1

                await until(old_ready, 120, "the pool filled with the first commit")
                (old_user,) = await pool_users(swarm, old.build.image)

                at["ref"] = new_commit
                manager.notice_launch(moving, new.build.repo_url, new.build.image)

                async def moved() -> bool:
                    return (
                        await pool_users(swarm, old.build.image, waiting=None) == set()
                        and await ready_servers(manager, new.build.image) == 1
                    )

                await until(moved, 120, "the pool moved to the second commit")
                assert await hub.get_user(old_user) is None
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
                await manager.aclose()
                await launcher.aclose()
    finally:
        await remove_everything_of(testground, [old.build.image, new.build.image])


async def test_an_auto_pool_follows_launches_and_empties_when_idle(
    testground: dict[str, Any], tmp_path: Path
) -> None:
    """warm_pool_auto for real: no warm_pools at all; a launched spec gets a pool of its own,
    the next launch is handed a server from it, and once nobody launches it for
    warm_pool_idle_after the pool keeps no waiting server (each retires at warm_pool_max_age)."""
    spec = spec_for(testground, "binder-dockerfile")
    config = pool_config(
        testground,
        tmp_path,
        {},
        warm_pool_auto=1,
        warm_pool_auto_min_launches=1,
        warm_pool_auto_change_interval=1,
        warm_pool_idle_after=10,
        warm_pool_max_age=20,
    )
    image = (await resolve_real(config, spec)).build.image
    await asyncio.to_thread(push_image, testground, image)
    try:
        async with TestClient(TestServer(create_app(config))) as binder:
            manager = manager_of(binder)
            assert await ready_servers(manager, image) == 0
            cold = await read_events(binder, f"/build/{spec}")
            assert cold[-1]["phase"] == "ready" and not cold[-1]["url"].endswith("/pool/"), cold

            async def pooled() -> bool:
                return await ready_servers(manager, image) >= 1

            await until(pooled, 120, "the launched spec got a pool of its own")
            warm = await read_events(binder, f"/build/{spec}")
            assert warm[-1]["phase"] == "ready" and warm[-1]["url"].endswith("/pool/"), warm
            handed_out = time.monotonic()
            # The hand-out is replaced at once: the pool is full again before it goes idle.
            await until(pooled, 60, "the auto pool refilled after the hand-out")

            async def emptied() -> bool:
                async with ground_clients(testground) as (_, swarm):
                    return await pool_users(swarm, image, waiting=True) == set()

            # idle after 10 s, then each waiting server retires when 20 s old
            await until(emptied, 120, "the idle auto pool kept no waiting server")
            assert time.monotonic() - handed_out >= 10  # not before it went idle
    finally:
        await remove_everything_of(testground, [image])


class _NoBuilds:
    async def request(self, request: Any) -> Any:
        raise AssertionError("the images are in the registry: nothing to build")


async def test_pooled_launch_time(testground: dict[str, Any], tmp_path: Path) -> None:
    """/build to ready through a pool, ten times; printed for the report (-s), and bounded
    loosely so a regression to a cold launch (seconds) fails."""
    spec = spec_for(testground, "binder-dockerfile")
    config = pool_config(testground, tmp_path, {spec: 3})
    image = (await resolve_real(config, spec)).build.image
    await asyncio.to_thread(push_image, testground, image)
    times: list[float] = []
    try:
        async with TestClient(TestServer(create_app(config))) as binder:
            manager = manager_of(binder)
            for _ in range(10):

                async def some() -> bool:
                    return await ready_servers(manager, image) >= 1

                await until(some, 120, "a pool server is ready")
                started = time.monotonic()
                events = await read_events(binder, f"/build/{spec}")
                times.append(time.monotonic() - started)
                assert events[-1]["phase"] == "ready" and events[-1]["url"].endswith("/pool/")
        p50 = statistics.median(times)
        print(f"\npooled launch /build to ready: p50 {p50:.3f} s, max {max(times):.3f} s")
        assert p50 < 1.0
    finally:
        await remove_everything_of(testground, [image])
