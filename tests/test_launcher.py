"""Launches through the test ground's real JupyterHub and SwarmSpawner."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from docker_cli import adocker_json

from swarmbinder import naming
from swarmbinder.errors import LaunchFailed
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.hubclient import HubClient
from swarmbinder.jobspec import JobSpec
from swarmbinder.labels import (
    LABEL_HUB,
    LABEL_ROLE,
    LABEL_SERVER_NAME,
    LABEL_USER,
    ROLE_USER_SERVER,
)
from swarmbinder.launcher import Launcher
from swarmbinder.registry import RegistryClient
from swarmbinder.swarm import SwarmClient
from swarmbinder.userservers import count_by_repo, list_user_servers, reap_orphans

pytestmark = pytest.mark.swarm

REPO_URL = "http://127.0.0.1:8480/binder-dockerfile.git"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    async with SwarmClient.connect() as client:
        yield client


@pytest.fixture
def hub(testground: dict[str, Any], session: aiohttp.ClientSession) -> HubClient:
    return HubClient(testground["hub_api_url"], testground["hub_api_token"], session)


class CountingHub(HubClient):
    """The real client, counting the users it creates."""

    created: list[str]

    async def create_user(self, name: str) -> None:
        self.created.append(name)
        await super().create_user(name)


@pytest.fixture
async def launcher(
    testground: dict[str, Any], session: aiohttp.ClientSession, swarm: SwarmClient
) -> AsyncIterator[Launcher]:
    hub = CountingHub(testground["hub_api_url"], testground["hub_api_token"], session)
    hub.created = []
    registry = RegistryClient(testground["registry_url"], session=session)
    launcher = Launcher(
        hub, swarm, hub_url=testground["hub_url"], registry=registry, launch_timeout=90
    )
    launcher.hub = hub  # type: ignore[attr-defined]
    yield launcher
    await launcher.aclose()
    for name in hub.created:  # whatever a failed assertion left behind
        await hub.delete_user(name)
        await swarm.remove_service(naming.spawner_service_name(name), settle_seconds=1)


def launch(launcher: Launcher, image: str) -> AsyncIterator[BuildEvent]:
    return launcher.launch(
        image,
        repo_url=REPO_URL,
        provider_spec="git/http%3A%2F%2F127.0.0.1%3A8480%2Fbinder-dockerfile.git/main",
        ref_url=REPO_URL,
        binder_request="v2/git/binder-dockerfile/main",
        binder_persistent_request="v2/git/binder-dockerfile/abc",
        binder_launch_host="http://binder.test/",
    )


async def collect(events: AsyncIterator[BuildEvent]) -> list[BuildEvent]:
    return [event async for event in events]


async def service_gone(swarm: SwarmClient, name: str, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await swarm.inspect_service(name) is None:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_launch_ends_ready_with_a_server_that_answers_its_token(
    launcher: Launcher,
    hub: HubClient,
    swarm: SwarmClient,
    session: aiohttp.ClientSession,
    testground: dict[str, Any],
    launchable_image: str,
) -> None:
    events = await collect(launch(launcher, launchable_image))
    ready = events[-1]
    assert ready.phase is Phase.READY, events
    assert all(e.phase is Phase.LAUNCHING for e in events[:-1])
    fields = ready.fields
    assert fields["url"].startswith(testground["hub_url"] + "user/") and fields["url"].endswith("/")
    assert fields["image"] == launchable_image and fields["repo_url"] == REPO_URL
    assert fields["binder_launch_host"] == "http://binder.test/"
    assert fields["binder_request"] == "v2/git/binder-dockerfile/main"
    user = fields["url"].rstrip("/").rsplit("/", 1)[-1]
    service = naming.spawner_service_name(user)

    async with session.get(
        fields["url"] + "api/status", headers={"Authorization": f"token {fields['token']}"}
    ) as response:
        assert response.status == 200
        assert "started" in await response.json()
    async with session.get(fields["url"] + "api/status", allow_redirects=False) as response:
        assert response.status in (302, 403)  # no token: not let in

    # Swarm knows it as a labelled user server of this hub, and the hub knows it.
    servers = await list_user_servers(swarm, hub_id=testground["hub_service"])
    mine = [s for s in servers if s.user == user]
    assert [(s.image, s.repo_url, s.service_name) for s in mine] == [
        (launchable_image, REPO_URL, service)
    ]
    assert mine[0].spec.startswith("git/") and count_by_repo(servers)[REPO_URL] >= 1
    assert (user, "") in await hub.active_servers()
    # The hub rotates the server's log: a repository printing forever cannot fill the disk.
    log_driver = "{{json .Spec.TaskTemplate.LogDriver}}"
    assert await adocker_json("service", "inspect", "--format", log_driver, service) == {
        "Name": "json-file", "Options": {"max-size": "10m", "max-file": "3"}
    }  # fmt: skip

    assert await hub.delete_user(user)
    assert await service_gone(swarm, service)


async def test_a_foreign_image_is_refused_with_the_hubs_reason(
    testground: dict[str, Any],
    session: aiohttp.ClientSession,
    swarm: SwarmClient,
    hub: HubClient,
    launchable_image: str,
) -> None:
    # The same image under another repository path: in the registry, but not ours.
    registry = testground["registry"]
    foreign = f"{registry}/elsewhere/{launchable_image.rsplit('/', 1)[1]}"
    counting = CountingHub(testground["hub_api_url"], testground["hub_api_token"], session)
    counting.created = []
    no_registry_check = Launcher(counting, swarm, hub_url=testground["hub_url"], registry=None)
    started = time.monotonic()
    with pytest.raises(LaunchFailed) as caught:
        await collect(launch(no_registry_check, foreign))
    # The hub's refusal ends it: no retries, no waiting out the launch timeout.
    assert time.monotonic() - started < 20
    assert "not one this Binder built" in caught.value.user_message
    assert foreign in caught.value.user_message
    [user] = counting.created
    assert await hub.get_user(user) is None
    assert await swarm.inspect_service(naming.spawner_service_name(user)) is None


async def test_an_image_without_jupyter_fails_fast_and_leaves_nothing(
    launcher: Launcher, hub: HubClient, swarm: SwarmClient, image_without_jupyter: str
) -> None:
    started = time.monotonic()
    with pytest.raises(LaunchFailed) as caught:
        await collect(launch(launcher, image_without_jupyter))
    elapsed = time.monotonic() - started
    # The task fails about a second after the POST; the failure and the cleanup follow it,
    # well before the 90 s launch timeout.
    assert elapsed < 30, elapsed
    assert "has no Jupyter server" in caught.value.user_message
    assert "could not start" in caught.value.user_message
    [user] = launcher.hub.created  # type: ignore[attr-defined]
    assert await hub.get_user(user) is None
    assert await swarm.inspect_service(naming.spawner_service_name(user)) is None


async def test_a_missing_tag_fails_before_the_hub_is_asked(
    launcher: Launcher, launchable_image: str
) -> None:
    missing = launchable_image.rsplit(":", 1)[0] + ":never-pushed"
    with pytest.raises(LaunchFailed) as caught:
        await collect(launch(launcher, missing))
    assert "not in the registry" in caught.value.user_message
    assert launcher.hub.created == []  # type: ignore[attr-defined]


async def test_a_caller_that_walks_away_leaves_no_user_or_service(
    launcher: Launcher, hub: HubClient, swarm: SwarmClient, launchable_image: str
) -> None:
    events = launch(launcher, launchable_image)

    async def first_event() -> BuildEvent:
        return await anext(events)

    first = asyncio.create_task(first_event())
    created: list[str] = launcher.hub.created  # type: ignore[attr-defined]
    # Walk away once the server's service exists: the spawn is under way.
    for _ in range(300):
        if created and await swarm.inspect_service(naming.spawner_service_name(created[0])):
            break
        await asyncio.sleep(0.1)
    assert created, "the launch never created its user"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await launcher.aclose()
    [user] = created
    assert await hub.get_user(user) is None
    assert await service_gone(swarm, naming.spawner_service_name(user), within=5)


async def test_the_reaper_removes_only_services_the_hub_does_not_know(
    testground: dict[str, Any], swarm: SwarmClient, hub: HubClient
) -> None:
    run = uuid.uuid4().hex[:8]
    hub_id = f"reapertest-{run}"  # a hub of our own: nobody else's servers are in reach

    def orphan(name: str) -> JobSpec:
        return JobSpec(
            name=name,
            image=testground["images"]["singleuser"],
            command=["sleep"],
            args=["120"],
            labels={
                LABEL_ROLE: ROLE_USER_SERVER,
                LABEL_HUB: hub_id,
                LABEL_USER: f"gone-{run}",
                LABEL_SERVER_NAME: "",
            },
        )

    old, young = f"sbtest-orphan-{run}", f"sbtest-young-{run}"
    await swarm.create_job(orphan(old))
    try:
        await asyncio.sleep(2.5)
        await swarm.create_job(orphan(young))
        removed = await reap_orphans(swarm, hub, hub_id=hub_id, grace_seconds=2)
        assert removed == [old]
        assert await swarm.inspect_service(old) is None
        assert await swarm.inspect_service(young) is not None
    finally:
        await swarm.remove_service(old, settle_seconds=1)
        await swarm.remove_service(young, settle_seconds=1)
