"""Launch placement by image, with fakes: which node is preferred, what is recorded, what the
launcher sends. The real thing on three nodes is tests/test_multinode_placement.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_hub_client import FakeHub, NoTasksSwarm, fake, launcher_for, run_launch

from swarmbinder import placement
from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError, SwarmUnavailable
from swarmbinder.hubclient import HubClient
from swarmbinder.labels import (
    KIND_BUILD,
    LABEL_HUB,
    LABEL_IMAGE,
    LABEL_KIND,
    LABEL_ROLE,
    ROLE_USER_SERVER,
)
from swarmbinder.launcher import PREFER_NODE_OPTION
from swarmbinder.placement import (
    ImagePlacement,
    NodeLoad,
    ServerShape,
    choose_node,
    loads_by_node,
    satisfies,
)
from swarmbinder.store import Store
from swarmbinder.swarm import NodeInfo, ServiceInfo, TaskState, TaskStateName

fake = fake  # the fake hub fixture, for the launcher's tests

GIB = 1024**3
IMAGE = "reg/binder-repo:abc"
HUB_CONFIG = Path(__file__).resolve().parent.parent / "stack" / "hub" / "jupyterhub_config.py"


def node(
    hostname: str,
    *,
    state: str = "ready",
    availability: str = "active",
    role: str = "worker",
    labels: Mapping[str, str] | None = None,
    cpus: float = 4,
    memory: int = 8 * GIB,
) -> NodeInfo:
    return NodeInfo(
        id=f"id-{hostname}",
        hostname=hostname,
        role=role,
        state=state,
        availability=availability,
        labels=dict(labels or {}),
        addr="",
        cpus=cpus,
        memory=memory,
    )


def task(
    service_id: str,
    node_id: str,
    state: TaskStateName = TaskStateName.RUNNING,
    *,
    exit_code: int | None = None,
    cpus: float = 0,
    memory: int = 0,
    timestamp: str = "2026-12-03T10:00:00Z",
) -> TaskState:
    return TaskState(
        id=f"t-{service_id}-{node_id}",
        service_id=service_id,
        node_id=node_id,
        state=state,
        desired_state="running",
        message="",
        error="",
        exit_code=exit_code,
        container_id="",
        timestamp=timestamp,
        reserved_cpus=cpus,
        reserved_memory=memory,
    )


def service(
    service_id: str,
    labels: Mapping[str, str],
    *,
    constraints: Sequence[str] = (),
    created_at: str = "2026-12-03T10:00:00Z",
    cpus: float = 0,
    memory: int = 0,
) -> ServiceInfo:
    return ServiceInfo(
        id=service_id,
        name=f"svc-{service_id}",
        labels=dict(labels),
        image=labels.get(LABEL_IMAGE, ""),
        created_at=created_at,
        constraints=tuple(constraints),
        reserved_cpus=cpus,
        reserved_memory=memory,
    )


def build_service(service_id: str, image: str = IMAGE) -> ServiceInfo:
    return service(service_id, {LABEL_KIND: KIND_BUILD, LABEL_IMAGE: image})


def server_service(service_id: str, image: str = IMAGE, **kwargs: Any) -> ServiceInfo:
    labels = {LABEL_ROLE: ROLE_USER_SERVER, LABEL_HUB: "hub", LABEL_IMAGE: image}
    return service(service_id, labels, **kwargs)


class FakeSwarm:
    """The part of SwarmClient placement reads: nodes, services by label, tasks by filter."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.node_list = nodes
        self.services: list[ServiceInfo] = []
        self.tasks: list[TaskState] = []
        self.task_queries: list[Mapping[str, Sequence[str]]] = []
        self.fail = False
        self.delay = 0.0

    async def nodes(self) -> list[NodeInfo]:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise SwarmUnavailable("the engine is away")
        return list(self.node_list)

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]:
        return [
            s
            for s in self.services
            if all(k in s.labels and (v is None or s.labels[k] == v) for k, v in labels.items())
        ]

    async def list_tasks(self, filters: Mapping[str, Sequence[str]]) -> list[TaskState]:
        self.task_queries.append(filters)
        found = self.tasks
        if "service" in filters:
            found = [t for t in found if t.service_id in filters["service"]]
        if "desired-state" in filters:
            found = [t for t in found if t.desired_state in filters["desired-state"]]
        return list(found)


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], float] = {}
        self.writes: list[list[tuple[str, str]]] = []

    async def note_image_nodes(self, seen: Sequence[tuple[str, str]], at: float) -> None:
        self.writes.append(list(seen))
        for pair in seen:
            self.rows[pair] = max(at, self.rows.get(pair, at))

    async def image_nodes(self, image: str) -> list[str]:
        mine = [(at, n) for (i, n), at in self.rows.items() if i == image]
        return [n for _, n in sorted(mine, key=lambda row: (-row[0], row[1]))]

    async def forget_image_nodes(self, seen_before: float) -> int:
        old = [pair for pair, at in self.rows.items() if at < seen_before]
        for pair in old:
            del self.rows[pair]
        return len(old)


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def placement_over(
    swarm: FakeSwarm, store: FakeStore, clock: Clock | None = None
) -> ImagePlacement:
    return ImagePlacement(swarm, store, hub_id="hub", max_imbalance=2, clock=clock or Clock())


WORKERS = [node("node1", role="manager"), node("node2"), node("node3")]


# -- constraints -------------------------------------------------------------------------------


def test_constraints_are_read_as_swarm_reads_them() -> None:
    worker = node("node2", labels={"zone": "East"})
    assert satisfies(worker, "node.role==worker")
    assert satisfies(worker, "node.role == Worker")  # values ignore case, spaces are trimmed
    assert not satisfies(worker, "node.role!=worker")
    assert satisfies(worker, "node.labels.zone==east")
    assert not satisfies(worker, "node.labels.gpu==true")  # a label it lacks
    assert satisfies(worker, "node.labels.gpu!=true")
    assert satisfies(worker, "node.hostname==node2") and satisfies(worker, "node.id==id-node2")
    # What the node's record cannot tell is left to Swarm (and the spawner's fallback).
    assert satisfies(worker, "engine.labels.fast==yes")
    assert satisfies(worker, "node.platform.os==windows")


# -- the choice ----------------------------------------------------------------------------------


def test_the_node_holding_the_image_is_chosen_and_no_other() -> None:
    chosen = choose_node(["node2"], WORKERS, {}, ServerShape(), max_imbalance=2)
    assert chosen is not None and chosen.hostname == "node2"
    assert choose_node([], WORKERS, {}, ServerShape(), max_imbalance=2) is None
    assert choose_node(["gone-host"], WORKERS, {}, ServerShape(), max_imbalance=2) is None


@pytest.mark.parametrize(
    "holder",
    [
        node("node2", availability="drain"),
        node("node2", availability="pause"),
        node("node2", state="down"),
        node("node2", state="disconnected"),
    ],
    ids=["drained", "paused", "down", "disconnected"],
)
def test_a_node_that_is_down_or_drained_is_never_preferred(holder: NodeInfo) -> None:
    nodes = [holder, node("node3")]
    assert choose_node(["node2"], nodes, {}, ServerShape(), max_imbalance=2) is None


def test_a_node_outside_the_user_servers_constraints_is_never_preferred() -> None:
    shape = ServerShape(constraints=("node.role==worker",))
    assert choose_node(["node1"], WORKERS, {}, shape, max_imbalance=2) is None
    chosen = choose_node(["node1", "node3"], WORKERS, {}, shape, max_imbalance=2)
    assert chosen is not None and chosen.hostname == "node3"


def test_a_full_node_is_never_preferred() -> None:
    shape = ServerShape(cpus=1, memory=2 * GIB)
    holder = node("node2", cpus=4, memory=8 * GIB)
    nodes = [holder, node("node3")]
    memory_full = {"id-node2": NodeLoad(tasks=2, cpus=1, memory=7 * GIB)}
    cpu_full = {"id-node2": NodeLoad(tasks=2, cpus=3.5, memory=0)}
    roomy = {"id-node2": NodeLoad(tasks=2, cpus=3, memory=6 * GIB)}
    assert choose_node(["node2"], nodes, memory_full, shape, max_imbalance=9) is None
    assert choose_node(["node2"], nodes, cpu_full, shape, max_imbalance=9) is None
    assert choose_node(["node2"], nodes, roomy, shape, max_imbalance=9) == holder
    # Without reservations Swarm never finds a node full, and neither do we.
    assert choose_node(["node2"], nodes, memory_full, ServerShape(), max_imbalance=9) == holder


def test_a_holder_much_busier_than_the_least_busy_node_is_not_preferred() -> None:
    """A burst of launches of one image spreads once its holders are busy (the hostile user
    who launches one image over and over cannot pile every server onto one node)."""
    loads = {"id-node2": NodeLoad(tasks=5), "id-node3": NodeLoad(tasks=3)}
    assert choose_node(["node2"], WORKERS[1:], loads, ServerShape(), max_imbalance=2) is not None
    loads = {"id-node2": NodeLoad(tasks=6), "id-node3": NodeLoad(tasks=3)}
    assert choose_node(["node2"], WORKERS[1:], loads, ServerShape(), max_imbalance=2) is None


def test_of_several_holders_the_least_busy_then_the_most_recently_seen() -> None:
    loads = {"id-node2": NodeLoad(tasks=2), "id-node3": NodeLoad(tasks=1)}
    both = ["node2", "node3"]
    chosen = choose_node(both, WORKERS, loads, ServerShape(), max_imbalance=5)
    assert chosen is not None and chosen.hostname == "node3"
    chosen = choose_node(both, WORKERS, {}, ServerShape(), max_imbalance=5)
    assert chosen is not None and chosen.hostname == "node2"


def test_loads_count_tasks_not_over_and_their_reservations() -> None:
    tasks = [
        task("a", "id-node2", cpus=0.5, memory=GIB),
        task("b", "id-node2", TaskStateName.PREPARING, cpus=1),
        task("c", "id-node2", TaskStateName.FAILED, cpus=8),
        task("d", "", TaskStateName.PENDING),  # not on a node yet
    ]
    assert loads_by_node(tasks) == {"id-node2": NodeLoad(tasks=2, cpus=1.5, memory=GIB)}


# -- the record ---------------------------------------------------------------------------------


async def test_scan_records_finished_builds_and_running_servers_by_hostname() -> None:
    swarm, store = FakeSwarm(WORKERS), FakeStore()
    swarm.services = [
        build_service("b-ok", "reg/binder-built:1"),
        build_service("b-failed", "reg/binder-failed:1"),
        server_service("s-run", "reg/binder-run:1"),
        server_service("s-pending", "reg/binder-pending:1"),
    ]
    swarm.tasks = [
        task("b-ok", "id-node2", TaskStateName.COMPLETE, exit_code=0),
        task("b-failed", "id-node2", TaskStateName.FAILED, exit_code=1),
        task("s-run", "id-node3", TaskStateName.RUNNING),
        task("s-pending", "id-node3", TaskStateName.PREPARING),  # still pulling
    ]
    assert await placement_over(swarm, store).scan() == 2
    assert sorted(store.rows) == [("reg/binder-built:1", "node2"), ("reg/binder-run:1", "node3")]


async def test_scan_writes_a_pair_again_only_an_hour_later() -> None:
    swarm, store, clock = FakeSwarm(WORKERS), FakeStore(), Clock()
    swarm.services = [server_service("s")]
    swarm.tasks = [task("s", "id-node2")]
    places = placement_over(swarm, store, clock)
    assert await places.scan() == 1
    clock.now += 60
    assert await places.scan() == 0
    clock.now += placement.NOTE_AGAIN_SECONDS
    assert await places.scan() == 1
    assert store.rows == {(IMAGE, "node2"): clock.now}


async def test_scan_learns_the_user_servers_constraints_and_reservations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    swarm = FakeSwarm(WORKERS)
    swarm.services = [
        server_service("old", constraints=["node.role==manager"], created_at="2026-01-01"),
        # the newest, with a preference's pin: the pin is the launch's, not the hub's
        server_service(
            "new",
            constraints=["node.role==worker", "node.id==id-node2"],
            created_at="2026-12-01",
            cpus=0.5,
            memory=GIB,
        ),
        # another hub's server says nothing of ours
        service("other", {LABEL_ROLE: ROLE_USER_SERVER, LABEL_HUB: "x"}, created_at="2027"),
    ]
    monkeypatch.setattr(placement, "TASK_QUERY_CHUNK", 1)  # ids are queried in chunks
    places = placement_over(swarm, FakeStore())
    await places.scan()
    assert places.shape == ServerShape(constraints=("node.role==worker",), cpus=0.5, memory=GIB)
    assert [q["service"] for q in swarm.task_queries] == [["new"], ["old"]]


# -- the preference at launch -------------------------------------------------------------------


async def test_a_launch_prefers_the_recorded_node() -> None:
    swarm, store = FakeSwarm(WORKERS), FakeStore()
    await store.note_image_nodes([(IMAGE, "node3")], 5.0)
    assert await placement_over(swarm, store).preferred_node(IMAGE) == "id-node3"
    assert await placement_over(swarm, store).preferred_node("reg/binder-other:1") is None


async def test_a_launch_right_after_its_build_asks_swarm_for_the_build_node() -> None:
    swarm, store = FakeSwarm(WORKERS), FakeStore()
    swarm.services = [build_service("b")]
    # Pushed: the builder is still running, and its node holds the image.
    swarm.tasks = [task("b", "id-node2", TaskStateName.RUNNING)]
    assert await placement_over(swarm, store).preferred_node(IMAGE) == "id-node2"


async def test_no_preference_when_swarm_does_not_answer_or_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    swarm, store = FakeSwarm(WORKERS), FakeStore()
    await store.note_image_nodes([(IMAGE, "node2")], 5.0)
    swarm.fail = True
    assert await placement_over(swarm, store).preferred_node(IMAGE) is None
    swarm.fail = False
    swarm.delay = 1.0
    monkeypatch.setattr(placement, "CHOICE_TIMEOUT_SECONDS", 0.05)
    assert await placement_over(swarm, store).preferred_node(IMAGE) is None


async def test_the_record_lives_in_the_store_across_a_restart(tmp_path: Path) -> None:
    swarm = FakeSwarm(WORKERS)
    swarm.services = [server_service("s")]
    swarm.tasks = [task("s", "id-node3")]
    async with await Store.open(tmp_path / "s.sqlite") as store:
        await placement_over(swarm, store).scan()  # type: ignore[arg-type]
    swarm.services, swarm.tasks = [], []  # the server is gone, the image is still on node3
    async with await Store.open(tmp_path / "s.sqlite") as store:
        again = placement_over(swarm, store)  # type: ignore[arg-type]
        assert await again.preferred_node(IMAGE) == "id-node3"


# -- the launcher and the hub ---------------------------------------------------------------------


class Prefers:
    def __init__(self, node_id: str | None) -> None:
        self.node_id = node_id
        self.asked: list[str] = []

    async def preferred_node(self, image: str) -> str | None:
        self.asked.append(image)
        return self.node_id


@pytest.mark.parametrize("node_id", ["id-node2", None])
async def test_the_launcher_names_the_preferred_node_in_the_spawn(
    fake: tuple[FakeHub, HubClient], node_id: str | None
) -> None:
    hub, client = fake
    hub.on("POST", "/users/[^/]+", (201, {}))
    hub.on("POST", "/users/[^/]+/server", (201, {}))
    launcher = launcher_for(client, NoTasksSwarm())
    prefers = Prefers(node_id)
    launcher._placement = prefers
    events = await run_launch(launcher)
    assert events[-1].phase.value == "ready"
    assert prefers.asked == ["reg/binder-x:1"]
    (body,) = [b for m, p, b in hub.calls if m == "POST" and p.endswith("/server")]
    assert body.get(PREFER_NODE_OPTION) == node_id


def test_the_hub_config_spells_the_option_and_checks_who_sent_it() -> None:
    text = HUB_CONFIG.read_text()
    assert f'PREFER_NODE_OPTION = "{PREFER_NODE_OPTION}"' in text
    # only the service whose token swarmbinder holds may pick a node
    assert 'BINDER_SERVICE = "swarmbinder"' in text
    assert '{"name": "swarmbinder", "api_token": API_TOKEN}' in text


def test_the_options_are_typed_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("launch_prefer_image_nodes: false\nlaunch_prefer_max_imbalance: 0\n")
    config = load_config(path, env={})
    assert config.hub.launch_prefer_image_nodes is False
    assert config.hub.launch_prefer_max_imbalance == 0
    path.write_text("launch_prefer_max_imbalance: -1\n")
    with pytest.raises(ConfigError) as bad:
        load_config(path, env={})
    assert "launch_prefer_max_imbalance" in str(bad.value)
    path.write_text("launch_prefer_image_nodes: sometimes\n")
    with pytest.raises(ConfigError) as bad:
        load_config(path, env={})
    assert "launch_prefer_image_nodes" in str(bad.value)
