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
from .manager import PoolManager
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
    """The warm pools' manager; None when no pool has a size, or with ``auth_enabled``."""
    pool_rules = rules_from_config(config.pools.warm_pools)
    if not pool_rules:
        return None
    if config.hub.auth_enabled:
        log.warning("warm_pools is ignored with auth_enabled: a server belongs to its user")
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
        launch_host=config.pages.badge_base_url,
        max_age=config.pools.warm_pool_max_age,
        resolve_interval=config.pools.warm_pool_resolve_interval,
    )


def counted_servers(
    running_servers: Callable[[], Awaitable[list[UserServer]]],
) -> Callable[[], Awaitable[list[UserServer]]]:
    """The servers quotas count: a pool server counts once handed out, not while it waits."""

    async def counted() -> list[UserServer]:
        return [s for s in await running_servers() if not s.waiting_in_pool]

    return counted
