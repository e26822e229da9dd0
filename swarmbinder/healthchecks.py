"""The checks ``/health`` runs, named as BinderHub names them (plus the swarm's, and the shared
database's in PostgreSQL mode); :mod:`swarmbinder.health` runs them with timeouts and caching.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .builds import BuildManager
from .buildstatus import BuildStatus
from .config import Config
from .health import capacity_result
from .hubclient import HubClient
from .registry import RegistryClient
from .store import Store
from .swarm import SwarmClient
from .userservers import UserServer


def health_checks(
    config: Config,
    swarm: SwarmClient,
    registry: RegistryClient | None,
    hub: HubClient | None,
    builds: BuildManager,
    running_servers: Callable[[], Awaitable[list[UserServer]]],
    store: Store,
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """BinderHub's /health checks (names as BinderHub shows them), plus the swarm's, and the
    shared database's when the store is PostgreSQL (a local SQLite file has no outage)."""
    checks: dict[str, Callable[[], Awaitable[Any]]] = {}

    if store.backend == "postgresql":

        async def database() -> dict[str, Any]:
            return {"ok": True, "policy_version": await store.policy_version()}

        checks["Store database"] = database

    async def swarm_manager() -> dict[str, Any]:
        """The manager answers; each node's state, availability and running builds. A lost
        worker is shown (``down_nodes``) but not fatal: builds and launches go elsewhere."""
        info = await swarm.info()
        nodes = sorted(await swarm.nodes(), key=lambda n: n.hostname)
        running: dict[str, int] = {}
        for one in builds.builds:
            if one.status is BuildStatus.RUNNING and one.node:
                running[one.node] = running.get(one.node, 0) + 1
        return {
            "ok": True,
            "nodes": len(nodes),
            "node": info.get("Name", ""),
            "down_nodes": [n.hostname for n in nodes if n.state != "ready"],
            "swarm_nodes": [
                {
                    "hostname": n.hostname,
                    "role": n.role,
                    "state": n.state,
                    "availability": n.availability,
                    "running_builds": running.get(n.hostname, 0),
                }
                for n in nodes
            ],
        }

    checks["Swarm manager"] = swarm_manager

    if registry is not None:

        async def docker_registry() -> bool:
            await registry.ping()
            return True

        checks["Docker registry"] = docker_registry

    if hub is not None:

        async def jupyterhub_api() -> dict[str, Any]:
            return {"ok": True, "version": await hub.version()}

        checks["JupyterHub API"] = jupyterhub_api

    async def build_capacity() -> dict[str, Any]:
        running = sum(1 for b in builds.builds if b.status is BuildStatus.RUNNING)
        return capacity_result(running, config.builds.concurrent_build_limit or None)

    checks["Build capacity"] = build_capacity

    if config.quotas.pod_quota is not None:
        pod_quota = config.quotas.pod_quota

        async def user_servers() -> dict[str, Any]:
            return capacity_result(len(await running_servers()), pod_quota)

        checks["Pod quota"] = user_servers
    return checks
