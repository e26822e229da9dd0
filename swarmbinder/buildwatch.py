"""Following a build to its end: its log, its task's state, and its result.

Each build has exactly one watcher task, owned by the :class:`~swarmbinder.builds.BuildManager`
and running :meth:`BuildWatcher.watch`: it follows the service's log on one engine stream, turns
repo2docker's JSON lines into events, publishes them to the :class:`Build`'s
:class:`~swarmbinder.fanout.Fanout` that every request watching the build subscribes to, and
decides success or failure from the task state and exit code. What happens to the build's slot
and service afterwards is the manager's: the watcher hands the ended build back to it.

Memory is bounded whatever a repository prints: the watcher keeps a count and a
:class:`LogSummary` of the log (its first ``failed`` line and its last few lines), and the
fan-out keeps a ring of the last ``log_tail_lines`` events within ``build_log_memory_bytes``
for watchers who join later; they are told how many lines they missed and where the whole
log is. The whole log goes to the manager's ``on_log_lines`` callback as it is read.

A build ends exactly once (:meth:`Build.finish`). Its log reader is stopped before the watcher
ends the build, and anything published after the end (a late line, a queue position) is
dropped, so the end is always the last event and ``on_finished`` (which stores the final state)
always runs.

When the engine stops answering, a watcher keeps trying for ``BuildSettings.engine_grace``
seconds (a restarting manager or a network blip should not fail a build), then fails the build
with a message that names the engine and stops. Its service cannot be removed while the engine
is away; the build stays in the manager, marked lost, and housekeeping removes the service at
the first round that reaches the engine again. A manager started later adopts the service like
any other and removes it once it has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from .buildjob import DEFAULT_LOG_MEMORY_BYTES, BuildRequest, BuildSettings
from .buildstatus import BuildStatus
from .errors import BuildFailed, SwarmbinderError, SwarmUnavailable
from .events import TERMINAL_BUILD_PHASES, BuildEvent, Phase, parse_repo2docker_line
from .fanout import Fanout
from .gitcredentials import login_refused_message, refused_host
from .loglines import StreamProgress
from .registrytokens import BuildCredential
from .sticky import NodeState
from .swarm import SwarmClient, TaskState, TaskStateName

log = logging.getLogger(__name__)

#: How often (seconds) a running build checks that the node it runs on is still up.
NODE_CHECK_INTERVAL = 1.0
#: How long a finished build's log must stay quiet before its result is published. It was
#: 0.2 s, then the largest part of the time from the builder's exit to ``built``
#: (bench/build.py).
LOG_DRAIN_QUIET = 0.05
#: The longest a finished build's log is drained while text keeps arriving: a long line still
#: coming in keeps the window open (a 5 MB line under load took longer than one quiet
#: window), a 100 MB one must not hold the build's end for as long as the engine sends it.
LOG_DRAIN_MAX = 10.0
#: Lines of a failed build's log read again when its stream showed no repo2docker error.
FAILURE_REREAD_LINES = 200


#: What an event weighs beyond its message: the event and its small objects, roughly.
EVENT_OVERHEAD = 200


def event_size(event: BuildEvent) -> int:
    """An event's weight against ``build_log_memory_bytes``."""
    return len(event.message) + EVENT_OVERHEAD


def skipped_lines_event(count: int, phase: Phase, why: str, whole_log: str) -> BuildEvent:
    """The line a watcher reads where ``count`` lines of the build's output are left out."""
    if phase in (Phase.BUILT, Phase.FAILED):
        phase = Phase.BUILDING  # a marker never ends a client's stream
    where = f" {whole_log}" if whole_log else ""
    return BuildEvent.log(phase, f"[{count} lines of the build log are not shown: {why}.{where}]")


class _StopBuild(BuildFailed):
    """The build must end now and its service be removed (overdue, or never placed)."""


def as_log_event(line: str) -> BuildEvent:
    """repo2docker's line as a log event for watchers. Its own ``failed`` lines are shown as
    build log: BinderHub's clients close the stream at the first ``failed``, and the one that
    ends a build must be ours, which carries the reason and the status code."""
    return _shown(parse_repo2docker_line(line))


def _shown(event: BuildEvent) -> BuildEvent:
    if event.phase is Phase.FAILED:
        return BuildEvent.log(Phase.BUILDING, event.message)
    return event


def announces_push_of(event: BuildEvent, image: str) -> bool:
    """Is this repo2docker's last line of a build it pushed: ``Successfully pushed <image>``?

    repo2docker logs it once the registry has the image, and with ``--no-run`` does nothing
    after it. Output of the repository's own build steps cannot forge it: repo2docker logs those
    as the message of a ``building`` line, never as a line of its own.
    """
    return event.phase is Phase.PUSHING and event.message.strip() == f"Successfully pushed {image}"


class _Pushed(enum.Enum):
    """What :meth:`BuildWatcher._wait_terminal_or_pushed` returns when the log announced the
    push before Swarm reported the builder's end."""

    PUSHED = "pushed"


class LogSummary:
    """What a watcher keeps of a build's log, however long it is: how many lines were read,
    git's refusal of a login while fetching, repo2docker's first ``failed`` line, and the last
    few non-empty lines (for the failure reason)."""

    RECENT = 3

    def __init__(self) -> None:
        self.count = 0
        self.stream = StreamProgress()
        self.login_refused: str | None = None
        self.first_failure: str | None = None
        self.recent: deque[str] = deque(maxlen=self.RECENT)

    def add(self, line: str, event: BuildEvent) -> None:
        """``event`` is ``line`` as :func:`parse_repo2docker_line` reads it."""
        self.count += 1
        if self.login_refused is None and _refused_login_host(event) is not None:
            self.login_refused = line
        if event.phase is Phase.FAILED and self.first_failure is None:
            self.first_failure = line
        if line.strip():
            self.recent.append(line)

    @property
    def has_failure(self) -> bool:
        return self.first_failure is not None

    def lines(self) -> list[str]:
        """The lines :func:`failure_reason` needs, in the order it reads them."""
        refused = [] if self.login_refused is None else [self.login_refused]
        first = [] if self.first_failure is None else [self.first_failure]
        return refused + first + list(self.recent)


def _refused_login_host(event: BuildEvent) -> str | None:
    """The host whose git server turned the clone's login down. Only the fetching phase's
    lines count: that is git's own output, which a repository's build steps cannot write."""
    if event.phase is not Phase.FETCHING:
        return None
    return refused_host(event.message)


def failure_reason(lines: Sequence[str], task: TaskState | None) -> str:
    """Why a build failed, in words: a git server refusing the login, repo2docker's own
    error, else the task's, else its code."""
    for line in lines:
        host = _refused_login_host(parse_repo2docker_line(line))
        if host is not None:
            return login_refused_message(host)
    for line in lines:
        event = parse_repo2docker_line(line)
        if event.phase is Phase.FAILED and event.message.strip():
            return event.message.strip()
    if task is not None and task.error:
        return f"the build task failed: {task.error}"
    if task is not None and task.exit_code:
        tail = [ln for ln in lines if ln.strip()][-3:]
        detail = " | ".join(parse_repo2docker_line(ln).message.strip() for ln in tail)
        return f"repo2docker exited with code {task.exit_code}" + (f": {detail}" if detail else "")
    return "the build ended without a result"


class Build:
    """One build as this process sees it: a service, its watcher, and the events fan-out."""

    def __init__(
        self,
        request: BuildRequest,
        status: BuildStatus,
        *,
        tail_size: int,
        created: float,
        memory_bytes: int = DEFAULT_LOG_MEMORY_BYTES,
        whole_log: str = "",
    ) -> None:
        """``tail_size`` lines (``log_tail_lines``) within ``memory_bytes``
        (``build_log_memory_bytes``) are replayed to a watcher who joins late; ``whole_log``
        says where the whole log can be read, for the line that tells such a watcher what it
        missed."""
        self.request = request
        self.status = status
        self.created = created
        self.started: float | None = created if status is BuildStatus.RUNNING else None
        self.finished: float | None = None
        self.node = ""
        self.reason = ""
        #: Picked up from Swarm rather than created by this process (its log is replayed).
        self.adopted = False
        #: The engine stopped answering while it ran: remove its service as soon as it answers.
        self.lost = False
        #: Its own registry login (with a token issuer), revoked when it ends; after a
        #: restart only its user name is known (a label), which is all revoking needs.
        self.credential: BuildCredential | None = None
        self.login_username = ""
        #: Called as it ends, before any watcher hears of it.
        self.on_end: Callable[[Build], None] | None = None
        self.fanout: Fanout[BuildEvent] = Fanout(
            tail_size=max(tail_size, 1) + 8, size_of=event_size, max_size=memory_bytes
        )
        self.whole_log = whole_log
        self.done = asyncio.Event()
        #: Events published after the build ended, and so dropped.
        self.late_events = 0
        #: ``on_finished`` was called for its end.
        self.end_reported = False

    @property
    def name(self) -> str:
        return self.request.service_name

    @property
    def image(self) -> str:
        return self.request.image

    def publish(self, event: BuildEvent) -> bool:
        """Send ``event`` to the build's watchers; after the build ended it is dropped (False):
        its end is the last event they read."""
        if self.done.is_set():
            self.late_events += 1
            return False
        if event.phase in TERMINAL_BUILD_PHASES:
            # A watcher's reader acts on these, so they must come through iteration: the end
            # is published by finish() alone.
            raise ValueError(f"a build's end is published by finish(), not as {event.phase}")
        self.fanout.publish(event)
        return True

    def finish(self, status: BuildStatus, final: BuildEvent, reason: str = "") -> None:
        """End the build, once; later calls are ignored."""
        if self.done.is_set():
            return
        self.status = status
        self.reason = reason
        self.finished = time.time()
        # Done first: whatever on_end does, nothing is published after this point.
        self.done.set()
        try:
            if self.on_end is not None:
                self.on_end(self)
        except Exception:
            log.exception("ending build %s: its on_end callback failed", self.name)
        finally:
            self.fanout.finish(final)

    async def events(
        self, direct: Callable[[BuildEvent], bool] | None = None
    ) -> AsyncIterator[BuildEvent]:
        """The log tail, then live events, ending with ``built`` or ``failed``. Where lines
        are left out (they left the replay ring before this watcher came, or it fell behind)
        a line says how many, and where the whole log is.

        With ``direct``, live events published while this iterator's reader waits go to
        ``direct`` instead, straight from the publisher (see
        :meth:`~swarmbinder.fanout.Subscription.set_sink`); it refuses one by returning False,
        and the event comes through the iterator. Only the build's log lines and queue
        positions are published, never its end, so what ``direct`` takes is never a ``built``
        or ``failed``."""
        async with self.fanout.subscribe() as subscription:
            subscription.set_sink(direct)
            told = 0
            async for event in subscription:
                missed = subscription.missed + subscription.dropped - told
                if missed > 0:
                    why = (
                        "they were printed before you connected"
                        if told == 0 and subscription.missed
                        else "this connection fell behind"
                    )
                    yield skipped_lines_event(missed, event.phase, why, self.whole_log)
                    told += missed
                yield event


class BuildWatcher:
    """Follows builds to their end, one :meth:`watch` per build, for one build manager."""

    def __init__(
        self,
        swarm: SwarmClient,
        settings: BuildSettings,
        *,
        release: Callable[[Build], Awaitable[None]],
        stop: Callable[[Build], Awaitable[None]],
        on_log_lines: Callable[[str, Sequence[str]], object] | None = None,
        on_finished: Callable[[Build], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``release`` is awaited once a build's result is published, to free its slot;
        ``stop`` once a build was failed early (overdue, never placed), to remove its service.
        ``on_log_lines`` and ``on_finished`` are the manager's callbacks (see there)."""
        self._swarm = swarm
        self._settings = settings
        self._release = release
        self._stop = stop
        self._on_log_lines = on_log_lines
        self._on_finished = on_finished
        self._clock = clock

    async def watch(self, build: Build, log_tail: int | str) -> None:
        """Follow one build's log and task until it is terminal, then publish the result."""
        summary = LogSummary()
        pushed = asyncio.Event()
        reader = asyncio.create_task(
            self._read_logs(build, log_tail, summary, pushed), name=f"logs-{build.name}"
        )
        try:
            try:
                task = await self._wait_terminal_or_pushed(build, pushed)
                if not isinstance(task, _Pushed):
                    # The log stream never ends by itself; give it a moment for the last lines.
                    await self._drain(reader, summary)
            finally:
                # Before the build ends, whichever way: its lines all go out (and to the
                # store) ahead of its end, and none come after it.
                await self._stop_reader(build, reader)
            await self._conclude(build, task, summary)
        except asyncio.CancelledError:
            raise
        except _StopBuild as exc:
            reason = str(exc)
            build.finish(BuildStatus.FAILED, BuildEvent.failed(f"Build failed: {reason}\n"), reason)
            # Reported before the service is removed, which takes seconds: a shutdown
            # meanwhile must not lose the end.
            await self.report_finished(build)
            await self._stop(build)
        except SwarmUnavailable as exc:
            # Only reached after engine_grace: the engine is gone, not blinking.
            build.lost = True
            build.finish(
                BuildStatus.FAILED,
                BuildEvent.failed(
                    f"Build failed: the Docker engine stopped answering while the build ran "
                    f"({exc}). Try again later.\n",
                    503,
                ),
                f"the Docker engine stopped answering: {exc}",
            )
        except Exception as exc:  # a watcher must never die silently
            log.exception("watching build %s failed", build.name)
            build.finish(
                BuildStatus.FAILED,
                BuildEvent.failed(f"Watching the build failed: {exc}\n"),
                str(exc),
            )
        finally:
            try:
                await self._stop_reader(build, reader)
            finally:
                await self.report_finished(build)

    async def report_finished(self, build: Build) -> None:
        """Call ``on_finished`` for an ended build, once. The watcher does as it ends; the
        manager calls it too after cancelling a watcher, which may not have started yet."""
        if self._on_finished is None or not build.done.is_set() or build.end_reported:
            return
        build.end_reported = True
        try:
            result = self._on_finished(build)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("the on_finished callback failed for build %s", build.name)

    @staticmethod
    async def _stop_reader(build: Build, reader: asyncio.Task[None]) -> None:
        """Stop the log reader and wait for it. Its failure is logged, never raised, so it
        cannot keep a build from ending or its end from being stored; a cancellation of the
        watcher itself still goes through."""
        if not reader.done():
            reader.cancel()
            await asyncio.wait((reader,))
        if reader.cancelled():
            return
        error = reader.exception()
        if error is not None and not isinstance(error, SwarmbinderError):
            log.error("the log reader of build %s failed", build.name, exc_info=error)

    async def _wait_terminal_or_pushed(
        self, build: Build, pushed: asyncio.Event
    ) -> TaskState | None | _Pushed:
        """The task's terminal state, or ``_Pushed.PUSHED`` as soon as the log says the image is
        in the registry: Swarm reports the builder's exit 0.3-0.5 s later (its own report,
        then our poll), which was most of a cached build's overhead over a raw repo2docker."""
        terminal = asyncio.create_task(self._wait_terminal(build), name=f"task-{build.name}")
        announced = asyncio.create_task(pushed.wait(), name=f"pushed-{build.name}")
        try:
            await asyncio.wait((terminal, announced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (terminal, announced):
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
        if terminal.done() and not terminal.cancelled():
            return terminal.result()  # its end, or its error, wins over a line seen meanwhile
        return _Pushed.PUSHED

    async def _read_logs(
        self, build: Build, tail: int | str, summary: LogSummary, pushed: asyncio.Event
    ) -> None:
        """Publish the service's log lines; follow it again if the engine drops the stream.

        After a reconnect, a log followed from its start is read from the start again and the
        lines already seen are skipped; a log followed from a tail (an adopted build) goes on
        with new lines only, so lines written while the engine was away may be missing.
        """
        batch: list[str] = []
        skip = 0
        try:
            while True:
                stream = self._swarm.follow_logs(build.name, tail=tail, progress=summary.stream)
                try:
                    async for raw in stream:
                        if skip:
                            skip -= 1
                            continue
                        # The one place a repository's words enter: scrubbed here, they are
                        # clean in every event, stored line and failure reason after.
                        line = self._settings.scrubber.scrub(raw)
                        parsed = parse_repo2docker_line(line)
                        summary.add(line, parsed)
                        batch.append(line)
                        event = _shown(parsed)
                        build.publish(event)
                        if announces_push_of(event, build.image):
                            pushed.set()
                        if len(batch) >= 50:
                            self._log_lines(build.name, batch)
                            batch = []
                except SwarmUnavailable as exc:
                    log.info("log stream of %s dropped: %s", build.name, exc)
                finally:
                    await stream.aclose()
                self._log_lines(build.name, batch)
                batch = []
                await asyncio.sleep(max(self._settings.poll_interval, 0.5))
                if tail == "all":
                    skip = summary.count
                else:
                    tail = 0
        finally:
            self._log_lines(build.name, batch)

    def _log_lines(self, name: str, batch: list[str]) -> None:
        if self._on_log_lines is None or not batch:
            return
        try:
            self._on_log_lines(name, batch)
        except Exception:
            log.exception("the on_log_lines callback failed for build %s", name)

    async def _drain(self, reader: asyncio.Task[None], summary: LogSummary) -> None:
        """Wait until no text has arrived for :data:`LOG_DRAIN_QUIET` seconds and no line is
        half received, at most :data:`LOG_DRAIN_MAX`.

        By the time Swarm reports the task terminal its last lines are normally delivered
        already; the window only catches stragglers. Every build waits it once, so it is kept
        short (a failed build's reason is read again in full if a line is missing). A long
        line's frames can come further apart than the window when the engine is busy (seen
        with a 5 MB line beside a 200 MB log): a line begun is waited for.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LOG_DRAIN_MAX
        stream = summary.stream
        seen = -1
        while (
            (seen != stream.received or stream.mid_line)
            and not reader.done()
            and loop.time() < give_up
        ):
            seen = stream.received
            await asyncio.sleep(LOG_DRAIN_QUIET)

    async def _wait_terminal(self, build: Build) -> TaskState | None:
        pending_since: float | None = None
        unanswered_since: float | None = None
        nodes_checked = 0.0
        node_down_since: float | None = None
        while True:
            if build.status is BuildStatus.QUEUED:
                await asyncio.sleep(self._settings.poll_interval * 4)
                continue
            now = self._clock()
            if build.started and now - build.started > self._settings.max_age:
                raise _StopBuild(
                    f"the build timed out: it ran longer than build_max_age "
                    f"({self._settings.max_age:g} s) and was stopped"
                )
            try:
                tasks = await self._swarm.tasks(build.name)
                gone = not tasks and await self._swarm.inspect_service(build.name) is None
            except SwarmUnavailable:
                unanswered_since = unanswered_since or now
                if now - unanswered_since >= self._settings.engine_grace:
                    raise
                await asyncio.sleep(self._settings.poll_interval)
                continue
            unanswered_since = None
            if gone:
                log.warning("build service %s disappeared before its task ended", build.name)
                return None
            current = tasks[-1] if tasks else None
            if (
                current is not None
                and current.state is TaskStateName.SHUTDOWN
                and current.superseded
            ):
                # The task of an iteration that an update superseded (a queued build just
                # promoted) until Swarm creates the new one: not this build's end.
                current = None
            if current is not None and current.terminal:
                return current
            waiting = current is None or current.state in (
                TaskStateName.NEW,
                TaskStateName.PENDING,
                TaskStateName.ALLOCATED,
            )
            if waiting:
                pending_since = pending_since or now
                if now - pending_since > self._settings.pending_timeout:
                    raise _StopBuild(
                        f"no node accepted the build within {self._settings.pending_timeout:g} s "
                        "(build_pending_timeout): the nodes it may run on are down, drained or "
                        "paused"
                        + (f" (Swarm: {current.message or current.error})" if current else "")
                    )
            else:
                pending_since = None
                if current is not None and now - nodes_checked >= NODE_CHECK_INTERVAL:
                    # Swarm keeps the task of a dead node "running" for good: only the node's
                    # own state tells that the build is gone.
                    nodes_checked = now
                    lost = await self._lost_node(current.node_id)
                    if not lost:
                        node_down_since = None
                    elif node_down_since is None:
                        node_down_since = now
                        log.warning("build %s: its node is %s; waiting", build.name, lost)
                    elif now - node_down_since >= self._settings.node_lost_grace:
                        raise _StopBuild(
                            f"node lost: {lost}, which ran the build, is no longer part of "
                            "the swarm; the next request builds on another node"
                        )
            await asyncio.sleep(self._settings.poll_interval)

    async def _lost_node(self, node_id: str) -> str:
        """A description of the node if it is down or gone, else ``""``."""
        if not node_id:
            return ""
        nodes = {n.id: n for n in await self._swarm.nodes()}
        node = nodes.get(node_id)
        if node is None:
            return f"node {node_id[:12]}"
        if node.state in (NodeState.DOWN, NodeState.DISCONNECTED, NodeState.UNKNOWN):
            return f"{node.hostname or node_id[:12]} ({node.state})"
        return ""

    async def _conclude(
        self, build: Build, task: TaskState | None | _Pushed, summary: LogSummary
    ) -> None:
        # Pushed: the builder exits on its own right after; the next cleanup removes its
        # finished service like any other.
        if isinstance(task, _Pushed) or (task is not None and task.succeeded):
            build.finish(
                BuildStatus.BUILT, BuildEvent.built(build.image, "Built image, launching...\n")
            )
        else:
            lines = summary.lines()
            if task is not None and task.exit_code is not None and not summary.has_failure:
                # A line the stream missed: repo2docker's error is at the end of its log.
                with contextlib.suppress(SwarmbinderError, TimeoutError):
                    lines = await self._swarm.read_logs(
                        build.name, max_seconds=5, tail=FAILURE_REREAD_LINES
                    )
            reason = self._settings.scrubber.scrub(
                failure_reason(lines, task) if task is not None else "the build service was removed"
            )
            build.finish(BuildStatus.FAILED, BuildEvent.failed(f"Build failed: {reason}\n"), reason)
        await self.report_finished(build)
        await self._release(build)
