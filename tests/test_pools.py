"""Warm pools over fakes: the rules, the manager's rounds, the hand-out, the launch flow.

The fakes are one small world (hub users, Swarm services, a spawner that makes both) so a test
reads as what a pool does to it. The same behaviour against the real hub and swarm is in
test_pools_swarm.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

import pytest
from serve_support import serve_refusal

from swarmbinder.buildjob import BuildRequest
from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError, LaunchFailed
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.hubclient import HubServer, HubUser
from swarmbinder.labels import (
    LABEL_HUB,
    LABEL_IMAGE,
    LABEL_POOL_CLAIMED,
    LABEL_REPO_URL,
    LABEL_ROLE,
    LABEL_SERVER_NAME,
    LABEL_SPEC,
    LABEL_USER,
    ROLE_USER_SERVER,
)
from swarmbinder.launch_flow import LaunchFlow, LaunchRequest
from swarmbinder.launcher import ServerRequest
from swarmbinder.policy.canonical import RepoIdentity
from swarmbinder.policy.quotas import Quotas
from swarmbinder.pools import PooledLauncher, PoolManager, PoolServers, rules_from_config
from swarmbinder.pools.rules import (
    LEARNED_SPEC_HOLD,
    Backoff,
    PoolRule,
    PoolTarget,
    notice_launch,
    targets_from_rules,
)
from swarmbinder.resolve import Resolved
from swarmbinder.swarm import ServiceInfo, TaskState, TaskStateName
from swarmbinder.userservers import UserServer

SPEC = "gh/org/repo/HEAD"
REPO = "https://github.com/org/repo"
IMAGE_1 = "registry:5000/binder-org-repo:aaa"
IMAGE_2 = "registry:5000/binder-org-repo:bbb"
HUB_URL = "https://hub.example.org/"


def resolved(image: str, path: str = SPEC) -> Resolved:
    provider, _, spec = path.partition("/")
    ref = image.rsplit(":", 1)[1]
    build = BuildRequest(provider, spec, REPO, ref, "org-repo", image)
    return Resolved(build=build, ref_url=f"{REPO}/tree/{ref}", resolved_spec=f"org/repo/{ref}")


# -- the fake world ----------------------------------------------------------------------------


@dataclass
class Service:
    id: str
    name: str
    labels: dict[str, str]
    created: float
    running: bool = True


@dataclass
class World:
    """A hub, a swarm and a spawner over one state."""

    now: float = 1_000_000.0
    users: dict[str, dict[str, bool]] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    tokens: list[tuple[str, list[str]]] = field(default_factory=list)
    spawns: list[str] = field(default_factory=list)
    failing_images: set[str] = field(default_factory=set)
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def clock(self) -> float:
        return self.now

    # hub
    async def create_user(self, name: str) -> None:
        self.users.setdefault(name, {})

    async def get_user(self, name: str) -> HubUser | None:
        if name not in self.users:
            return None
        servers = {k: HubServer(k, ready, None, "") for k, ready in self.users[name].items()}
        return HubUser(name, servers)

    async def delete_user(self, name: str) -> bool:
        return self.users.pop(name, None) is not None

    async def delete_user_once_stopped(self, name: str, *, patience: float = 10.0) -> bool:
        await self.delete_user(name)
        return True

    async def stop_server(self, name: str, server_name: str = "", *, remove: bool = False) -> None:
        self.users.get(name, {}).pop(server_name, None)
        for service in list(self.services.values()):
            if service.labels[LABEL_USER] == name:
                del self.services[service.id]

    async def create_token(
        self, name: str, *, scopes: list[str], note: str, expires_in: int | None = None
    ) -> str:
        token = f"token-{len(self.tokens)}-{name}"
        self.tokens.append((token, scopes))
        return token

    # swarm
    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]:
        found = []
        for s in self.services.values():
            if all(k in s.labels and (v is None or s.labels[k] == v) for k, v in labels.items()):
                created = f"{_iso(s.created)}"
                found.append(ServiceInfo(s.id, s.name, dict(s.labels), "", created, ()))
        return found

    async def claim_service_label(self, name_or_id: str, key: str, value: str) -> bool:
        service = self._service(name_or_id)
        if service is None or key in service.labels:
            return False
        service.labels[key] = value
        return True

    async def tasks(self, service_name: str) -> list[TaskState]:
        service = self._service(service_name)
        if service is None:
            return []
        state = TaskStateName.RUNNING if service.running else TaskStateName.FAILED
        return [TaskState("t", service.id, "n", state, "running", "", "", None, "", "1")]

    async def remove_service(self, name_or_id: str, *, settle_seconds: float = 10) -> bool:
        service = self._service(name_or_id)
        if service is not None:
            del self.services[service.id]
        return service is not None

    def _service(self, name_or_id: str) -> Service | None:
        for s in self.services.values():
            if name_or_id in (s.id, s.name):
                return s
        return None

    # spawner
    async def launch(
        self, image: str, **request: Unpack[ServerRequest]
    ) -> AsyncIterator[BuildEvent]:
        user = request.get("username") or "temp"
        server = request.get("server_name", "")
        self.spawns.append(user)
        yield BuildEvent.launching("starting")
        if image in self.failing_images:
            raise LaunchFailed("no", user_message="Launch failed: the image is broken")
        sid = f"s{next(self.ids)}"
        self.services[sid] = Service(
            sid,
            f"jupyter-{user}--{server}",
            {
                LABEL_ROLE: ROLE_USER_SERVER,
                LABEL_HUB: "hub",
                LABEL_USER: user,
                LABEL_SERVER_NAME: server,
                LABEL_IMAGE: image,
                LABEL_REPO_URL: request["repo_url"],
                LABEL_SPEC: request["provider_spec"],
            },
            self.now,
        )
        self.users.setdefault(user, {})[server] = True
        yield BuildEvent.ready(
            url="u", token="spawn-token", image=image, repo_url=request["repo_url"],
            binder_ref_url="", binder_launch_host="", binder_request="",
            binder_persistent_request="",
        )  # fmt: skip

    def pool_services(self, image: str | None = None, *, waiting: bool = True) -> list[Service]:
        return [
            s
            for s in self.services.values()
            if s.labels[LABEL_SERVER_NAME] == "pool"
            and (image is None or s.labels[LABEL_IMAGE] == image)
            and (LABEL_POOL_CLAIMED not in s.labels) == waiting
        ]


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class FakeBuilds:
    def __init__(self, world: World, registry: set[str]) -> None:
        self.world = world
        self.registry = registry
        self.requests: list[str] = []
        self.failing = False

    async def request(self, request: BuildRequest) -> FakeBuilds:
        self.requests.append(request.image)
        self._image = request.image
        return self

    async def events(self) -> AsyncIterator[BuildEvent]:
        if self.failing:
            yield BuildEvent.failed("repo2docker said no")
            return
        self.registry.add(self._image)
        yield BuildEvent.built(self._image)


@dataclass
class Ground:
    world: World
    manager: PoolManager
    images: dict[str, str]
    registry: set[str]
    builds: FakeBuilds
    busy: list[bool]

    async def settle(self, rounds: int = 4) -> None:
        """Rounds until spawns, builds and retirements in flight are done."""
        import asyncio

        for _ in range(rounds):
            await self.manager.reconcile()
            while self.manager._tasks:
                await asyncio.gather(*list(self.manager._tasks), return_exceptions=True)


def make_ground(pools: Mapping[str, int], *, max_age: float = 900, **options: Any) -> Ground:
    world = World()
    images = {SPEC: IMAGE_1}
    registry = {IMAGE_1}
    builds = FakeBuilds(world, registry)
    busy = [False]

    async def resolve(path: str) -> Resolved:
        return resolved(images[path], path)

    async def image_exists(image: str) -> bool:
        return image in registry

    servers = PoolServers(world, world, hub_url=HUB_URL, hub_id="hub")
    manager = PoolManager(
        rules_from_config(pools),
        servers,
        spawner=world,
        resolve=resolve,
        image_exists=image_exists,
        builds=builds,
        queue_busy=lambda: busy[0],
        max_age=max_age,
        resolve_interval=60,
        max_starting=10,
        clock=world.clock,
        **options,
    )
    return Ground(world, manager, images, registry, builds, busy)


def request_for(image: str, *, username: str | None = None) -> dict[str, Any]:
    return {
        "repo_url": REPO,
        "provider_spec": SPEC,
        "ref_url": f"{REPO}/tree/x",
        "binder_request": f"v2/{SPEC}",
        "binder_persistent_request": "v2/gh/org/repo/aaa",
        "binder_launch_host": "https://binder.example.org/",
        "binder_client_ip": "203.0.113.9",
        "username": username,
    }


# -- rules -------------------------------------------------------------------------------------


def test_a_pattern_that_names_a_spec_is_a_pool_from_the_start() -> None:
    literal = PoolRule("gh/org/repo/HEAD", 2)
    escaped = PoolRule("^git/http%3A%2F%2F127.0.0.1%3A8480%2Fbinder-two-commits.git/main$", 1)
    regex = PoolRule("^gh/org/.*", 3)
    assert literal.literal_spec == "gh/org/repo/HEAD"
    assert escaped.literal_spec == "git/http%3A%2F%2F127.0.0.1%3A8480%2Fbinder-two-commits.git/main"
    assert regex.literal_spec is None
    assert [t.path for t in targets_from_rules([literal, escaped, regex])] == [
        "gh/org/repo/HEAD",
        escaped.literal_spec,
    ]


def test_patterns_match_every_spelling_of_the_repository_as_bans_do() -> None:
    rule = PoolRule("https://github.com/org/repo", 1)
    assert rule.matches(RepoIdentity("gh", "Org/Repo/HEAD", "https://github.com/Org/Repo.git"))
    assert not rule.matches(RepoIdentity("gh", "org/other/HEAD", "https://github.com/org/other"))


def test_a_regex_pool_learns_its_spec_and_no_one_can_make_it_flap() -> None:
    rule = PoolRule("^gh/org/", 2)
    targets: list[PoolTarget] = []
    one = RepoIdentity("gh", "org/one/HEAD", "https://github.com/org/one")
    two = RepoIdentity("gh", "org/two/HEAD", "https://github.com/org/two")
    notice_launch(targets, [rule], "gh/org/one/HEAD", one, now=0)
    assert [t.path for t in targets] == ["gh/org/one/HEAD"]
    # a hostile client alternating specs does not move the pool (each move drains it)
    assert notice_launch(targets, [rule], "gh/org/two/HEAD", two, now=10) == []
    assert [t.path for t in targets] == ["gh/org/one/HEAD"]
    # once the first spec has gone unlaunched for the hold time, the next one takes over
    notice_launch(targets, [rule], "gh/org/two/HEAD", two, now=LEARNED_SPEC_HOLD + 1)
    assert [t.path for t in targets] == ["gh/org/two/HEAD"]


def test_backoff_grows_and_resets() -> None:
    backoff = Backoff(start=30, cap=100)
    assert [backoff.failed(0) for _ in range(4)] == [30, 60, 100, 100]
    assert not backoff.ready(99) and backoff.ready(100)
    backoff.succeeded()
    assert backoff.ready(0)


@pytest.mark.parametrize(
    ("pools", "problem"),
    [
        ({"gh/org/(repo": 1}, "not a valid regular expression"),
        ({"gh/org/repo": -1}, "must be 0 or more"),
        ({"gh/org/repo": "two"}, "expected an integer"),
    ],
)
def test_bad_pools_are_a_config_error_naming_the_option(
    pools: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"warm_pools": pools})
    assert caught.value.option == "warm_pools" and problem in caught.value.problem


def test_a_bad_pool_pattern_stops_the_service_with_exit_2_and_one_line(tmp_path: Path) -> None:
    assert "warm_pools" in serve_refusal(tmp_path, "warm_pools:\n  'gh/org/(repo': 2\n")


# -- the manager -------------------------------------------------------------------------------


async def test_a_pool_fills_to_its_size_and_hands_out_a_fresh_token() -> None:
    ground = make_ground({SPEC: 3})
    await ground.settle()
    world = ground.world
    assert len(world.pool_services(IMAGE_1)) == 3

    handed = await ground.manager.hand_out(IMAGE_1)
    assert handed is not None
    assert handed.url == f"{HUB_URL}user/{handed.user}/pool/"
    # the token was minted now, for that one server, and is not the one it was spawned with
    assert world.tokens == [(handed.token, [f"access:servers!server={handed.user}/pool"])]
    assert handed.token != "spawn-token"
    claimed = world.pool_services(IMAGE_1, waiting=False)
    assert [s.labels[LABEL_USER] for s in claimed] == [handed.user]

    # a replacement starts at once, and the next hand-out is another server
    await ground.settle()
    assert len(world.pool_services(IMAGE_1)) == 3
    second = await ground.manager.hand_out(IMAGE_1)
    assert second is not None and second.user != handed.user
    assert await ground.manager.hand_out(IMAGE_2) is None  # no pool holds that image


async def test_pool_servers_wait_outside_the_quotas_and_count_once_handed_out() -> None:
    ground = make_ground({SPEC: 2})
    await ground.settle()
    services = await ground.world.list_services({})
    servers = [s for s in (UserServer.from_service(x) for x in services) if s]
    assert [s.waiting_in_pool for s in servers] == [True, True]
    await ground.manager.hand_out(IMAGE_1)
    services = await ground.world.list_services({})
    servers = [s for s in (UserServer.from_service(x) for x in services) if s]
    assert sorted(s.waiting_in_pool for s in servers) == [False, True]


async def test_a_new_commit_drains_the_pool_and_fills_it_with_the_new_image() -> None:
    ground = make_ground({SPEC: 2})
    await ground.settle()
    handed = await ground.manager.hand_out(IMAGE_1)
    assert handed is not None
    ground.images[SPEC] = IMAGE_2
    ground.registry.add(IMAGE_2)
    ground.world.now += 61  # the next resolution is due
    await ground.settle()
    assert ground.world.pool_services(IMAGE_1) == []
    assert len(ground.world.pool_services(IMAGE_2)) == 2
    # the server already handed out stays with its user
    assert [s.labels[LABEL_USER] for s in ground.world.pool_services(IMAGE_1, waiting=False)] == [
        handed.user
    ]
    assert handed.user in ground.world.users


async def test_a_launch_that_resolved_to_a_new_image_drains_without_waiting() -> None:
    ground = make_ground({SPEC: 1})
    await ground.settle()
    ground.images[SPEC] = IMAGE_2
    ground.registry.add(IMAGE_2)
    ground.manager.notice_launch(SPEC, REPO, IMAGE_2)
    await ground.settle()
    assert ground.world.pool_services(IMAGE_1) == []
    assert len(ground.world.pool_services(IMAGE_2)) == 1


async def test_a_restarted_manager_finds_the_waiting_servers_and_hands_them_out() -> None:
    ground = make_ground({SPEC: 2})
    await ground.settle()
    before = {s.labels[LABEL_USER] for s in ground.world.pool_services(IMAGE_1)}
    await ground.manager.aclose()

    again = make_ground({SPEC: 2})
    again.world = ground.world
    again.manager._servers = PoolServers(ground.world, ground.world, hub_url=HUB_URL)
    again.manager._spawner = ground.world
    again.manager._clock = ground.world.clock
    await again.settle()
    assert {s.labels[LABEL_USER] for s in ground.world.pool_services(IMAGE_1)} == before
    handed = await again.manager.hand_out(IMAGE_1)
    assert handed is not None and handed.user in before


async def test_a_server_unclaimed_for_max_age_is_replaced() -> None:
    ground = make_ground({SPEC: 1}, max_age=900)
    await ground.settle()
    (old,) = ground.world.pool_services(IMAGE_1)
    ground.world.now += 901
    await ground.settle()
    (new,) = ground.world.pool_services(IMAGE_1)
    assert new.id != old.id
    assert old.labels[LABEL_USER] not in ground.world.users


async def test_a_dead_server_is_never_handed_out() -> None:
    ground = make_ground({SPEC: 2})
    await ground.settle()
    first, second = ground.world.pool_services(IMAGE_1)
    first.running = False
    handed = await ground.manager.hand_out(IMAGE_1)
    assert handed is not None and handed.user == second.labels[LABEL_USER]


async def test_two_replicas_never_hand_out_one_server() -> None:
    ground = make_ground({SPEC: 1})
    await ground.settle()
    other = make_ground({SPEC: 1})
    other.manager._servers = PoolServers(ground.world, ground.world, hub_url=HUB_URL)
    other.manager._clock = ground.world.clock
    other.manager._spawner = ground.world
    await other.manager.reconcile()  # it sees the same waiting server
    import asyncio

    one, two = await asyncio.gather(
        ground.manager.hand_out(IMAGE_1), other.manager.hand_out(IMAGE_1)
    )
    assert [h is not None for h in (one, two)].count(True) == 1


async def test_pools_give_way_while_launches_wait() -> None:
    ground = make_ground({SPEC: 3})
    ground.busy[0] = True
    await ground.settle()
    assert ground.world.pool_services() == []
    ground.busy[0] = False
    await ground.settle()
    assert len(ground.world.pool_services()) == 3


async def test_a_missing_image_is_built_once_and_a_failing_build_backs_off() -> None:
    ground = make_ground({SPEC: 1})
    ground.registry.clear()
    ground.builds.failing = True
    await ground.settle(rounds=5)
    assert ground.builds.requests == [IMAGE_1]  # one try, however many rounds
    assert ground.world.pool_services() == []
    (status,) = ground.manager.status()
    assert "repo2docker said no" in status.last_error and status.waiting == 0
    ground.world.now += 31  # the backoff's first wait
    await ground.settle(rounds=3)
    assert ground.builds.requests == [IMAGE_1, IMAGE_1]
    ground.world.now += 31  # not yet: the wait doubled
    await ground.settle(rounds=3)
    assert len(ground.builds.requests) == 2
    ground.builds.failing = False
    ground.world.now += 60
    await ground.settle()
    assert len(ground.builds.requests) == 3 and len(ground.world.pool_services()) == 1


async def test_a_failing_spawn_leaves_no_user_and_backs_off() -> None:
    ground = make_ground({SPEC: 2})
    ground.world.failing_images.add(IMAGE_1)
    await ground.settle(rounds=4)
    assert len(ground.world.spawns) == 2  # the first round's two, then the backoff
    assert ground.world.users == {} and ground.world.services == {}


# -- the launch flow with a pool ---------------------------------------------------------------


async def test_a_pooled_launch_is_a_cached_launch_to_the_client() -> None:
    ground = make_ground({SPEC: 1})
    await ground.settle()
    launcher = PooledLauncher(ground.world, ground.manager)

    async def resolve(path: str) -> Resolved:
        return resolved(IMAGE_1, path)

    async def image_exists(image: str) -> bool:
        return True

    quotas = Quotas(per_repo_quota=1)

    async def running() -> list[UserServer]:
        services = await ground.world.list_services({})
        found = [s for s in (UserServer.from_service(x) for x in services) if s]
        return [s for s in found if not s.waiting_in_pool]

    flow = LaunchFlow(
        resolve=resolve,
        image_exists=image_exists,
        builds=ground.builds,
        launcher=launcher,
        check_quota=quotas.gate(running),
        launch_budget=quotas.launch_gate(running),
    )
    request = LaunchRequest(
        "gh", "org/repo/HEAD", launch_host="https://binder.example.org/", client_ip="203.0.113.9"
    )
    events = [event async for event in flow.run(request)]
    assert [e.phase for e in events] == [Phase.BUILT, Phase.LAUNCHING, Phase.READY]
    ready = events[-1].fields
    assert ready["url"].endswith("/pool/") and ready["token"].startswith("token-")
    assert ready["image"] == IMAGE_1 and ready["repo_url"] == REPO
    assert ready["binder_launch_host"] == "https://binder.example.org/"
    assert ready["binder_request"] == f"v2/{SPEC}"
    assert ready["binder_persistent_request"] == "v2/gh/org/repo/aaa"
    assert ready["binder_client_ip"] == "203.0.113.9"
    assert ground.world.spawns == [ground.world.spawns[0]]  # no cold spawn

    # the handed-out server now counts: a per-repo quota of 1 refuses the next launch
    again = [event async for event in flow.run(request)]
    assert again[-1].phase is Phase.FAILED and again[-1].fields["status_code"] == 429


async def test_a_logged_in_user_never_gets_a_pool_server() -> None:
    ground = make_ground({SPEC: 1})
    await ground.settle()
    launcher = PooledLauncher(ground.world, ground.manager)
    events = [e async for e in launcher.launch(IMAGE_1, **request_for(IMAGE_1, username="ada"))]
    assert events[-1].fields["token"] == "spawn-token"  # the cold launch's
    assert len(ground.world.pool_services(IMAGE_1)) == 1


async def test_an_empty_pool_falls_back_to_the_cold_launch() -> None:
    ground = make_ground({SPEC: 1})
    launcher = PooledLauncher(ground.world, ground.manager)
    events = [e async for e in launcher.launch(IMAGE_1, **request_for(IMAGE_1))]
    assert [e.phase for e in events] == [Phase.LAUNCHING, Phase.READY]
    assert events[-1].fields["token"] == "spawn-token"
