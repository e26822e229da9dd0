"""What the admin console sees and does: snapshots, actions, and one live event feed.

Everything here is JSON-ready dicts (the admin API's wire format, which scripts read too) built
from the domain objects the service already has: the build manager, the ban list, the quotas,
the store, and the swarm's nodes and user servers. No aiohttp.web: the handlers in
:mod:`swarmbinder.handlers.admin` only parse, check the token and serialise.

The live feed (:class:`AdminService.subscribe`) is one :class:`~swarmbinder.fanout.Fanout` of
events, each a dict with a ``type``:

``build``          a build appeared or changed (phase, node, queue position, end)
``build.log``      new log lines of one build: ``{"id", "lines"}``
``build.removed``  the build manager forgot a build (finished and cleaned up, or cancelled)
``servers``        the running user servers against their quotas changed
``nodes``          a node's state, availability or running builds changed
``prebuilds``      a prebuild job (a Swarm job, see :mod:`swarmbinder.prebuild.jobs`) appeared,
                   changed state, ended or was removed
``pools``          a warm pool's size, image, servers or error changed
``bans``           the ban list changed (the whole list: it is short)
``quotas``         the quota settings changed
``audit``          one new audit entry (who did what, when)
``status``         a source failed or recovered: ``{"source", "ok", "message"}``

A subscriber gets the snapshot first (:meth:`AdminService.snapshot`) and then live events, so
a client that reconnects just starts over. One background task, :meth:`AdminService.run`,
owns the polling: builds are diffed every ``poll_interval`` (the build manager has no change
callback to spare, and a diff of a few dozen builds costs nothing), servers, nodes, warm pools
and prebuild jobs every ``refresh_interval``, and quota expiry and other processes' ban changes
every ``reload_interval``. Each build's log is followed by one task of its own, started when the
build appears and cancelled when it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .builds import to_sticky_node
from .buildstatus import BuildStatus
from .buildwatch import Build
from .diskuse import disk_json
from .errors import SwarmbinderError
from .fanout import Fanout, Subscription
from .policy.bans import BanList
from .policy.quotas import Quotas
from .pools.manager import PoolStatus
from .prebuild.jobs import JobStatus
from .sticky import rank_nodes
from .store import AuditEntry, Store
from .swarm import NodeInfo
from .userservers import UserServer

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: Log lines kept in memory per build, for a console opening a running build.
LOG_LINES_KEPT = 500
#: Log lines shown with each build in the builds list.
LAST_LINES = 3
#: Finished builds from the store shown after the live ones.
RECENT_BUILDS = 20
#: Build records whose repositories make up the "share of sticky repos" of each node.
STICKY_SAMPLE = 200
#: Events a slow console may fall behind by before it loses the oldest.
FEED_QUEUE_SIZE = 5000

ACTIVE_STATUSES = (BuildStatus.QUEUED, BuildStatus.RUNNING)


class AdminError(SwarmbinderError):
    """An admin request that cannot be carried out; ``status_code`` says why."""


class NotFound(AdminError, status=404): ...


class Conflict(AdminError, status=409): ...


class AdminUnavailable(AdminError, status=503): ...


class BuildSource(Protocol):
    """The part of :class:`~swarmbinder.builds.BuildManager` the console uses."""

    @property
    def builds(self) -> list[Build]: ...

    def get(self, name: str) -> Build | None: ...

    def queue_position(self, name: str) -> int | None: ...

    async def cancel(self, name: str, reason: str = ...) -> bool: ...


class HubServers(Protocol):
    """The part of :class:`~swarmbinder.hubclient.HubClient` that stops servers."""

    async def stop_server(
        self, name: str, server_name: str = "", *, remove: bool = False
    ) -> None: ...

    async def delete_user(self, name: str) -> bool: ...


@dataclass(frozen=True)
class ConfigQuotas:
    """The config file's quotas, shown under the admin's overrides."""

    pod_quota: int | None = None
    per_repo_quota: int = 0
    per_repo_quota_higher: int = 0


def audit_json(entry: AuditEntry) -> Json:
    return {
        "id": entry.entry_id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "detail": dict(entry.detail),
    }


def node_json(node: NodeInfo, running_builds: int, sticky: int, sample: int) -> Json:
    return {
        "id": node.id,
        "hostname": node.hostname,
        "role": node.role,
        "state": node.state,
        "availability": node.availability,
        "addr": node.addr,
        "running_builds": running_builds,
        "sticky_repos": sticky,
        "sticky_share": round(sticky / sample, 4) if sample else 0.0,
        **disk_json(node.labels),
    }


def server_json(server: UserServer) -> Json:
    return {
        "user": server.user,
        "server_name": server.server_name,
        "service": server.service_name,
        "repo_url": server.repo_url,
        "spec": server.spec,
        "image": server.image,
        "created": server.created.timestamp() if server.created else None,
    }


class AdminService:
    """The admin console's view of the service, its actions, and the live feed."""

    def __init__(
        self,
        *,
        builds: BuildSource | None,
        bans: BanList,
        quotas: Quotas,
        store: Store | None,
        list_servers: Callable[[], Awaitable[Sequence[UserServer]]] | None = None,
        list_nodes: Callable[[], Awaitable[Sequence[NodeInfo]]] | None = None,
        list_prebuilds: Callable[[], Awaitable[Sequence[JobStatus]]] | None = None,
        remove_prebuild: Callable[[str], Awaitable[bool]] | None = None,
        hub: HubServers | None = None,
        list_pools: Callable[[], Sequence[PoolStatus]] | None = None,
        temporary_users: bool = True,
        config_quotas: ConfigQuotas = ConfigQuotas(),
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
        refresh_interval: float = 5.0,
        reload_interval: float = 30.0,
    ) -> None:
        """``temporary_users``: launches make a hub user each (no ``auth_enabled``), so
        stopping a server also deletes its user, as the launcher does after a failed launch."""
        self._builds = builds
        self._bans = bans
        self._quotas = quotas
        self._store = store
        self._list_servers = list_servers
        self._list_nodes = list_nodes
        self._list_prebuilds = list_prebuilds
        self._remove_prebuild = remove_prebuild
        self._hub = hub
        self._list_pools = list_pools
        self._temporary_users = temporary_users
        self._config_quotas = config_quotas
        self._clock = clock
        self._poll_interval = poll_interval
        self._refresh_interval = refresh_interval
        self._reload_interval = reload_interval
        self._feed: Fanout[Json] = Fanout(tail_size=0, queue_size=FEED_QUEUE_SIZE)
        self._logs: dict[str, deque[str]] = {}
        self._pending_logs: dict[str, list[str]] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._seen_builds: dict[str, Json] = {}
        self._last: dict[str, Any] = {}
        self._last_audit_id = 0
        self._failing: dict[str, str] = {}

    # -- snapshots -----------------------------------------------------------------------------

    def build_json(self, build: Build) -> Json:
        now = self._clock()
        start = build.started or build.created
        end = build.finished or now
        lines = self._logs.get(build.name)
        return {
            "id": build.name,
            "repo_url": build.request.repo_url,
            "ref": build.request.ref,
            "provider": build.request.provider,
            "spec": build.request.spec,
            "image": build.image,
            "node": build.node,
            "phase": build.status.value,
            "queue_position": self._require_builds().queue_position(build.name),
            "created": build.created,
            "started": build.started,
            "finished": build.finished,
            "elapsed": round(max(end - start, 0.0), 3),
            "reason": build.reason,
            "last_log": list(lines)[-LAST_LINES:] if lines else [],
            "live": True,
        }

    async def list_builds(self) -> Json:
        """Builds the manager watches, then recently finished ones from the store."""
        builds = self._require_builds()
        live = [self.build_json(b) for b in sorted(builds.builds, key=lambda b: b.created)]
        recent: list[Json] = []
        if self._store is not None:
            names = {b["id"] for b in live}
            for record in await self._store.recent_builds(RECENT_BUILDS + len(names)):
                name = record.build_id.rpartition("@")[0] or record.build_id
                if name in names or record.finished_at is None:
                    continue
                names.add(name)
                recent.append(
                    {
                        "id": name,
                        "repo_url": record.repo_url,
                        "ref": record.ref,
                        "provider": record.provider,
                        "spec": record.spec,
                        "image": record.image,
                        "node": record.node,
                        "phase": record.status,
                        "queue_position": None,
                        "created": record.started_at,
                        "started": record.started_at,
                        "finished": record.finished_at,
                        "elapsed": round(record.finished_at - record.started_at, 3),
                        "reason": record.reason,
                        "last_log": [],
                        "live": False,
                    }
                )
        return {"builds": live, "recent": recent[:RECENT_BUILDS], "now": self._clock()}

    async def get_build(self, build_id: str, tail: int | None = None) -> Json:
        """One build and its log: the live one's from memory, a finished one's from the store."""
        build = self._require_builds().get(build_id)
        if build is not None:
            lines = list(self._logs.get(build_id, ()))
            if self._store is not None:
                stored = await self._stored_log(build_id, tail)
                if stored is not None and len(stored[1]) >= len(lines):
                    lines = stored[1]
            return {"build": self.build_json(build), "log": _tail(lines, tail)}
        if self._store is not None:
            stored = await self._stored_log(build_id, tail)
            if stored is not None:
                return {"build": stored[0], "log": stored[1]}
        raise NotFound(f"no build {build_id!r}")

    async def _stored_log(self, build_id: str, tail: int | None) -> tuple[Json, list[str]] | None:
        assert self._store is not None
        records = await self._store.builds_with_id_prefix(f"{build_id}@", limit=1)
        if not records:
            return None
        record = records[0]
        lines = await self._store.build_log(record.build_id, tail=tail)
        info = {
            "id": build_id,
            "repo_url": record.repo_url,
            "ref": record.ref,
            "image": record.image,
            "node": record.node,
            "phase": record.status,
            "reason": record.reason,
            "created": record.started_at,
            "finished": record.finished_at,
            "live": False,
        }
        return info, lines

    async def servers(self) -> Json:
        """Running user servers, and per repository their count against its quota."""
        servers = await self._servers()
        specs = {s.repo_url: s.spec for s in servers if s.spec}
        usage = self._quotas.snapshot(servers, specs)
        repos = []
        for repo in usage.repos:
            quota = repo.quota
            repos.append(
                {
                    "repo_url": repo.repo_url,
                    "running": repo.running,
                    "quota": quota.quota if quota else None,
                    "quota_source": quota.source if quota else None,
                    "pattern": quota.pattern if quota else None,
                    "expires_at": quota.expires_at if quota else None,
                }
            )
        return {
            "total": usage.total,
            "pod_quota": usage.pod_quota,
            "pod_quota_source": usage.pod_quota_source,
            "repos": repos,
            "servers": [server_json(s) for s in servers],
        }

    async def nodes(self) -> Json:
        """Swarm nodes with their running builds and their share of sticky repositories."""
        if self._list_nodes is None:
            raise AdminUnavailable("no swarm", user_message="The Docker engine is not connected.")
        nodes = list(await self._list_nodes())
        running: Counter[str] = Counter()
        repos: set[str] = set()
        if self._builds is not None:
            for build in self._builds.builds:
                repos.add(build.request.repo_url)
                if build.status is BuildStatus.RUNNING and build.node:
                    running[build.node] += 1
        if self._store is not None:
            repos.update(r.repo_url for r in await self._store.recent_builds(STICKY_SAMPLE))
        # Where each repository would build now: its first choice among schedulable nodes.
        sticky_nodes = [to_sticky_node(n) for n in nodes]
        sticky: Counter[str] = Counter()
        for repo in repos:
            ranked = rank_nodes(repo, sticky_nodes)
            if ranked:
                sticky[ranked[0].id] += 1
        return {
            "nodes": [
                node_json(n, running[n.hostname], sticky[n.id], len(repos))
                for n in sorted(nodes, key=lambda n: n.hostname)
            ],
            "repos_sampled": len(repos),
        }

    async def prebuilds(self) -> Json:
        """Prebuild jobs on the swarm, oldest first, as ``docker service ps`` sees them."""
        if self._list_prebuilds is None:
            raise AdminUnavailable("no swarm", user_message="The Docker engine is not connected.")
        jobs = await self._list_prebuilds()
        return {"jobs": [{**job.to_json(), "finished": job.finished} for job in jobs]}

    async def pools(self) -> Json:
        """The warm pools (``warm_pools``) as their manager sees them; none when pools are off."""
        statuses = [] if self._list_pools is None else self._list_pools()
        return {"pools": [asdict(status) for status in statuses]}

    def bans(self) -> list[Json]:
        return [
            {
                "id": entry.ban_id,
                "kind": entry.kind,
                "pattern": entry.pattern,
                "reason": entry.reason,
                "source": entry.source,
                "created_by": entry.created_by,
                "created_at": entry.created_at,
            }
            for entry in self._bans.entries()
        ]

    def quotas(self) -> Json:
        config = self._config_quotas
        overrides = self._quotas.snapshot([]).overrides
        pod = next((o for o in overrides if o.scope == "pod"), None)
        return {
            "pod_quota": self._quotas.pod_quota,
            "pod_quota_source": "config" if pod is None else "admin",
            "pod_quota_expires_at": None if pod is None else pod.expires_at,
            "config": {
                "pod_quota": config.pod_quota,
                "per_repo_quota": config.per_repo_quota,
                "per_repo_quota_higher": config.per_repo_quota_higher,
            },
            "overrides": [
                {
                    "scope": o.scope,
                    "pattern": o.key if o.scope == "repo" else None,
                    "quota": o.quota,
                    "expires_at": o.expires_at,
                    "created_by": o.created_by,
                    "created_at": o.created_at,
                    "source": "admin",
                }
                for o in overrides
            ],
        }

    async def audit(self, limit: int = 100) -> list[Json]:
        if self._store is None:
            return []
        return [audit_json(e) for e in await self._store.audit(limit)]

    async def snapshot(self) -> Json:
        """Everything the console shows, in one object; a source that fails is reported in
        ``errors`` (by name) rather than failing the whole snapshot."""
        errors: dict[str, str] = {}
        result: Json = {"type": "snapshot", "now": self._clock()}
        sources: dict[str, Callable[[], Awaitable[Any]]] = {
            "builds": self.list_builds,
            "servers": self.servers,
            "nodes": self.nodes,
            "prebuilds": self.prebuilds,
            "pools": self.pools,
            "audit": self.audit,
        }
        for name, get in sources.items():
            try:
                result[name] = await get()
            except SwarmbinderError as error:
                errors[name] = error.user_message
                result[name] = None
        result["bans"] = self.bans()
        result["quotas"] = self.quotas()
        result["errors"] = errors
        return result

    # -- actions -------------------------------------------------------------------------------

    async def cancel_build(self, build_id: str, actor: str) -> Json:
        builds = self._require_builds()
        build = builds.get(build_id)
        if build is None:
            raise NotFound(f"no build {build_id!r}")
        if build.status not in ACTIVE_STATUSES:
            raise Conflict(f"build {build_id} has already ended ({build.status.value})")
        info = self.build_json(build)
        await builds.cancel(build_id, f"cancelled by {actor}")
        await self._audit(actor, "build.cancel", {"build": build_id, "repo_url": info["repo_url"]})
        self._poll_builds()
        return {**info, "phase": BuildStatus.CANCELLED.value}

    async def stop_server(self, user: str, server_name: str, actor: str) -> Json:
        """Stop a user's server through the hub (a temporary user is deleted with it)."""
        if self._hub is None:
            raise AdminUnavailable("no hub", user_message="No JupyterHub is configured.")
        found = [s for s in await self._servers() if (s.user, s.server_name) == (user, server_name)]
        if not found:
            raise NotFound(f"no running server {server_name!r} of user {user!r}")
        await self._hub.stop_server(user, server_name, remove=bool(server_name))
        deleted = False
        if self._temporary_users and not server_name:
            deleted = await self._hub.delete_user(user)
        detail = {"user": user, "server_name": server_name, "repo_url": found[0].repo_url}
        await self._audit(actor, "server.stop", {**detail, "user_deleted": deleted})
        await self._refresh("servers", self.servers)
        return {**server_json(found[0]), "stopped": True, "user_deleted": deleted}

    async def remove_prebuild(self, name: str, actor: str) -> Json:
        """Remove a prebuild job, running or finished, with its secret. Builds a running job
        started are services of their own and run on: another /build may be waiting on them."""
        if self._remove_prebuild is None:
            raise AdminUnavailable("no swarm", user_message="The Docker engine is not connected.")
        jobs = (await self.prebuilds())["jobs"]
        job = next((j for j in jobs if j["name"] == name), None)
        if job is None or not await self._remove_prebuild(name):
            raise NotFound(f"no prebuild job {name!r}")
        detail = {"job": name, "state": job["state"], "exit_code": job["exit_code"]}
        await self._audit(actor, "prebuild.remove", detail)
        await self._refresh("prebuilds", self.prebuilds)
        return {**job, "removed": True}

    async def add_ban(self, kind: Any, pattern: Any, reason: Any, actor: str) -> Json:
        """Raises :class:`~swarmbinder.policy.bans.InvalidBan` (400) for an unworkable pattern."""
        entry = await self._bans.add(kind, pattern, "" if reason is None else reason, actor)
        self._publish({"type": "bans", "bans": self.bans()})
        await self._publish_audit()
        return next(b for b in self.bans() if b["id"] == entry.ban_id)

    async def remove_ban(self, ban_id: int, actor: str) -> None:
        if not await self._bans.remove(ban_id, actor):
            raise NotFound(f"no admin ban with id {ban_id} (bans from the config file stay)")
        self._publish({"type": "bans", "bans": self.bans()})
        await self._publish_audit()

    async def set_repo_quota(
        self, pattern: Any, quota: Any, actor: str, expires_at: float | None = None
    ) -> Json:
        """Raises :class:`~swarmbinder.policy.quotas.InvalidQuota` (400) for a bad pattern or
        number."""
        await self._quotas.set_repo_quota(pattern, quota, actor, expires_at=expires_at)
        return await self._quotas_changed()

    async def clear_repo_quota(self, pattern: str, actor: str) -> Json:
        if not await self._quotas.clear_repo_quota(pattern, actor):
            raise NotFound(f"no quota override for {pattern!r}")
        return await self._quotas_changed()

    async def set_pod_quota(self, quota: Any, actor: str, expires_at: float | None = None) -> Json:
        await self._quotas.set_pod_quota(quota, actor, expires_at=expires_at)
        return await self._quotas_changed()

    async def clear_pod_quota(self, actor: str) -> Json:
        if not await self._quotas.clear_pod_quota(actor):
            raise NotFound("the pod quota has no admin override")
        return await self._quotas_changed()

    async def _quotas_changed(self) -> Json:
        quotas = self.quotas()
        self._publish({"type": "quotas", "quotas": quotas})
        await self._publish_audit()
        # The quota column of the servers view follows the change.
        with contextlib.suppress(SwarmbinderError):
            await self._refresh("servers", self.servers)
        return quotas

    async def _audit(self, actor: str, action: str, detail: Mapping[str, Any]) -> None:
        if self._store is None:
            log.info("admin %s: %s %s (no store, not audited)", actor, action, dict(detail))
            return
        await self._store.add_audit(actor, action, detail)
        await self._publish_audit()

    # -- the live feed -------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription[Json]]:
        """Live events from now on (take :meth:`snapshot` after subscribing: nothing is lost
        in between, at worst seen twice)."""
        async with self._feed.subscribe() as subscription:
            yield subscription

    def close_feed(self) -> None:
        """End every subscription (at shutdown, so open streams do not hold it up)."""
        if not self._feed.finished:
            self._feed.finish()

    async def run(self) -> None:
        """Poll the sources and publish what changed, until cancelled."""
        loop = asyncio.get_running_loop()
        next_refresh = next_reload = loop.time()
        if self._store is not None:
            with contextlib.suppress(SwarmbinderError):
                entries = await self._store.audit(1)
                self._last_audit_id = entries[0].entry_id if entries else 0
        try:
            while True:
                if self._builds is not None:
                    self._poll_builds()
                    self._flush_logs()
                now = loop.time()
                if now >= next_refresh:
                    next_refresh = now + self._refresh_interval
                    await self._refresh("servers", self.servers)
                    await self._refresh("nodes", self.nodes)
                    await self._refresh("prebuilds", self.prebuilds)
                    await self._refresh("pools", self.pools)
                if now >= next_reload:
                    next_reload = now + self._reload_interval
                    await self._reload()
                await asyncio.sleep(self._poll_interval)
        finally:
            followers = list(self._followers.values())
            for task in followers:
                task.cancel()
            for task in followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._followers.clear()

    def _publish(self, event: Json) -> None:
        if not self._feed.finished:
            self._feed.publish(event)

    def _poll_builds(self) -> None:
        if self._builds is None:
            return
        current = {b.name: b for b in self._builds.builds}
        for name, build in current.items():
            if name not in self._followers and not build.done.is_set():
                self._followers[name] = asyncio.create_task(
                    self._follow(build), name=f"admin-follow-{name}"
                )
            data = self.build_json(build)
            # elapsed and last_log change all the time; they are not what makes an update.
            signature = {k: v for k, v in data.items() if k not in ("elapsed", "last_log")}
            if self._seen_builds.get(name) != signature:
                self._seen_builds[name] = signature
                self._publish({"type": "build", "build": data})
        for name in [n for n in self._seen_builds if n not in current]:
            del self._seen_builds[name]
            follower = self._followers.pop(name, None)
            if follower is not None:
                follower.cancel()
            self._logs.pop(name, None)
            self._pending_logs.pop(name, None)
            self._publish({"type": "build.removed", "id": name})

    async def _follow(self, build: Build) -> None:
        lines = self._logs.setdefault(build.name, deque(maxlen=LOG_LINES_KEPT))
        try:
            async for event in build.events():
                for line in event.message.splitlines():
                    if line.strip():
                        lines.append(line)
                        self._pending_logs.setdefault(build.name, []).append(line)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following the log of build %s failed", build.name)
        finally:
            self._followers.pop(build.name, None)

    def _flush_logs(self) -> None:
        pending, self._pending_logs = self._pending_logs, {}
        for name, lines in pending.items():
            if lines:
                self._publish({"type": "build.log", "id": name, "lines": lines})

    async def _refresh(self, kind: str, get: Callable[[], Awaitable[Json]]) -> None:
        try:
            data = await get()
        except SwarmbinderError as error:
            if self._failing.get(kind) != error.user_message:
                self._failing[kind] = error.user_message
                self._publish(
                    {"type": "status", "source": kind, "ok": False, "message": error.user_message}
                )
            return
        if self._failing.pop(kind, None) is not None:
            self._publish({"type": "status", "source": kind, "ok": True, "message": ""})
        if self._last.get(kind) != data:
            self._last[kind] = data
            self._publish({"type": kind, kind: data})

    async def _reload(self) -> None:
        """Expire quota overrides (audited by the store) and pick up other processes' bans."""
        bans, quotas = self.bans(), self.quotas()
        try:
            await self._quotas.load()
            await self._bans.load()
        except SwarmbinderError as error:
            log.warning("reloading bans and quotas failed: %s", error)
            return
        if self.bans() != bans:
            self._publish({"type": "bans", "bans": self.bans()})
        if self.quotas() != quotas:
            self._publish({"type": "quotas", "quotas": self.quotas()})
        await self._publish_audit()

    async def _publish_audit(self) -> None:
        if self._store is None:
            return
        try:
            entries = await self._store.audit(50)
        except SwarmbinderError as error:
            log.warning("reading the audit log failed: %s", error)
            return
        for entry in sorted(entries, key=lambda e: e.entry_id):
            if entry.entry_id > self._last_audit_id:
                self._last_audit_id = entry.entry_id
                self._publish({"type": "audit", "entry": audit_json(entry)})

    # -- plumbing ------------------------------------------------------------------------------

    def _require_builds(self) -> BuildSource:
        if self._builds is None:
            raise AdminUnavailable(
                "no build manager", user_message="Builds are not available (no Docker engine)."
            )
        return self._builds

    async def _servers(self) -> Sequence[UserServer]:
        if self._list_servers is None:
            raise AdminUnavailable("no swarm", user_message="The Docker engine is not connected.")
        return await self._list_servers()


def _tail(lines: list[str], tail: int | None) -> list[str]:
    return lines if tail is None or tail >= len(lines) else lines[len(lines) - tail :]
