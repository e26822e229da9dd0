"""Pools for the most launched specs, idle pools shrinking, and pools giving way when the swarm
is short: unit tests over the fake world of test_pools (the real pools are in
test_pools_swarm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from serve_support import serve_refusal
from test_pools import IMAGE_1, REPO, SPEC, Ground, make_ground

from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError, SwarmbinderError
from swarmbinder.labels import LABEL_SPEC
from swarmbinder.pools.auto import AutoSet, LaunchCounts
from swarmbinder.pools.pressure import shortage, swarm_pressure
from swarmbinder.swarm import NodeInfo, ServiceInfo

HOT = "gh/org/hot/HEAD"
WARM = "gh/org/warm/HEAD"
HOT_IMAGE = "registry:5000/binder-org-hot:h1"
WARM_IMAGE = "registry:5000/binder-org-warm:w1"


def auto_ground(**options: Any) -> Ground:
    settings: dict[str, Any] = {
        "auto": AutoSet(size=1, min_launches=3, change_interval=600),
        "auto_pool_size": 2,
    }
    settings.update(options)
    pools = settings.pop("pools", {})
    ground = make_ground(pools, **settings)
    ground.images.update({HOT: HOT_IMAGE, WARM: WARM_IMAGE})
    ground.registry.update({HOT_IMAGE, WARM_IMAGE})
    return ground


def launch(ground: Ground, path: str, times: int = 1, image: str = "") -> None:
    for _ in range(times):
        ground.manager.notice_launch(path, REPO.replace("repo", path.split("/")[2]), image)


def pooled_specs(ground: Ground) -> dict[str, int]:
    specs: dict[str, int] = {}
    for service in ground.world.pool_services():
        specs[service.labels[LABEL_SPEC]] = specs.get(service.labels[LABEL_SPEC], 0) + 1
    return specs


# -- counting ----------------------------------------------------------------------------------


def test_the_most_launched_specs_of_the_hour_with_enough_launches() -> None:
    counts = LaunchCounts()
    for _ in range(5):
        counts.add(HOT, 0)
    for _ in range(3):
        counts.add(WARM, 10)
    counts.add("gh/org/once/HEAD", 20)
    assert counts.top(5, min_launches=3, now=30) == [HOT, WARM]
    assert counts.top(1, min_launches=3, now=30) == [HOT]
    # spellings differing in case are one spec
    counts.add(WARM.upper(), 40)
    counts.add(WARM.upper(), 40)
    assert counts.top(1, min_launches=3, now=50) == [WARM.upper()]
    # launches older than the hour no longer count
    assert counts.top(5, min_launches=3, now=3605) == [WARM.upper()]
    assert counts.count(HOT, 3605) == 0


def test_a_client_launching_endless_specs_cannot_grow_the_counter() -> None:
    counts = LaunchCounts(max_specs=100)
    for _ in range(3):
        counts.add(HOT, 0)
    for n in range(10_000):
        counts.add(f"gh/attacker/r{n}/HEAD", 1)
    assert len(counts._launches) <= 100
    assert counts.top(1, min_launches=3, now=2) == [HOT]


def test_the_auto_set_changes_at_most_every_interval() -> None:
    auto = AutoSet(size=1, min_launches=2, change_interval=600)
    for _ in range(2):
        auto.counts.add(HOT, 0)
    assert auto.update(0) == ([HOT], [])
    for _ in range(5):
        auto.counts.add(WARM, 10)
    assert auto.update(10) is None  # too soon after the last change
    assert auto.update(600) == ([WARM], [HOT])
    assert auto.specs == (WARM,)
    assert auto.update(1300) is None  # nothing new


# -- the manager's auto pools ------------------------------------------------------------------


async def test_the_most_launched_spec_gets_a_pool_and_drains_when_it_drops_out() -> None:
    ground = auto_ground()
    launch(ground, WARM, 2)
    await ground.settle()
    assert pooled_specs(ground) == {}  # 2 launches are not enough
    launch(ground, WARM)
    await ground.settle()
    assert pooled_specs(ground) == {WARM: 2}
    (status,) = ground.manager.status()
    assert status.auto and status.spec == WARM and status.size == 2

    launch(ground, HOT, 5)
    await ground.settle()
    assert pooled_specs(ground) == {WARM: 2}  # the set changed less than 600 s ago
    ground.world.now += 600
    await ground.settle()
    assert pooled_specs(ground) == {HOT: 2}
    assert [s.spec for s in ground.manager.status()] == [HOT]


async def test_many_specs_launched_once_each_start_nothing() -> None:
    ground = auto_ground(auto=AutoSet(size=5, min_launches=3, change_interval=600))
    for n in range(200):
        ground.images[f"gh/attacker/r{n}/HEAD"] = f"registry:5000/a-{n}:x"
        launch(ground, f"gh/attacker/r{n}/HEAD")
    await ground.settle()
    assert pooled_specs(ground) == {}
    assert ground.world.spawns == []


async def test_a_spec_a_warm_pools_pattern_covers_is_left_to_it() -> None:
    ground = auto_ground(pools={SPEC: 1})
    launch(ground, SPEC, 5, IMAGE_1)
    await ground.settle()
    assert pooled_specs(ground) == {SPEC: 1}
    assert [(s.spec, s.auto) for s in ground.manager.status()] == [(SPEC, False)]


# -- idle pools --------------------------------------------------------------------------------


async def test_an_idle_pool_keeps_one_server_and_grows_back_on_a_launch() -> None:
    ground = make_ground({SPEC: 3}, idle_after=3600)
    await ground.settle()
    assert len(ground.world.pool_services(IMAGE_1)) == 3
    ground.world.now += 3601
    await ground.settle()
    (status,) = ground.manager.status()
    assert status.idle and status.size == 1
    # the surplus retired as it passed its max age, and was not replaced
    assert len(ground.world.pool_services(IMAGE_1)) == 1

    ground.manager.notice_launch(SPEC, REPO, IMAGE_1)
    await ground.settle()
    assert len(ground.world.pool_services(IMAGE_1)) == 3
    assert not ground.manager.status()[0].idle


async def test_a_hand_out_keeps_a_pool_busy() -> None:
    ground = make_ground({SPEC: 2}, idle_after=3600)
    await ground.settle()
    ground.world.now += 3000
    assert await ground.manager.hand_out(IMAGE_1) is not None
    ground.world.now += 3000
    await ground.settle()
    assert not ground.manager.status()[0].idle
    assert len(ground.world.pool_services(IMAGE_1)) == 2


async def test_an_idle_auto_pool_keeps_none_until_its_spec_is_launched() -> None:
    ground = auto_ground(idle_after=1000, auto=AutoSet(size=1, min_launches=3, change_interval=1))
    launch(ground, WARM, 3)
    await ground.settle()
    assert pooled_specs(ground) == {WARM: 2}
    ground.world.now += 1001
    await ground.settle()
    assert ground.manager.status()[0].size == 0
    assert pooled_specs(ground) == {}  # their max age (900 s) passed too
    launch(ground, WARM, 1)
    await ground.settle()
    assert pooled_specs(ground) == {WARM: 2}


# -- giving way to users -----------------------------------------------------------------------


async def test_pools_start_nothing_while_the_swarm_is_short() -> None:
    reason = ["the swarm's memory is 3% unreserved"]
    asked: list[int] = []

    async def pressure() -> str:
        asked.append(1)
        return reason[0]

    ground = make_ground({SPEC: 2}, pressure=pressure)
    await ground.settle()
    assert ground.world.pool_services() == []
    assert ground.manager.held_back == reason[0]
    reason[0] = ""
    await ground.settle()
    assert len(ground.world.pool_services(IMAGE_1)) == 2
    assert ground.manager.held_back == ""
    # a full pool does not ask the swarm at all
    before = len(asked)
    await ground.settle()
    assert len(asked) == before


def node(cpus: float, memory: int, *, state: str = "ready") -> NodeInfo:
    return NodeInfo.from_api(
        {
            "ID": "n",
            "Spec": {"Role": "worker", "Availability": "active"},
            "Status": {"State": state},
            "Description": {"Resources": {"NanoCPUs": int(cpus * 1e9), "MemoryBytes": memory}},
        }
    )


def service(cpus: float, memory: int, replicas: int = 1) -> ServiceInfo:
    return ServiceInfo.from_api(
        {
            "ID": "s",
            "Spec": {
                "Name": "s",
                "Mode": {"Replicated": {"Replicas": replicas}},
                "TaskTemplate": {
                    "Resources": {
                        "Reservations": {"NanoCPUs": int(cpus * 1e9), "MemoryBytes": memory}
                    }
                },
            },
        }
    )


GIB = 2**30


def test_shortage_is_unreserved_cpu_or_memory_of_the_ready_nodes() -> None:
    nodes = [node(2, 8 * GIB), node(2, 8 * GIB), node(64, 512 * GIB, state="down")]
    assert shortage(nodes, [service(1, GIB)], min_free_percent=10) == ""
    cpu_short = shortage(nodes, [service(1.9, GIB, replicas=2)], min_free_percent=10)
    assert "CPU is 5% unreserved" in cpu_short and "warm_pool_min_free_percent" in cpu_short
    memory_short = shortage(nodes, [service(0, 15 * GIB)], min_free_percent=10)
    assert "memory is 6% unreserved" in memory_short
    assert shortage(nodes, [service(0, 15 * GIB)], min_free_percent=0) == ""
    assert "no node" in shortage(nodes[2:], [], min_free_percent=10)
    # an engine that reports no resources is no reason to hold back
    assert shortage([node(0, 0)], [service(1, GIB)], min_free_percent=10) == ""


async def test_the_swarm_pressure_asks_the_engine_and_survives_its_errors() -> None:
    class Engine:
        failing = False

        async def nodes(self) -> list[NodeInfo]:
            if self.failing:
                raise SwarmbinderError("engine down")
            return [node(2, 8 * GIB)]

        async def list_services(self, labels: Any) -> list[ServiceInfo]:
            return [service(1.9, GIB)]

    engine = Engine()
    pressure = swarm_pressure(engine, min_free_percent=10)
    assert "CPU" in await pressure()
    engine.failing = True
    assert await pressure() == ""
    assert await swarm_pressure(Engine(), min_free_percent=0)() == ""


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("warm_pool_auto", -1),
        ("warm_pool_auto_size", 0),
        ("warm_pool_auto_min_launches", 0),
        ("warm_pool_auto_change_interval", 0),
        ("warm_pool_idle_after", 0),
        ("warm_pool_min_free_percent", 101),
        ("warm_pool_auto", "many"),
    ],
)
def test_bad_auto_options_are_a_config_error_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={option: value})
    assert caught.value.option == option


def test_a_bad_auto_option_stops_the_service_with_exit_2_and_one_line(tmp_path: Path) -> None:
    assert "warm_pool_auto" in serve_refusal(tmp_path, "warm_pool_auto: -3\n")


# -- several replicas --------------------------------------------------------------------------


async def test_replicas_with_different_auto_pools_do_not_drain_each_other() -> None:
    one = auto_ground()
    other = auto_ground()
    other.world = one.world  # one swarm and hub, two managers
    other.manager._servers = one.manager._servers
    other.manager._spawner = one.world
    other.manager._clock = one.world.clock
    launch(one, WARM, 3)  # only the first replica served these launches
    await one.settle()
    assert pooled_specs(one) == {WARM: 2}
    await other.settle()
    await one.settle()
    assert pooled_specs(one) == {WARM: 2}
    assert len(one.world.spawns) == 2  # nobody drained and refilled
    # the other replica still retires them at their max age, as its own
    one.world.now += 901
    await other.settle(rounds=1)
    assert pooled_specs(one) == {}


# -- wiring ------------------------------------------------------------------------------------


def test_warm_pool_auto_alone_runs_a_manager_that_counts_launches() -> None:
    from types import SimpleNamespace

    from swarmbinder.pools.setup import pools_from_config

    def manager_for(**overrides: Any) -> Any:
        config = load_config(env={}, overrides=overrides)
        launcher: Any = SimpleNamespace(slots=SimpleNamespace(queued=0))
        none: Any = None
        return pools_from_config(config, none, none, launcher, none, none, none)

    assert manager_for() is None  # no pool, auto off
    manager = manager_for(warm_pool_auto=3, warm_pool_auto_size=2, warm_pool_idle_after=60)
    assert manager is not None
    assert manager._auto.size == 3 and manager._auto_pool_size == 2
    assert manager._idle_after == 60
    auth = {"auth_enabled": True, "hub_url": "https://hub.example.org/", "hub_api_token": "t"}
    assert manager_for(warm_pool_auto=3, **auth) is None
