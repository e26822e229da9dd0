"""The pool manager: keeps each pool filled with servers of its spec's current image.

One round (every ``interval`` seconds, or at once when woken: a hand-out, a finished spawn or
build, a launch of a pool's spec that resolved to another image)::

    resolve each pool's spec when due            a new image: the old one's servers drain
    missing image: build it (with backoff)       a failing build never loops
    list the pool servers in Swarm               the record; ask the hub only what is new
    plan: retire stale ones, start missing ones  rules.plan
    start spawns unless launches are queued      pools give way to users

:meth:`PoolManager.hand_out` is the fast path of a launch: pick a waiting server of the image,
check its task runs, claim it in Swarm, mint its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Unpack

from ..buildjob import BuildRequest
from ..errors import SwarmbinderError
from ..events import BuildEvent, Phase, ending
from ..labels import SERVER_NAME_POOL
from ..launcher import ServerRequest
from ..policy.canonical import RepoIdentity
from ..resolve import Resolved
from . import rules
from .auto import AutoSet
from .rules import PoolRule, PoolServer, PoolTarget
from .servers import PoolServers

log = logging.getLogger(__name__)


class Spawner(Protocol):
    """Starts a server as a cold launch does (:class:`~swarmbinder.launcher.Launcher`)."""

    def launch(self, image: str, **request: Unpack[ServerRequest]) -> AsyncIterator[BuildEvent]: ...


class BuildHandle(Protocol):
    def events(self) -> AsyncIterator[BuildEvent]: ...


class Builds(Protocol):
    """Starts a build or joins the running one (:class:`~swarmbinder.builds.BuildManager`)."""

    async def request(self, request: BuildRequest) -> BuildHandle: ...


@dataclass(frozen=True)
class HandedOut:
    """A pool server given to a launch, with the token made for it."""

    url: str
    token: str
    user: str


@dataclass(frozen=True)
class PoolStatus:
    """One pool, for the admin view and /metrics."""

    pattern: str
    spec: str
    image: str
    size: int
    waiting: int
    starting: int
    handed_out_last_hour: int
    building: bool
    last_error: str
    #: A pool of ``warm_pool_auto``.
    auto: bool = False
    #: Shrunk for want of hand-outs (``warm_pool_idle_after``).
    idle: bool = False


async def no_pressure() -> str:
    return ""


class PoolManager:
    """Fills the pools of ``pool_rules`` and hands their servers out."""

    def __init__(
        self,
        pool_rules: Sequence[PoolRule],
        servers: PoolServers,
        *,
        spawner: Spawner,
        resolve: Callable[[str], Awaitable[Resolved]],
        image_exists: Callable[[str], Awaitable[bool]],
        builds: Builds,
        queue_busy: Callable[[], bool] = lambda: False,
        pressure: Callable[[], Awaitable[str]] = no_pressure,
        auto: AutoSet | None = None,
        auto_pool_size: int = 1,
        idle_after: float = 3600.0,
        launch_host: str = "",
        max_age: float = 900.0,
        resolve_interval: float = 60.0,
        interval: float = 5.0,
        max_starting: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = tuple(pool_rules)
        self._targets = rules.targets_from_rules(self._rules)
        self._servers = servers
        self._spawner = spawner
        self._resolve = resolve
        self._image_exists = image_exists
        self._builds = builds
        self._queue_busy = queue_busy
        self._pressure = pressure
        self._auto = auto
        self._auto_pool_size = auto_pool_size
        self._idle_after = idle_after
        #: Why pools start nothing now (the swarm short of CPU or memory), "" when they may.
        self.held_back = ""
        self._launch_host = launch_host
        self._max_age = max_age
        self._resolve_interval = resolve_interval
        self._interval = interval
        self._max_starting = max_starting
        self._clock = clock
        for target in self._targets:
            target.active_at = clock()
        self._resolved: dict[str, Resolved] = {}
        #: users of spawns in flight -> image
        self._starting: dict[str, str] = {}
        #: users whose pool server the hub called ready
        self._ready: set[str] = set()
        #: users Swarm lists but the hub has no pool server for
        self._unknown: set[str] = set()
        #: users handed out or being retired by this replica (never offered again)
        self._taken: set[str] = set()
        self._listed: list[PoolServer] = []
        #: casefolded specs whose pools this manager gave up since its last round: their waiting
        #: servers are retired in the next round (once: another replica may still want them)
        self._dropped: set[str] = set()
        self._waiting: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until cancelled (a background task of the app)."""
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except SwarmbinderError as exc:
                log.info("warm pools: round skipped: %s", exc)
            except Exception:
                log.exception("warm pools: unexpected error; trying again next round")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    async def aclose(self) -> None:
        """Stop spawns and builds in flight (a spawn cut short removes its server); the
        waiting servers stay for the next start."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile(self) -> None:
        """One round: see the module docstring."""
        now = self._clock()
        self._update_auto(now)
        for target in list(self._targets):
            target.check_idle(now, self._idle_after)
            await self._refresh(target, now)
        servers = await self._servers.list()
        await self._ask_hub(servers)
        listed = {s.user for s in servers}
        self._ready &= listed | set(self._starting)
        self._unknown &= listed
        self._taken &= listed
        self._listed = servers
        plan = rules.plan(
            self._targets,
            servers,
            starting=self._starting,
            ready=self._ready,
            unknown_to_hub=self._unknown,
            now=now,
            max_age=self._max_age,
            dropped=frozenset(self._dropped),
        )
        self._dropped.clear()
        self._waiting = dict(plan.waiting)
        for server in plan.retire:
            if server.user not in self._taken:
                self._taken.add(server.user)
                log.info("warm pools: retiring %s (%s)", server.service_name, server.image)
                self._start(self._retire(server), f"pool-retire-{server.user}")
        if self._queue_busy():
            return  # launches are waiting for a slot: they go first
        room = self._max_starting - len(self._starting)
        if room <= 0 or not any(target.spawn_backoff.ready(now) for target, _ in plan.start):
            return
        reason = await self._pressure()
        if reason != self.held_back:
            if reason:
                log.info("warm pools: starting nothing: %s", reason)
            else:
                log.info("warm pools: starting servers again")
            self.held_back = reason
        if reason:
            return  # users need the swarm's room more than the pools
        for target, missing in plan.start:
            if room <= 0:
                break
            if not target.spawn_backoff.ready(now):
                continue
            for _ in range(min(missing, room)):
                self._start_spawn(target)
                room -= 1

    # -- hand-out ------------------------------------------------------------------------------

    async def hand_out(self, image: str) -> HandedOut | None:
        """A waiting server of ``image``, now taken out of its pool, with a fresh token; None
        when no pool holds one (the launch then starts a server cold)."""
        candidates = sorted(
            (
                s
                for s in self._listed
                if s.waiting and s.image == image and s.user in self._ready
                if s.user not in self._taken
            ),
            key=lambda s: s.created,  # the oldest first: it is closest to its max age
        )
        for server in candidates:
            if server.user in self._taken:
                continue  # taken by a concurrent hand-out while we awaited
            self._taken.add(server.user)
            if not await self._servers.running(server):
                log.warning("warm pools: %s is not running; retiring it", server.service_name)
                self._start(self._retire(server), f"pool-retire-{server.user}")
                continue
            if not await self._servers.claim(server, f"{self._clock():.3f}"):
                continue  # another replica took it
            try:
                token = await self._servers.mint_token(server.user)
            except SwarmbinderError as exc:
                log.warning("warm pools: no token for %s: %s", server.user, exc)
                self._start(self._servers.forget(server.user), f"pool-forget-{server.user}")
                continue
            now = self._clock()
            for target in self._targets:
                if target.image == image:
                    target.count_handout(now)
                    target.touch(now)
            self._waiting[image] = max(0, self._waiting.get(image, 0) - 1)
            log.info("warm pools: handed out %s (%s)", server.service_name, image)
            self.wake()  # a replacement starts now
            return HandedOut(self._servers.url(server.user), token, server.user)
        return None

    def notice_launch(self, path: str, repo_url: str, image: str) -> None:
        """A launch of ``path`` resolved to ``image``: a pool of that spec holding another
        image is resolved again at once (a new commit), and patterns without a spec of their
        own learn it."""
        provider, _, spec = path.partition("/")
        identity = RepoIdentity(provider, spec, repo_url)
        now = self._clock()
        was_idle = {id(t) for t in self._targets if t.idle}
        before = list(self._targets)
        touched = rules.notice_launch(self._targets, self._rules, path, identity, now)
        still = {id(t) for t in self._targets}
        self._dropped.update(t.path.casefold() for t in before if id(t) not in still)
        if self._auto is not None and not any(rule.matches(identity) for rule in self._rules):
            # a spec a warm_pools pattern covers is that pattern's, not auto's
            self._auto.counts.add(path, now)
            for target in self._targets:
                if target.auto and target.path.casefold() == path.casefold():
                    target.last_launch = now
                    target.touch(now)
                    touched.append(target)
        for target in touched:
            if id(target) in was_idle:
                self.wake()  # it grows back now
            if target.image != image:
                target.resolved_at = -math.inf
                self.wake()

    def status(self) -> list[PoolStatus]:
        now = self._clock()
        return [
            PoolStatus(
                pattern=t.rule.pattern,
                spec=t.path,
                image=t.image,
                size=t.size,
                waiting=self._waiting.get(t.image, 0) if t.image else 0,
                starting=sum(1 for image in self._starting.values() if image == t.image),
                handed_out_last_hour=t.handouts_in_window(now),
                building=t.building,
                last_error=t.last_error,
                auto=t.auto,
                idle=t.idle,
            )
            for t in self._targets
        ]

    # -- steps ---------------------------------------------------------------------------------

    def _update_auto(self, now: float) -> None:
        """Give the most launched specs their pools; drain those that dropped out."""
        if self._auto is None:
            return
        change = self._auto.update(now)
        if change is None:
            return
        entering, leaving = change
        gone = {p.casefold() for p in leaving}
        for target in [t for t in self._targets if t.auto and t.path.casefold() in gone]:
            log.info("warm pools: %s left the most launched; draining", target.path)
            self._targets.remove(target)
            self._dropped.add(target.path.casefold())
        for path in entering:
            if any(t.path.casefold() == path.casefold() for t in self._targets):
                continue  # a warm_pools pattern learned it meanwhile
            log.info("warm pools: %s is among the most launched; filling", path)
            rule = PoolRule(f"^{re.escape(path)}$", self._auto_pool_size)
            self._targets.append(PoolTarget(rule, path, auto=True, active_at=now, last_launch=now))

    async def _refresh(self, target: PoolTarget, now: float) -> None:
        """Resolve the spec when due; find or build its image."""
        if now - target.resolved_at >= self._resolve_interval:
            target.resolved_at = now
            try:
                resolved = await self._resolve(target.path)
            except SwarmbinderError as exc:
                target.last_error = f"resolving {target.path}: {exc.user_message}"
                log.warning("warm pools: %s", target.last_error)
                return
            self._resolved[target.path] = resolved
            image = resolved.build.image
            if image != target.image:
                if target.image:
                    log.info("warm pools: %s moved to %s; draining", target.path, image)
                target.image, target.image_ready = image, False
                target.build_backoff.succeeded()
                target.spawn_backoff.succeeded()
        if not target.image or target.image_ready or target.building:
            return
        if not target.build_backoff.ready(now):
            return
        target.image_ready = await self._image_exists(target.image)
        if not target.image_ready:
            target.building = True
            self._start(
                self._build(target, self._resolved[target.path]), f"pool-build-{target.path}"
            )

    async def _build(self, target: PoolTarget, resolved: Resolved) -> None:
        image = resolved.build.image
        problem = "the build ended without a result"
        try:
            handle = await self._builds.request(resolved.build)
            end = await ending(handle.events(), (Phase.BUILT, Phase.READY))
            if end is not None and end.phase is Phase.FAILED:
                problem = end.message.strip() or "the build failed"
            elif end is not None:
                problem = ""
        except SwarmbinderError as exc:
            problem = exc.user_message
        finally:
            target.building = False
            self.wake()
        if target.image != image:
            return  # the spec moved on meanwhile
        if not problem:
            target.image_ready = True
            target.build_backoff.succeeded()
            target.last_error = ""
            return
        delay = target.build_backoff.failed(self._clock())
        target.last_error = f"build of {image} failed: {problem}"
        log.warning("warm pools: %s; next try in %.0f s", target.last_error, delay)

    def _start_spawn(self, target: PoolTarget) -> None:
        resolved = self._resolved[target.path]
        user = self._servers.new_user(resolved.build.repo_url)
        self._starting[user] = target.image
        self._start(self._spawn(target, resolved, user), f"pool-spawn-{user}")

    async def _spawn(self, target: PoolTarget, resolved: Resolved, user: str) -> None:
        """Start one pool server as a cold launch would, as the user's ``pool`` server."""
        build = resolved.build
        ready = False
        problem = "the server did not become ready"
        try:
            await self._servers.hub.create_user(user)
            launch = self._spawner.launch(
                build.image,
                **resolved.server_request(
                    target.path,
                    launch_host=self._launch_host,
                    client_ip="",
                    username=user,
                    server_name=SERVER_NAME_POOL,
                ),
            )
            end = await ending(launch, (Phase.READY,))
            ready = end is not None and end.phase is Phase.READY
            if end is not None and not ready:
                problem = end.message.strip()
        except SwarmbinderError as exc:
            problem = exc.user_message
        finally:
            self._starting.pop(user, None)
            if ready:
                self._ready.add(user)
            else:
                # shielded: a cancelled spawn (shutdown) still deletes its temporary user
                await asyncio.shield(self._servers.forget(user))
            self.wake()
        if ready:
            target.spawn_backoff.succeeded()
            return
        delay = target.spawn_backoff.failed(self._clock())
        target.last_error = f"starting a server of {build.image} failed: {problem}"
        log.warning("warm pools: %s; next try in %.0f s", target.last_error, delay)

    async def _retire(self, server: PoolServer) -> None:
        try:
            await self._servers.retire(server)
        except SwarmbinderError as exc:
            log.warning("warm pools: retiring %s: %s (next round)", server.service_name, exc)
            self._taken.discard(server.user)

    async def _ask_hub(self, servers: Sequence[PoolServer]) -> None:
        """Learn whether the hub calls ready the waiting servers this replica did not start."""
        unsure = [
            s.user
            for s in servers
            if s.waiting and s.user not in self._ready and s.user not in self._starting
        ]
        if not unsure:
            return
        answers = await asyncio.gather(
            *(self._servers.hub_ready(user) for user in unsure), return_exceptions=True
        )
        for user, answer in zip(unsure, answers, strict=True):
            if isinstance(answer, BaseException):
                continue
            if answer is None:
                self._unknown.add(user)
            else:
                self._unknown.discard(user)
                if answer:
                    self._ready.add(user)

    def _start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed:
            coroutine.close()
            return
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
