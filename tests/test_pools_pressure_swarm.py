"""Pools give way when the swarm is short: what the real engine reports of its nodes'
resources and of a service's reservations, read as the pools read it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from swarmbinder.pools.pressure import swarm_pressure
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

MIB = 2**20


@pytest.fixture
def reserving_service() -> Iterator[str]:
    """A service of ours reserving a little CPU and memory (too little to crowd anyone)."""
    name = f"poolauto-reserve-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "service", "create", "--detach", "--quiet", "--name", name,
         "--reserve-cpu", "0.01", "--reserve-memory", "4MiB",
         "swarmbinder/swarmbinder:0.1.0", "sleep", "600"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["docker", "service", "rm", name], capture_output=True, timeout=60)


@pytest.fixture
def engine_info() -> list[str]:
    """The engine's CPUs and memory as ``docker info`` tells them."""
    return subprocess.run(
        ["docker", "info", "--format", "{{.NCPU}} {{.MemTotal}}"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip


async def test_the_engine_reports_node_resources_and_service_reservations(
    reserving_service: str, engine_info: list[str]
) -> None:
    info = engine_info
    async with SwarmClient.connect() as swarm:
        nodes = await swarm.nodes()
        assert any(n.cpus == float(info[0]) and n.memory == int(info[1]) for n in nodes)
        services = await swarm.list_services({})
        (ours,) = [s for s in services if s.name == reserving_service]
        assert ours.reserved_cpus == pytest.approx(0.01)
        assert ours.reserved_memory == 4 * MIB
        # every percent free is below 100: our reservation is enough to hold pools back
        reason = await swarm_pressure(swarm, min_free_percent=100)()
        assert "unreserved" in reason and "warm_pool_min_free_percent" in reason
        assert await swarm_pressure(swarm, min_free_percent=0)() == ""
