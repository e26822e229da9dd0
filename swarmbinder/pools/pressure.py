"""Whether the swarm is short of CPU or memory: pools then start nothing (users go first).

Swarm places a task by what the services reserve, not by what containers use at the moment, so
the measure is the same: the ready, active nodes' CPUs and memory against the reservations of
every service in the swarm (user servers, pool servers, builds, the stack). It asks the engine
once per manager round that wants to start a server, never on the launch path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from ..errors import SwarmbinderError
from ..swarm import NodeInfo, ServiceInfo

log = logging.getLogger(__name__)


class SwarmResources(Protocol):
    async def nodes(self) -> list[NodeInfo]: ...

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]: ...


def shortage(
    nodes: Sequence[NodeInfo], services: Sequence[ServiceInfo], *, min_free_percent: int
) -> str:
    """Why the swarm is short ("" when it is not): unreserved CPU or memory of the ready,
    active nodes below ``min_free_percent`` of their total."""
    usable = [n for n in nodes if n.state == "ready" and n.availability == "active"]
    if not usable:
        return "no node of the swarm is ready"
    cpus = sum(n.cpus for n in usable)
    memory = sum(n.memory for n in usable)
    reserved_cpus = sum(s.reserved_cpus for s in services)
    reserved_memory = sum(s.reserved_memory for s in services)
    for what, total, reserved in (
        ("CPU", cpus, reserved_cpus),
        ("memory", memory, reserved_memory),
    ):
        if total <= 0:
            continue  # the engine did not say: nothing to judge by
        free_percent = 100.0 * (total - reserved) / total
        if free_percent < min_free_percent:
            return (
                f"the swarm's {what} is {max(0.0, free_percent):.0f}% unreserved, "
                f"below warm_pool_min_free_percent ({min_free_percent}%)"
            )
    return ""


def swarm_pressure(swarm: SwarmResources, *, min_free_percent: int) -> Callable[[], Awaitable[str]]:
    """The manager's ``pressure``: asks the engine for its nodes and services."""

    async def pressure() -> str:
        if min_free_percent <= 0:
            return ""
        try:
            nodes = await swarm.nodes()
            services = await swarm.list_services({})
        except SwarmbinderError as exc:
            # not knowing is no reason to stop pools: the queue check still holds them back
            log.info("warm pools: the swarm's resources are unknown: %s", exc)
            return ""
        return shortage(nodes, services, min_free_percent=min_free_percent)

    return pressure
