"""Users' Jupyter servers as Swarm sees them: listing for quotas, and reaping orphans.

SwarmSpawner runs each server as a Swarm service. The hub configuration in
``stack/hub/jupyterhub_config.py`` labels those services (the label names and values of
:mod:`swarmbinder.labels` must stay equal to the ones there), so swarmbinder can count running
servers per repository straight from Swarm, and find services the hub has forgotten: a spawn
that failed or was cancelled can leave its service behind, and nothing else would ever remove
it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from .errors import SwarmbinderError
from .labels import (
    LABEL_HUB,
    LABEL_IMAGE,
    LABEL_POOL_CLAIMED,
    LABEL_REPO_URL,
    LABEL_ROLE,
    LABEL_SERVER_NAME,
    LABEL_SPEC,
    LABEL_USER,
    ROLE_USER_SERVER,
    SERVER_NAME_POOL,
)
from .swarm import ServiceInfo, SwarmClient

log = logging.getLogger(__name__)

#: A service younger than this is never reaped: its spawn may still be on its way to the hub.
DEFAULT_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class UserServer:
    """One user-server service, from its labels."""

    service_id: str
    service_name: str
    hub: str
    user: str
    server_name: str
    image: str
    repo_url: str
    spec: str
    created: datetime | None
    #: A warm-pool server's :data:`~swarmbinder.labels.LABEL_POOL_CLAIMED` (``""``: unclaimed).
    pool_claim: str = ""

    @property
    def waiting_in_pool(self) -> bool:
        """A warm-pool server nobody has been handed yet: it counts against no quota."""
        return self.server_name == SERVER_NAME_POOL and not self.pool_claim

    @classmethod
    def from_service(cls, service: ServiceInfo) -> UserServer | None:
        """None for a service that is not a labelled user server."""
        labels = service.labels
        if labels.get(LABEL_ROLE) != ROLE_USER_SERVER or not labels.get(LABEL_USER):
            return None
        return cls(
            service_id=service.id,
            service_name=service.name,
            hub=labels.get(LABEL_HUB, ""),
            user=labels[LABEL_USER],
            server_name=labels.get(LABEL_SERVER_NAME, ""),
            image=labels.get(LABEL_IMAGE, "") or service.image,
            repo_url=labels.get(LABEL_REPO_URL, ""),
            spec=labels.get(LABEL_SPEC, ""),
            created=parse_swarm_time(service.created_at),
            pool_claim=labels.get(LABEL_POOL_CLAIMED, ""),
        )


def parse_swarm_time(text: str) -> datetime | None:
    """Swarm's ``2026-11-22T03:44:57.123456789Z`` (nanoseconds) as an aware datetime."""
    if not text:
        return None
    head, _, rest = text.partition(".")
    fraction = ""
    zone = "+00:00"
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits][:6], rest[digits:] or "+00:00"
    elif text.endswith("Z"):
        head = text[:-1]
    if zone == "Z":
        zone = "+00:00"
    try:
        parsed = datetime.fromisoformat(head + (f".{fraction}" if fraction else "") + zone)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def list_user_servers(swarm: SwarmClient, *, hub_id: str | None = None) -> list[UserServer]:
    """Every user-server service in the swarm (of one hub when ``hub_id`` is given)."""
    labels: dict[str, str | None] = {LABEL_ROLE: ROLE_USER_SERVER}
    if hub_id is not None:
        labels[LABEL_HUB] = hub_id
    servers = [UserServer.from_service(s) for s in await swarm.list_services(labels)]
    return [s for s in servers if s is not None]


def count_by_repo(servers: Iterable[UserServer]) -> Counter[str]:
    """Running servers per repository URL, for ``per_repo_quota``."""
    return Counter(s.repo_url for s in servers if s.repo_url)


class KnownServers(Protocol):
    """What the reaper asks the hub: every (user, server name) it has running or starting."""

    async def active_servers(self) -> set[tuple[str, str]]: ...


async def reap_orphans(
    swarm: SwarmClient,
    hub: KnownServers,
    *,
    hub_id: str,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: datetime | None = None,
) -> list[str]:
    """Remove this hub's user-server services the hub no longer knows; return their names.

    The hub is asked *after* Swarm is listed, so a server started in between is known to the
    hub by the time its service could be judged; younger services are left alone anyway. When
    the hub cannot be asked, nothing is removed.
    """
    # Ages count up to the listing: the hub's answer below is about that moment or later.
    moment = now or datetime.now(UTC)
    servers = await list_user_servers(swarm, hub_id=hub_id)
    if not servers:
        return []
    known = await hub.active_servers()
    removed: list[str] = []
    for server in servers:
        if (server.user, server.server_name) in known:
            continue
        if server.created is None or (moment - server.created).total_seconds() < grace_seconds:
            continue
        log.warning(
            "removing user-server service %s: the hub has no server %r for user %s",
            server.service_name,
            server.server_name,
            server.user,
        )
        if await swarm.remove_service(server.service_id, settle_seconds=3):
            removed.append(server.service_name)
    return removed


async def reap_forever(
    swarm: SwarmClient,
    hub: KnownServers,
    *,
    hub_id: str,
    interval: float = 60.0,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> None:
    """Run :func:`reap_orphans` every ``interval`` seconds until cancelled (a cleanup_ctx task).

    A round that fails (the engine or the hub does not answer) is logged and retried next round.
    """
    while True:
        try:
            await reap_orphans(swarm, hub, hub_id=hub_id, grace_seconds=grace_seconds)
        except SwarmbinderError as exc:
            log.info("reaping user servers skipped this round: %s", exc)
        await asyncio.sleep(interval)
