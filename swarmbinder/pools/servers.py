"""Pool servers as Swarm and the hub know them: list, check, claim, mint a token, retire.

Swarm is the record (a restarted Binder finds its pools there); the hub is asked only what
Swarm cannot say, whether a server's spawn finished. Every call that changes something is made
so that a Binder dying halfway leaves a state the next round finishes: a server is labelled
``retiring`` before it is stopped, so nobody hands it out meanwhile and a restart stops it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from .. import naming
from ..errors import SwarmbinderError
from ..hubclient import HubUser
from ..labels import (
    LABEL_HUB,
    LABEL_POOL_CLAIMED,
    LABEL_ROLE,
    LABEL_SERVER_NAME,
    POOL_RETIRING,
    ROLE_USER_SERVER,
    SERVER_NAME_POOL,
)
from ..swarm import ServiceInfo, TaskState, TaskStateName, current_iteration
from ..userservers import UserServer
from .rules import PoolServer

log = logging.getLogger(__name__)

#: How long a retirement keeps asking the hub to delete a user whose server is still stopping.
DELETE_USER_PATIENCE = 10.0


class PoolHub(Protocol):
    """The part of :class:`~swarmbinder.hubclient.HubClient` pools use."""

    async def create_user(self, name: str) -> None: ...

    async def get_user(self, name: str) -> HubUser | None: ...

    async def delete_user(self, name: str) -> bool: ...

    async def delete_user_once_stopped(self, name: str, *, patience: float = 10.0) -> bool: ...

    async def stop_server(
        self, name: str, server_name: str = "", *, remove: bool = False
    ) -> None: ...

    async def create_token(
        self, name: str, *, scopes: list[str], note: str, expires_in: int | None = None
    ) -> str: ...


class PoolSwarm(Protocol):
    """The part of :class:`~swarmbinder.swarm.SwarmClient` pools use."""

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]: ...

    async def claim_service_label(self, name_or_id: str, key: str, value: str) -> bool: ...

    async def tasks(self, service_name: str) -> list[TaskState]: ...

    async def remove_service(self, name_or_id: str, *, settle_seconds: float = 10) -> bool: ...


def pool_user_budget(server_prefix: str = naming.SPAWNER_PREFIX) -> int:
    """How long a pool user's escaped name may be: the service is ``{prefix}-{user}--pool``."""
    server_part = len(naming.spawner_escape(SERVER_NAME_POOL)) + 2
    return naming.temporary_name_budget(prefix=server_prefix) - server_part


def server_running(tasks: Sequence[TaskState]) -> bool:
    """Whether the service's current task is running (a waiting server can die unseen)."""
    current = current_iteration(tasks)
    return bool(current) and current[-1].state is TaskStateName.RUNNING


class PoolServers:
    """The pool servers of one hub (``hub_id``; None: every hub's)."""

    def __init__(
        self,
        hub: PoolHub,
        swarm: PoolSwarm,
        *,
        hub_url: str,
        hub_id: str | None = None,
        server_prefix: str = naming.SPAWNER_PREFIX,
    ) -> None:
        self.hub = hub
        self._swarm = swarm
        self._hub_url = hub_url if hub_url.endswith("/") else hub_url + "/"
        self._hub_id = hub_id
        self._prefix = server_prefix

    def new_user(self, repo_url: str) -> str:
        """A fresh temporary user name for a pool server of ``repo_url``."""
        return naming.temporary_name(repo_url, budget=pool_user_budget(self._prefix))

    def url(self, user: str) -> str:
        """The server's URL as browsers reach it (the ``url`` of ``ready``)."""
        return f"{self._hub_url}user/{quote(user, safe='')}/{SERVER_NAME_POOL}/"

    async def list(self) -> list[PoolServer]:
        labels: dict[str, str | None] = {
            LABEL_ROLE: ROLE_USER_SERVER,
            LABEL_SERVER_NAME: SERVER_NAME_POOL,
        }
        if self._hub_id is not None:
            labels[LABEL_HUB] = self._hub_id
        found: list[PoolServer] = []
        for service in await self._swarm.list_services(labels):
            server = UserServer.from_service(service)
            if server is None:
                continue
            found.append(
                PoolServer(
                    service_id=service.id,
                    service_name=service.name,
                    user=server.user,
                    image=server.image,
                    created=server.created.timestamp() if server.created else float("-inf"),
                    claim=server.pool_claim,
                    spec=server.spec,
                )
            )
        return found

    async def hub_ready(self, user: str) -> bool | None:
        """Whether the hub calls the user's pool server ready; None if it has no such server."""
        known = await self.hub.get_user(user)
        server = None if known is None else known.servers.get(SERVER_NAME_POOL)
        if server is None:
            return None
        return server.ready

    async def running(self, server: PoolServer) -> bool:
        try:
            return server_running(await self._swarm.tasks(server.service_name))
        except SwarmbinderError as exc:
            log.info("cannot read the tasks of pool server %s: %s", server.service_name, exc)
            return False

    async def claim(self, server: PoolServer, value: str) -> bool:
        """Take ``server`` out of its pool; False if someone else took it first."""
        return await self._swarm.claim_service_label(server.service_id, LABEL_POOL_CLAIMED, value)

    async def mint_token(self, user: str) -> str:
        """A token made now, that lets its holder into that one server and nothing else."""
        return await self.hub.create_token(
            user,
            scopes=[f"access:servers!server={user}/{SERVER_NAME_POOL}"],
            note="binder launch (warm pool)",
        )

    async def retire(self, server: PoolServer) -> None:
        """Stop an unclaimed server: label it ``retiring``, stop it, delete its user, and
        make sure its service is gone. A server handed out meanwhile is left alone."""
        if server.claim != POOL_RETIRING and not await self.claim(server, POOL_RETIRING):
            return
        await self.forget(server.user)
        try:
            await self._swarm.remove_service(server.service_id, settle_seconds=3)
        except SwarmbinderError as exc:
            log.warning("removing pool server %s: %s (next round)", server.service_name, exc)

    async def forget(self, user: str) -> None:
        """Stop the user's pool server and delete the user (a temporary user of the pool)."""
        try:
            await self.hub.stop_server(user, SERVER_NAME_POOL, remove=True)
        except SwarmbinderError as exc:
            log.warning("stopping pool server of %s: %s", user, exc)
        await self.hub.delete_user_once_stopped(user, patience=DELETE_USER_PATIENCE)


def describe(servers: Sequence[PoolServer]) -> list[dict[str, Any]]:
    """For logs and the admin view: who, which image, claimed or not."""
    return [{"user": s.user, "image": s.image, "claim": s.claim} for s in servers]
