"""Builds: repo2docker as one-shot Swarm services, shared by every request for the same image.

Swarm is the lock and the source of truth. A build's service name is a deterministic function
of (build slug, resolved ref), so concurrent requests for one repo and ref name the same
service: the first ``create`` wins and the others join it. Everything needed to pick a build
up again after a restart of swarmbinder is on the service as ``swarmbinder.*`` labels, and
queued builds are services too, held back by a placement constraint no node satisfies, so the
queue survives restarts and shows in ``docker service ls``.

The :class:`BuildManager` here owns the builds of this process: it joins requests to running
builds, queues builds beyond ``concurrent_build_limit`` and starts them as slots free, and
removes finished services. The queue has a cap across replicas (``build_queue_limit``):
queued services are counted in Swarm by their labels, and a build that would queue past it
is refused with :class:`BuildQueueFull`. What it asks Swarm for is
:mod:`swarmbinder.buildjob`'s; following a build to its end is
:mod:`swarmbinder.buildwatch`'s (one watcher task per build, owned here); the registry
login each build pushes with is :mod:`swarmbinder.buildlogins`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence

from .buildjob import (
    BuildRequest,
    BuildSettings,
    job_spec,
    request_from_labels,
)
from .buildlogins import BuildLogins, JobLogins
from .buildstatus import BuildStatus
from .buildwatch import Build, BuildWatcher
from .errors import ServiceNameConflict, SwarmbinderError
from .events import BuildEvent
from .jobspec import JobSpec
from .labels import (
    KIND_BUILD,
    LABEL_CREATED,
    LABEL_IMAGE,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_REGISTRY_LOGIN,
    LABEL_STATUS,
)
from .sticky import BUILD_NODE_LABEL, Node, NodeAvailability, NodeState, rank_nodes
from .swarm import NodeInfo, ServiceInfo, SwarmClient

log = logging.getLogger(__name__)


class BuildQueueFull(SwarmbinderError, status=503):
    """``build_queue_limit`` builds are waiting for a slot already: no new one joins them."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(
            f"the build queue is full: {queued} builds queued, build_queue_limit is {limit}",
            user_message="The build queue is full. Please try again later.",
        )
        self.queued = queued
        self.limit = limit


def to_sticky_node(node: NodeInfo) -> Node:
    # States this version does not know count as not schedulable.
    states = {s.value: s for s in NodeState}
    availabilities = {a.value: a for a in NodeAvailability}
    return Node(
        id=node.id,
        hostname=node.hostname,
        state=states.get(node.state, NodeState.UNKNOWN),
        availability=availabilities.get(node.availability, NodeAvailability.PAUSE),
        labels=node.labels,
    )


class BuildManager:
    """Starts, shares, queues, watches and cleans up builds. Owns every task it creates."""

    def __init__(
        self,
        swarm: SwarmClient,
        settings: BuildSettings,
        *,
        on_log_lines: Callable[[str, Sequence[str]], object] | None = None,
        on_finished: Callable[[Build], object] | None = None,
        on_started: Callable[[Build], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_started`` is called (synchronously, so it must not block) when a build is
        created, adopted from Swarm or moved from the queue to a node; ``on_log_lines`` with
        each batch of log lines as read; ``on_finished`` once a build has ended. A callback
        that raises is logged and never fails the build."""
        self._swarm = swarm
        self._settings = settings
        self._builds: dict[str, Build] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._queue: list[str] = []
        self._lock = asyncio.Lock()
        self._housekeeper: asyncio.Task[None] | None = None
        self._on_started = on_started
        self._stores_logs = on_log_lines is not None
        self._clock = clock
        self._logins = BuildLogins(swarm, settings, clock=clock)
        self._watcher = BuildWatcher(
            swarm,
            settings,
            release=self._release,
            stop=self._stop,
            on_log_lines=on_log_lines,
            on_finished=on_finished,
            clock=clock,
        )
        self._closed = False
        self._build_label_in_use = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up builds from Swarm (after a restart), then start housekeeping."""
        await self.recover()
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="build-housekeeping")

    async def close(self) -> None:
        """Stop watching. Builds keep running in Swarm; a new manager picks them up."""
        self._closed = True
        tasks = [t for t in [self._housekeeper, *self._watchers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()

    async def recover(self) -> list[Build]:
        services = await self._swarm.list_services({LABEL_KIND: KIND_BUILD})
        recovered = []
        async with self._lock:
            for service in sorted(services, key=lambda s: s.labels.get(LABEL_CREATED, "")):
                if service.name not in self._builds and self._is_ours(service):
                    recovered.append(self._adopt_locked(service))
            await self._promote_queued_locked()
        return recovered

    def _is_ours(self, service: ServiceInfo) -> bool:
        image = service.labels.get(LABEL_IMAGE, "")
        return image.startswith(self._settings.image_prefix)

    def _adopt_locked(self, service: ServiceInfo) -> Build:
        """Watch a build service this process did not create (a restart, another replica)."""
        labels = service.labels
        status = BuildStatus(labels.get(LABEL_STATUS, "running"))
        build = self._new_build(
            request_from_labels(labels),
            status,
            created=float(labels.get(LABEL_CREATED, "0") or 0),
        )
        build.node = labels.get(LABEL_NODE, "")
        build.adopted = True
        build.login_username = labels.get(LABEL_REGISTRY_LOGIN, "")
        build.on_end = self._revoke_login
        self._builds[service.name] = build
        self._notify_started(build)
        if status is BuildStatus.QUEUED and service.name not in self._queue:
            self._queue.append(service.name)
            build.publish(self._waiting_event(service.name))
        # A re-attached watcher replays the last log_tail_lines, as BinderHub does on attach.
        self._start_watcher(build, log_tail=self._settings.log_tail_lines)
        return build

    # -- requests ---------------------------------------------------------------------------

    def get(self, name: str) -> Build | None:
        return self._builds.get(name)

    @property
    def builds(self) -> list[Build]:
        return list(self._builds.values())

    def queue_position(self, name: str) -> int | None:
        return self._queue.index(name) + 1 if name in self._queue else None

    async def request(self, request: BuildRequest) -> Build:
        """The build for this request: the running or queued one, or a new one."""
        if self._closed:
            raise SwarmbinderError("the build manager is shut down")
        name = request.service_name
        async with self._lock:
            build = self._builds.get(name)
            if build is not None and build.status is BuildStatus.FAILED:
                # A new request retries a failed build, as BinderHub does. The old service
                # goes first; if the engine cannot remove it, the request fails and the build
                # stays known, so housekeeping still removes it later.
                await self._remove_service(name)
                await self._forget_locked(name, remove_service=False)
                build = None
            if build is not None:
                return build
            existing = await self._swarm.inspect_service(name)
            if existing is not None:
                # Started by another swarmbinder replica or before a restart.
                await self.recover_locked_one(existing.name)
                found = self._builds.get(name)
                if found is not None and found.status is not BuildStatus.FAILED:
                    return found
                await self._forget_locked(name, remove_service=True)
            return await self._create_locked(request)

    async def recover_locked_one(self, name: str) -> None:
        service = await self._swarm.inspect_service(name)
        if service is None:
            return
        build = self._adopt_locked(service)
        # A task that already failed must not be joined: the caller retries instead.
        tasks = await self._swarm.tasks(name)
        if tasks and tasks[-1].terminal and not tasks[-1].succeeded:
            build.status = BuildStatus.FAILED

    async def cancel(self, name: str, reason: str = "cancelled by an administrator") -> bool:
        async with self._lock:
            build = self._builds.get(name)
            if build is None:
                return await self._remove_service(name)
            build.finish(
                BuildStatus.CANCELLED, BuildEvent.failed(f"Build cancelled: {reason}\n"), reason
            )
            await self._forget_locked(name, remove_service=True)
            await self._promote_queued_locked()
            return True

    # -- internals --------------------------------------------------------------------------

    def _running_count(self) -> int:
        return sum(1 for b in self._builds.values() if b.status is BuildStatus.RUNNING)

    async def _create_locked(self, request: BuildRequest) -> Build:
        now = self._clock()
        queued = (
            self._settings.concurrent_limit > 0
            and self._running_count() >= self._settings.concurrent_limit
        )
        if queued:
            await self._check_queue_room()
        node = "" if queued else await self._choose_node(request)
        status = BuildStatus.QUEUED if queued else BuildStatus.RUNNING
        # A queued build gets its own login when it leaves the queue, so the login's lifetime
        # (build_max_age) counts from when it runs.
        logins = await self._logins.for_job(request, own_login=not queued)
        spec = self._job_spec(request, status=status, node=node, now=now, logins=logins)
        build = self._new_build(request, status, created=now)
        build.node = node
        build.credential = logins.credential
        build.login_username = logins.credential.username if logins.credential is not None else ""
        build.on_end = self._revoke_login
        try:
            await self._swarm.create_job(spec)
        except ServiceNameConflict:
            await self._logins.discard(logins)
            # Another replica created it between our inspect and create: join it.
            await self.recover_locked_one(request.service_name)
            return self._builds[request.service_name]
        except BaseException:
            # No half-made build: the login made for a service that does not exist goes too.
            await self._logins.discard(logins)
            raise
        self._builds[spec.name] = build
        if queued:
            self._queue.append(spec.name)
            build.publish(self._waiting_event(spec.name))
        self._notify_started(build)
        self._start_watcher(build, log_tail="all")
        return build

    async def _check_queue_room(self) -> None:
        """:class:`BuildQueueFull` when ``build_queue_limit`` builds wait already.

        Counted in Swarm, not in memory: every replica's queued builds carry the queued status
        label until they are promoted, so the cap holds across replicas (up to one build per
        replica that queues at the same instant)."""
        limit = self._settings.queue_limit
        if limit == 0:
            return
        waiting = await self._swarm.list_services(
            {LABEL_KIND: KIND_BUILD, LABEL_STATUS: BuildStatus.QUEUED.value}
        )
        queued = sum(1 for service in waiting if self._is_ours(service))
        if queued >= limit:
            log.warning("refused a new build: %d builds queued (limit %d)", queued, limit)
            raise BuildQueueFull(queued, limit)

    def _new_build(self, request: BuildRequest, status: BuildStatus, *, created: float) -> Build:
        # With on_log_lines a recorder keeps the whole log: late watchers are told where.
        whole_log = (
            f"The whole log is kept for the operators (admin API: builds/{request.service_name})."
            if self._stores_logs
            else ""
        )
        return Build(
            request,
            status,
            tail_size=self._settings.log_tail_lines,
            created=created,
            memory_bytes=self._settings.log_memory_bytes,
            whole_log=whole_log,
        )

    def _revoke_login(self, build: Build) -> None:
        self._logins.revoke(build.login_username, build.credential)

    async def _remove_service(self, name: str) -> bool:
        # The builder image carries docker-py, which the reaper of job containers left on
        # other nodes needs.
        removed = await self._swarm.remove_service(name, reaper_image=self._settings.builder_image)
        await self._logins.remove_of(name)
        return removed

    def _notify_started(self, build: Build) -> None:
        if self._on_started is None:
            return
        try:
            self._on_started(build)
        except Exception:
            log.exception("the on_started callback failed for build %s", build.name)

    def _job_spec(
        self,
        request: BuildRequest,
        *,
        status: BuildStatus,
        node: str,
        now: float,
        logins: JobLogins,
    ) -> JobSpec:
        return job_spec(
            request,
            self._settings,
            status=status,
            node=node,
            now=now,
            build_nodes_only=self._build_label_in_use,
            secret=logins.secret,
            login=logins.credential,
            git_login=logins.git_login,
        )

    async def _choose_node(self, request: BuildRequest) -> str:
        """The sticky node for the repo: rendezvous rank over ready, active nodes."""
        if not self._settings.sticky:
            return ""
        nodes = [to_sticky_node(n) for n in await self._swarm.nodes()]
        # While any node carries the build label, builds are pinned to labelled nodes even
        # when none of them can take one now: the build then waits (and fails after
        # build_pending_timeout) rather than landing on a node the operator kept free.
        self._build_label_in_use = any(n.has_label(BUILD_NODE_LABEL) for n in nodes)
        required = {
            k.removeprefix("node.labels."): v
            for k, v in self._settings.node_selector.items()
            if k.startswith("node.labels.")
        }
        ranked = rank_nodes(request.repo_url, nodes, required_labels=required)
        return ranked[0].hostname if ranked else ""

    async def _promote_queued_locked(self) -> None:
        """Start queued builds, oldest first, while there are free slots."""
        limit = self._settings.concurrent_limit
        while self._queue and (limit == 0 or self._running_count() < limit):
            name = self._queue.pop(0)
            build = self._builds.get(name)
            if build is None or build.status is not BuildStatus.QUEUED:
                continue
            node = await self._choose_node(build.request)
            try:
                # The git login is asked again: the secrets the service is updated with
                # replace the ones it was made with.
                logins = await self._logins.for_job(build.request, own_login=True)
            except SwarmbinderError as exc:
                build.finish(
                    BuildStatus.FAILED, BuildEvent.failed(f"{exc.user_message}\n"), str(exc)
                )
                continue
            spec = self._job_spec(
                build.request,
                status=BuildStatus.RUNNING,
                node=node,
                now=build.created,
                logins=logins,
            )
            credential = logins.credential
            try:
                await self._swarm.update_job(
                    name,
                    constraints=spec.constraints,
                    labels=spec.labels,
                    secrets=spec.secrets if credential is not None else None,
                    env=spec.env if credential is not None else None,
                )
                if credential is not None:
                    build.credential = credential
                    build.login_username = credential.username
            except SwarmbinderError as exc:
                await self._logins.discard(logins)
                build.finish(
                    BuildStatus.FAILED,
                    BuildEvent.failed(f"Could not start the build: {exc}\n"),
                    str(exc),
                )
                continue
            build.status = BuildStatus.RUNNING
            build.node = node
            build.started = self._clock()
            self._notify_started(build)
            build.publish(BuildEvent.waiting(None, "Build slot free, starting the build.\n"))
        for name in self._queue:
            build = self._builds.get(name)
            if build is not None:
                build.publish(self._waiting_event(name))

    def _waiting_event(self, name: str) -> BuildEvent:
        position = self.queue_position(name)
        return BuildEvent.waiting(
            position,
            f"Waiting for a build slot: position {position} in the queue "
            f"({self._settings.concurrent_limit} builds run at once).\n",
        )

    async def _forget_locked(self, name: str, *, remove_service: bool) -> None:
        watcher = self._watchers.pop(name, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        build = self._builds.pop(name, None)
        if build is not None:
            # A watcher cancelled before it ever ran has no finally: the end is reported here.
            await self._watcher.report_finished(build)
        if name in self._queue:
            self._queue.remove(name)
        if remove_service:
            with contextlib.suppress(SwarmbinderError):
                await self._remove_service(name)

    def _start_watcher(self, build: Build, *, log_tail: int | str) -> None:
        watcher = asyncio.create_task(
            self._watcher.watch(build, log_tail), name=f"watch-{build.name}"
        )
        self._watchers[build.name] = watcher
        # Owned until it ends, stopping included: close() cancels and awaits it.
        watcher.add_done_callback(functools.partial(self._watcher_ended, build.name))

    def _watcher_ended(self, name: str, watcher: asyncio.Task[None]) -> None:
        if self._watchers.get(name) is watcher:
            del self._watchers[name]

    async def _release(self, build: Build) -> None:
        """The build's result is out: its slot goes to the next queued build."""
        async with self._lock:
            await self._promote_queued_locked()

    async def _stop(self, build: Build) -> None:
        """The build was failed early (overdue, never placed): stop it and let it go."""
        async with self._lock:
            # Stop it: the builder container goes with the service, and the daemon drops
            # the image build whose client went away.
            try:
                await self._remove_service(build.name)
            except SwarmbinderError as remove_error:
                log.warning("could not remove build %s: %s", build.name, remove_error)
                build.lost = True  # housekeeping tries again
            else:
                await self._forget_locked(build.name, remove_service=False)
            await self._promote_queued_locked()

    async def _housekeeping(self) -> None:
        """Remove finished build services; overdue ones were stopped by their watchers."""
        while True:
            await asyncio.sleep(self._settings.cleanup_interval)
            try:
                await self.cleanup()
            except SwarmbinderError as exc:
                log.warning("build cleanup failed: %s", exc)

    async def cleanup(self) -> list[str]:
        """Remove the services of finished builds: built ones at once, failed ones after
        ``keep_failed_for`` (so ``docker service logs`` still shows why), lost ones as soon as
        the engine answers. A build whose service could not be removed is kept for the next
        round, so an engine that is away never makes us forget a service."""
        now = self._clock()
        async with self._lock:
            due = []
            for name, build in self._builds.items():
                if build.finished is None:
                    continue
                keep = (
                    self._settings.keep_failed_for
                    if build.status is BuildStatus.FAILED and not build.lost
                    else 0
                )
                if now - build.finished >= keep:
                    due.append(name)
            # Concurrently: each removal waits for its job's containers to settle (about a
            # second), and the lock that new requests wait for is held meanwhile.
            results = await asyncio.gather(*(self._remove_finished(name) for name in due))
            removed = [name for name, ok in zip(due, results, strict=True) if ok]
            for name in removed:
                await self._forget_locked(name, remove_service=False)
            if removed:
                await self._promote_queued_locked()
            await self._logins.sweep(self._builds)
        return removed

    async def _remove_finished(self, name: str) -> bool:
        try:
            await self._remove_service(name)
        except SwarmbinderError as exc:
            log.warning("could not remove finished build %s yet: %s", name, exc)
            return False
        return True

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "name": b.name,
                "repo_url": b.request.repo_url,
                "ref": b.request.ref,
                "image": b.image,
                "status": b.status.value,
                "node": b.node,
                "queue_position": self.queue_position(b.name),
                "created": b.created,
                "finished": b.finished,
                "reason": b.reason,
            }
            for b in self._builds.values()
        ]
