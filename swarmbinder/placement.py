"""Launch placement by image: a user server prefers a node that already holds its image.

A repository's image is most of a cold launch's time on a node that has to pull it (hundreds of
megabytes to gigabytes for repo2docker images), and nothing on a node that has it. Swarm knows
nothing of images on nodes and has no "prefer" (its ``spread`` preference only balances), so
Binder keeps the knowledge and names one node in the spawn request; the hub's spawner
(``stack/hub/jupyterhub_config.py``) pins the task there with a ``node.id==`` constraint and
drops it again (a service update) when the task is not running within a few seconds: the
preference never fails a launch.

Where the knowledge comes from: Swarm's own records only, never a request.

* :meth:`ImagePlacement.scan`, every few seconds: build services whose task completed (the
  node that ran repo2docker holds the image it built) and user-server services whose task runs
  (the node has pulled it). Each ``(image, node hostname)`` goes to the store (table
  ``image_nodes``), so it survives restarts and is shared by replicas. Hostnames, not node ids:
  a host that leaves and rejoins the swarm gets a new id and keeps its images.
* At launch, when the store knows no node for the image, the image's build services are asked
  directly: a launch right after its build comes before the next scan.

Which node (:func:`choose_node`): of the nodes known to hold the image, those that are ready
and active (never down, drained or paused), satisfy the user servers' placement constraints
as Swarm would, and have room: unreserved CPU and memory for one more user server (what user
servers reserve is read from their services), and no more than ``max_imbalance`` tasks above
the least busy eligible node. Of those, the least busy. None: placement is Swarm's, as without
this module.

What a hostile user could do, and why it does not help them:

* name a node in their own spawn request to the hub (possible only with ``auth_enabled``,
  where users hold hub tokens): the spawner honours ``prefer_node`` only in a spawn made with
  the ``swarmbinder`` service's token, so theirs is ignored;
* launch one image over and over to pile servers onto the nodes holding it: a node more than
  ``max_imbalance`` tasks busier than the least busy one, or without room for a server's
  reservations, is not preferred, so a burst spreads as it would without preference;
* make their repository's build or server claim to be on a node: the node is the task's
  ``NodeID`` as Swarm's manager records it, which nothing inside a container can write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import SwarmbinderError
from .labels import KIND_BUILD, LABEL_HUB, LABEL_IMAGE, LABEL_KIND, LABEL_ROLE, ROLE_USER_SERVER
from .swarm import TERMINAL_STATES, NodeInfo, ServiceInfo, TaskState, TaskStateName

log = logging.getLogger(__name__)

#: Seconds between scans of Swarm for nodes holding images.
SCAN_SECONDS = 5.0
#: A pair already recorded is written again only this much later (its ``seen_at`` moves on).
NOTE_AGAIN_SECONDS = 3600.0
#: Pairs not seen for this long are forgotten: the node's images may have been pruned since.
FORGET_AFTER_SECONDS = 30 * 24 * 3600.0
#: A launch waits at most this long for a preference; past it, Swarm places the server.
CHOICE_TIMEOUT_SECONDS = 2.0
#: Service ids per task query (each id is 25 characters of the query string).
TASK_QUERY_CHUNK = 50


@dataclass(frozen=True)
class NodeLoad:
    """What runs on a node: tasks not yet over, and what they reserve."""

    tasks: int = 0
    cpus: float = 0.0
    memory: int = 0


@dataclass(frozen=True)
class ServerShape:
    """What a user server asks of its node, as the hub's user-server services show it."""

    #: The hub's placement constraints (a preference's ``node.id==`` left out).
    constraints: tuple[str, ...] = ()
    cpus: float = 0.0
    memory: int = 0

    @classmethod
    def of(cls, service: ServiceInfo) -> ServerShape:
        return cls(
            constraints=tuple(c for c in service.constraints if not _pins_node(c)),
            cpus=service.reserved_cpus,
            memory=service.reserved_memory,
        )


def _pins_node(constraint: str) -> bool:
    return constraint.replace(" ", "").startswith("node.id==")


def loads_by_node(tasks: Iterable[TaskState]) -> dict[str, NodeLoad]:
    """Each node's :class:`NodeLoad` from the swarm's tasks (those over are left out)."""
    loads: dict[str, NodeLoad] = {}
    for task in tasks:
        if not task.node_id or task.state in TERMINAL_STATES:
            continue
        load = loads.get(task.node_id, NodeLoad())
        loads[task.node_id] = NodeLoad(
            load.tasks + 1, load.cpus + task.reserved_cpus, load.memory + task.reserved_memory
        )
    return loads


def _node_attribute(node: NodeInfo, key: str) -> str | None:
    """The value a Swarm constraint's ``key`` reads on ``node``; None if we cannot tell."""
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.hostname
    if key == "node.role":
        return node.role
    if key.startswith("node.labels."):
        return node.labels.get(key.removeprefix("node.labels."), "")
    return None  # engine labels, platform: not in the node's record


def satisfies(node: NodeInfo, constraint: str) -> bool:
    """Whether ``node`` meets one Swarm placement constraint (``key==value``, ``key!=value``;
    values compare ignoring case, as Swarm's do). A constraint we cannot evaluate counts as
    met: Swarm judges it, and the spawner's fallback covers a wrong guess."""
    for operator in ("!=", "=="):
        key, found, value = constraint.partition(operator)
        if found:
            break
    else:
        return True
    actual = _node_attribute(node, key.strip())
    if actual is None:
        return True
    equal = actual.lower() == value.strip().lower()
    return equal if operator == "==" else not equal


def _has_room(node: NodeInfo, load: NodeLoad, shape: ServerShape) -> bool:
    if shape.cpus and node.cpus and node.cpus - load.cpus < shape.cpus:
        return False
    return not (shape.memory and node.memory and node.memory - load.memory < shape.memory)


def choose_node(
    holders: Sequence[str],
    nodes: Sequence[NodeInfo],
    loads: Mapping[str, NodeLoad],
    shape: ServerShape,
    *,
    max_imbalance: int,
) -> NodeInfo | None:
    """The node a user server of an image held on ``holders`` (hostnames, most recently seen
    first) should start on, or None for Swarm's own placement (see the module's docstring)."""
    eligible = [
        n
        for n in nodes
        if n.state == "ready"
        and n.availability == "active"
        and all(satisfies(n, c) for c in shape.constraints)
    ]
    if not eligible:
        return None
    least = min(loads.get(n.id, NodeLoad()).tasks for n in eligible)
    rank = {hostname: i for i, hostname in reversed(list(enumerate(holders)))}
    candidates = [
        n
        for n in eligible
        if n.hostname in rank
        and _has_room(n, loads.get(n.id, NodeLoad()), shape)
        and loads.get(n.id, NodeLoad()).tasks - least <= max_imbalance
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (loads.get(n.id, NodeLoad()).tasks, rank[n.hostname]))


class PlacementSwarm(Protocol):
    async def nodes(self) -> list[NodeInfo]: ...

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]: ...

    async def list_tasks(self, filters: Mapping[str, Sequence[str]]) -> list[TaskState]: ...


class ImageNodeStore(Protocol):
    async def note_image_nodes(self, seen: Sequence[tuple[str, str]], at: float) -> None: ...

    async def image_nodes(self, image: str) -> list[str]: ...

    async def forget_image_nodes(self, seen_before: float) -> int: ...


def _holds_image(task: TaskState, *, build: bool) -> bool:
    """A build's node holds the image once the build succeeded (or is pushing: the builder
    runs on after the push); a user server's once its task runs (the image was pulled)."""
    if build:
        return task.succeeded or task.state is TaskStateName.RUNNING
    return task.state is TaskStateName.RUNNING


class ImagePlacement:
    """Records which nodes hold which images, and names the node a launch should prefer.

    ``hub_id``: only that hub's user servers are read (None: every swarmbinder user server).
    """

    def __init__(
        self,
        swarm: PlacementSwarm,
        store: ImageNodeStore,
        *,
        hub_id: str | None,
        max_imbalance: int,
        clock: Callable[[], float],
    ) -> None:
        self._swarm = swarm
        self._store = store
        self._hub_id = hub_id
        self._max_imbalance = max_imbalance
        self._clock = clock
        self._shape = ServerShape()
        #: (image, hostname) -> when it was last written to the store
        self._noted: dict[tuple[str, str], float] = {}

    @property
    def shape(self) -> ServerShape:
        return self._shape

    # -- the choice, at launch --------------------------------------------------------------

    async def preferred_node(self, image: str) -> str | None:
        """The id of the node the server of ``image`` should start on, or None. Never raises
        and never takes longer than :data:`CHOICE_TIMEOUT_SECONDS`: a launch goes on without."""
        try:
            async with asyncio.timeout(CHOICE_TIMEOUT_SECONDS):
                return await self._choose(image)
        except (SwarmbinderError, TimeoutError) as exc:
            log.info("no node preference for %s: %s", image, exc or "timed out")
            return None

    async def _choose(self, image: str) -> str | None:
        holders = await self._store.image_nodes(image)
        nodes_call = asyncio.ensure_future(self._swarm.nodes())
        try:
            if not holders:
                holders = await self._build_nodes(image, nodes_call)
            if not holders:
                return None
            nodes = await nodes_call
        finally:
            if not nodes_call.done():
                nodes_call.cancel()
                with contextlib.suppress(asyncio.CancelledError, SwarmbinderError):
                    await nodes_call
        running = await self._swarm.list_tasks({"desired-state": ["running"]})
        node = choose_node(
            holders,
            nodes,
            loads_by_node(running),
            self._shape,
            max_imbalance=self._max_imbalance,
        )
        if node is not None:
            log.info("launch of %s prefers node %s, which holds it", image, node.hostname)
        return node.id if node is not None else None

    async def _build_nodes(self, image: str, nodes: Awaitable[list[NodeInfo]]) -> list[str]:
        """Hostnames of the nodes whose build of ``image`` is done (asked of Swarm directly)."""
        builds = await self._swarm.list_services({LABEL_KIND: KIND_BUILD, LABEL_IMAGE: image})
        if not builds:
            return []
        tasks = await self._swarm.list_tasks({"service": [s.id for s in builds]})
        hostnames = {n.id: n.hostname for n in await nodes}
        done = [t for t in tasks if _holds_image(t, build=True) and t.node_id in hostnames]
        done.sort(key=lambda t: t.timestamp, reverse=True)
        return list(dict.fromkeys(hostnames[t.node_id] for t in done))

    # -- the record, in the background ------------------------------------------------------

    async def scan(self) -> int:
        """Record the nodes Swarm shows holding images now; how many pairs were written."""
        builds = await self._swarm.list_services({LABEL_KIND: KIND_BUILD})
        server_labels: dict[str, str | None] = {LABEL_ROLE: ROLE_USER_SERVER}
        if self._hub_id is not None:
            server_labels[LABEL_HUB] = self._hub_id
        servers = await self._swarm.list_services(server_labels)
        if servers:
            self._shape = ServerShape.of(max(servers, key=lambda s: s.created_at))
        images = {s.id: s.labels.get(LABEL_IMAGE, "") for s in builds}
        images |= {s.id: s.labels.get(LABEL_IMAGE, "") or s.image for s in servers}
        images = {service: image for service, image in images.items() if image}
        if not images:
            return 0
        build_ids = {s.id for s in builds}
        hostnames = {n.id: n.hostname for n in await self._swarm.nodes()}
        ids = sorted(images)
        seen: set[tuple[str, str]] = set()
        for start in range(0, len(ids), TASK_QUERY_CHUNK):
            chunk = ids[start : start + TASK_QUERY_CHUNK]
            for task in await self._swarm.list_tasks({"service": chunk}):
                hostname = hostnames.get(task.node_id)
                if hostname and _holds_image(task, build=task.service_id in build_ids):
                    seen.add((images[task.service_id], hostname))
        now = self._clock()
        fresh = sorted(p for p in seen if now - self._noted.get(p, -1e18) >= NOTE_AGAIN_SECONDS)
        await self._store.note_image_nodes(fresh, now)
        if len(self._noted) > 100_000:
            self._noted.clear()  # a bound on memory; the cost is one write per pair again
        self._noted.update(dict.fromkeys(fresh, now))
        return len(fresh)

    async def scan_forever(self, interval: float = SCAN_SECONDS) -> None:
        """Scan every ``interval`` seconds until cancelled, forgetting old pairs hourly. A
        scan that fails (the engine or the store does not answer) is retried next round."""
        forgotten_at = float("-inf")
        while True:
            try:
                await self.scan()
                now = self._clock()
                if now - forgotten_at >= NOTE_AGAIN_SECONDS:
                    await self._store.forget_image_nodes(now - FORGET_AFTER_SECONDS)
                    forgotten_at = now
            except SwarmbinderError as exc:
                log.info("image placement: scan skipped: %s", exc)
            await asyncio.sleep(interval)


def image_placement(
    swarm: PlacementSwarm,
    store: ImageNodeStore,
    *,
    enabled: bool,
    hub_id: str | None,
    max_imbalance: int,
    clock: Callable[[], float],
    start: Callable[[Awaitable[None], str], None],
) -> ImagePlacement | None:
    """The placement for the launcher, its scan started with ``start``; None when
    ``launch_prefer_image_nodes`` is off."""
    if not enabled:
        return None
    placement = ImagePlacement(
        swarm, store, hub_id=hub_id, max_imbalance=max_imbalance, clock=clock
    )
    start(placement.scan_forever(), "image-placement")
    return placement
