"""The engine choke point of :class:`~swarmbinder.swarm.SwarmClient`, and the changes to the
specs of Swarm services and nodes, made with the version read, so that of two writers (two
Binder replicas) neither overwrites what the other changed meanwhile.

Parts of the client, kept apart to keep that module readable: every call to the engine passes
:meth:`EngineCalls._translate`, where aiodocker's and aiohttp's failures become
:class:`~swarmbinder.errors.SwarmUnavailable` or :class:`~swarmbinder.errors.SwarmRequestFailed`.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp

from .errors import SwarmRequestFailed, SwarmUnavailable

#: Reads and retries of one update that keeps losing to other writers before giving up.
UPDATE_ATTEMPTS = 5


class EngineCalls:
    """The one choke point every engine call of the client passes."""

    _docker: aiodocker.Docker

    @asynccontextmanager
    async def _translate(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except aiodocker.DockerError as exc:
            if exc.status >= 900 or exc.status in (502, 503, 504):
                # aiodocker reports a connection failure as a made-up status 900.
                raise SwarmUnavailable(
                    f"the Docker engine did not answer ({what}): {exc.message}",
                    user_message="The Docker Swarm manager is not answering right now.",
                ) from exc
            raise SwarmRequestFailed(what, exc.status, exc.message) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SwarmUnavailable(
                f"the Docker engine did not answer ({what}): {exc or type(exc).__name__}",
                user_message="The Docker Swarm manager is not answering right now.",
            ) from exc

    async def _json(
        self,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
    ) -> Any:
        async with self._translate(f"{method} {path}"):
            return await self._docker._query_json(path, method, params=params, data=data)


class SpecUpdates(EngineCalls):
    """Read-modify-write of service and node specs; the engine answers "update out of
    sequence" to a write that names a version someone else has replaced, and it is retried."""

    async def claim_service_label(self, name_or_id: str, key: str, value: str) -> bool:
        """Set the service label ``key`` to ``value`` if the service has no such label yet;
        False if it has one (or the service is gone). The update names the version it read, so
        of two callers racing for one service exactly one wins, whichever replica each is in.
        Only the service's own labels change: its task keeps running.
        """

        def claim(spec: dict[str, Any]) -> bool:
            labels = spec.setdefault("Labels", {})
            if key in labels:
                return False
            labels[key] = value
            return True

        return await self._update_spec("services", name_or_id, claim)

    async def set_service_env(self, name_or_id: str, changes: Mapping[str, str | None]) -> bool:
        """Set (or, for None, remove) variables of the service's environment: its tasks are
        replaced as its update policy says. False if nothing changed or the service is gone."""

        def change(spec: dict[str, Any]) -> bool:
            container = spec.setdefault("TaskTemplate", {}).setdefault("ContainerSpec", {})
            env = dict(e.partition("=")[::2] for e in container.get("Env") or ())
            wanted = {k: v for k, v in env.items() if k not in changes}
            wanted |= {k: v for k, v in changes.items() if v is not None}
            container["Env"] = [f"{k}={v}" for k, v in wanted.items()]
            return wanted != env

        return await self._update_spec("services", name_or_id, change)

    async def set_node_labels(self, node_id: str, changes: Mapping[str, str | None]) -> bool:
        """Set (or, for None, remove) labels of the node; False if nothing changed or it is gone."""

        def change(spec: dict[str, Any]) -> bool:
            labels = spec.setdefault("Labels", {})
            before = dict(labels)
            for key, value in changes.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            return bool(labels != before)

        return await self._update_spec("nodes", node_id, change)

    async def _update_spec(
        self, kind: str, name_or_id: str, change: Callable[[dict[str, Any]], bool]
    ) -> bool:
        """Update a service's or node's spec by ``change`` (False: leave it), naming the version
        read, so an update made meanwhile by someone else is read again, not overwritten."""
        for _ in range(UPDATE_ATTEMPTS):
            try:
                raw = await self._json(f"{kind}/{name_or_id}")
            except SwarmRequestFailed as exc:
                if exc.status == 404:
                    return False
                raise
            spec = copy.deepcopy(raw["Spec"])
            if not change(spec):
                return False
            version = raw["Version"]["Index"]
            try:
                await self._json(
                    f"{kind}/{raw['ID']}/update",
                    "POST",
                    params={"version": str(version)},
                    data=spec,
                )
                return True
            except SwarmRequestFailed as exc:
                # Someone else updated it first ("update out of sequence"): read it again.
                if exc.status == 404:
                    return False
                if "out of sequence" not in exc.detail:
                    raise
        return False
