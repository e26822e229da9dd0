"""Warm pools from the config: the manager the app runs, and the servers quotas count."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ..builds import BuildManager
from ..config import Config
from ..hubclient import HubClient
from ..launcher import Launcher
from ..resolve import Resolved
from ..swarm import SwarmClient
from ..userservers import UserServer
from .auto import AutoSet
from .manager import PoolManager
from .pressure import swarm_pressure
from .rules import rules_from_config
from .servers import PoolServers

log = logging.getLogger(__name__)


def pools_from_config(
    config: Config,
    hub: HubClient,
    swarm: SwarmClient,
    launcher: Launcher,
    builds: BuildManager,
    resolve: Callable[[str], Awaitable[Resolved]],
    image_exists: Callable[[str], Awaitable[bool]],
) -> PoolManager | None:
    """The warm pools' manager; None when no pool has a size and warm_pool_auto is off, or
    with ``auth_enabled``."""
    pools = config.pools
    pool_rules = rules_from_config(pools.warm_pools)
    if not pool_rules and not pools.warm_pool_auto:
        return None
    if config.hub.auth_enabled:
        log.warning("warm pools are off with auth_enabled: a server belongs to its user")
        return None
    servers = PoolServers(
        hub,
        swarm,
        hub_url=config.hub.hub_url or config.hub.local_url,
        hub_id=config.hub.hub_id or None,
    )
    slots = launcher.slots
    return PoolManager(
        pool_rules,
        servers,
        spawner=launcher,
        resolve=resolve,
        image_exists=image_exists,
        builds=builds,
        # pools give way: no pool start while a launch waits for its turn
        queue_busy=lambda: slots.queued > 0,
        # and when the swarm runs short of CPU or memory
        pressure=swarm_pressure(swarm, min_free_percent=pools.warm_pool_min_free_percent),
        auto=AutoSet(
            size=pools.warm_pool_auto,
            min_launches=pools.warm_pool_auto_min_launches,
            change_interval=pools.warm_pool_auto_change_interval,
        )
        if pools.warm_pool_auto
        else None,
        auto_pool_size=pools.warm_pool_auto_size,
        idle_after=pools.warm_pool_idle_after,
        launch_host=config.pages.badge_base_url,
        max_age=pools.warm_pool_max_age,
        resolve_interval=pools.warm_pool_resolve_interval,
    )


def counted_servers(
    running_servers: Callable[[], Awaitable[list[UserServer]]],
) -> Callable[[], Awaitable[list[UserServer]]]:
    """The servers quotas count: a pool server counts once handed out, not while it waits."""

    async def counted() -> list[UserServer]:
        return [s for s in await running_servers() if not s.waiting_in_pool]

    return counted
