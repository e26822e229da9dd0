"""Build logs that outlive their Swarm service: the build manager's callbacks into the store.

BinderHub loses a build's log with its pod; we keep it. :class:`BuildLogRecorder` takes the
:class:`~swarmbinder.builds.BuildManager`'s ``on_started``, ``on_log_lines`` and
``on_finished`` callbacks, which run on the event loop and must not block, and queues what they
report for one writer task that awaits the store in order (a record before its lines, lines
before the final status). A store that fails or falls behind costs log lines, never a build:
failures are logged, and when the queue is full new lines are dropped and counted. Lines and
failure reasons are scrubbed of known secrets (:mod:`swarmbinder.scrub`) before they are stored:
a build's log is written by the repository, which may have been made to print one.

Each run of a build is one record. Its id is the service name plus the run's creation time
(the ``swarmbinder.created`` label), so a retried build keeps the failed run's log apart, and a
build adopted after a restart continues the record its first manager started.

A build's stored log is capped at ``build_log_max_bytes`` (UTF-8, a newline counted per
line): the first half is stored as it comes; past it a line marks the cut, and the lines after
it wait in a ring of the other half's size, which is stored, after a line counting what was
left out, when the build ends. A failed build's error is at the end of its log, and its start
says what was built; the middle of a runaway log is what a reader can do without. If this
process stops before the build ends, the ring is lost and the stored log ends at the mark.

An adopted build's watcher replays the last lines of the service log, most of which the
previous manager already stored. The recorder drops the longest run of replayed lines that
repeats the end of the stored log; repeated identical lines at the seam can still make it
keep or drop one line too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .buildjob import BuildSettings
from .builds import BuildManager
from .buildwatch import Build
from .scrub import DEFAULT_SCRUBBER, Scrubber
from .store import BuildRecord, Store
from .swarm import SwarmClient

log = logging.getLogger(__name__)

#: Log lines waiting for the store before new ones are dropped.
DEFAULT_MAX_PENDING_LINES = 100_000
#: Characters of log lines waiting for the store before new ones are dropped (lines are up
#: to 64 KiB each, so the line count alone would allow gigabytes).
DEFAULT_MAX_PENDING_CHARS = 64 * 1024 * 1024
#: The default of ``build_log_max_bytes``. A repo2docker build's whole log is typically tens to
#: a few hundred KiB (a conda solve and pip installs included), so 1 MiB keeps ordinary logs
#: whole and still bounds the store at about 1 MiB per build over build_log_retention.
DEFAULT_MAX_LOG_BYTES = 1024 * 1024
#: Bytes of the cap kept for the two lines that mark a cut.
_MARKS_ROOM = 1024
#: How the line that marks the cut starts (a reader can look for it).
CUT_MARK = "[build log cut:"


def line_bytes(line: str) -> int:
    """What a stored line counts against ``build_log_max_bytes``: its UTF-8 and a newline."""
    return len(line.encode("utf-8", "surrogatepass")) + 1


#: What a line kept in the tail ring starts with when its start was cut to fit.
CLIPPED = "[...] "


def _keep_end(line: str, limit: int) -> str:
    """``line`` cut to at most ``limit`` bytes (with its newline) by dropping its start:
    repo2docker passes Docker's output on in chunks of many lines, and an error ends its chunk."""
    if line_bytes(line) <= limit:
        return line
    room = max(limit - 1 - len(CLIPPED), 0)
    data = line.encode("utf-8", "surrogatepass")[-room:] if room else b""
    return CLIPPED + data.decode("utf-8", "ignore")


@dataclass
class _Capped:
    """How much of one build's log is stored, and the ring of lines past the cut."""

    stored: int = 0
    cut: bool = False
    tail: deque[str] = field(default_factory=deque)
    tail_bytes: int = 0
    left_out: int = 0
    left_out_bytes: int = 0


def record_id(build: Build) -> str:
    """The store's id for this run of the build."""
    return f"{build.name}@{build.created:.3f}"


def build_record(build: Build) -> BuildRecord:
    request = build.request
    return BuildRecord(
        build_id=record_id(build),
        provider=request.provider,
        spec=request.spec,
        repo_url=request.repo_url,
        ref=request.ref,
        image=request.image,
        node=build.node,
        status=build.status,
        reason=build.reason,
        started_at=build.created,
        finished_at=build.finished,
    )


@dataclass(frozen=True)
class _Record:
    record: BuildRecord
    #: Replayed lines follow: compare them with the stored tail this long.
    replay_tail: int


@dataclass(frozen=True)
class _Lines:
    build_id: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Flush:
    done: asyncio.Future[None]


@dataclass
class _Replay:
    stored_tail: list[str]
    buffer: list[str]


class BuildLogRecorder:
    """Persists every build the manager reports. ``start`` before use, ``close`` at the end."""

    def __init__(
        self,
        store: Store,
        *,
        replay_tail: int = 100,
        max_bytes: int = DEFAULT_MAX_LOG_BYTES,
        max_pending_lines: int = DEFAULT_MAX_PENDING_LINES,
        max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS,
        scrubber: Scrubber = DEFAULT_SCRUBBER,
    ) -> None:
        """``replay_tail`` is the manager's ``log_tail_lines``: how many lines an adopted
        build's watcher replays; ``max_bytes`` is ``build_log_max_bytes``."""
        if max_bytes < 4 * _MARKS_ROOM:
            raise ValueError(f"max_bytes must be at least {4 * _MARKS_ROOM}, not {max_bytes}")
        self._store = store
        self._max_bytes = max_bytes
        self._half = (max_bytes - _MARKS_ROOM) // 2
        self._capped: dict[str, _Capped] = {}
        self._scrubber = scrubber
        self._replay_tail = replay_tail
        # Records always queue (few and small); lines queue up to max_pending_lines.
        self._queue: deque[_Record | _Lines | _Flush | None] = deque()
        self._wake = asyncio.Event()
        self._pending_lines = 0
        self._pending_chars = 0
        self._max_pending_lines = max_pending_lines
        self._max_pending_chars = max_pending_chars
        self._writer: asyncio.Task[None] | None = None
        #: service name -> record id of the run being watched
        self._current: dict[str, str] = {}
        self._replays: dict[str, _Replay] = {}
        self.dropped_lines = 0
        self.failed_writes = 0

    def callbacks(self) -> dict[str, Callable[..., object]]:
        """Keyword arguments for :class:`BuildManager`."""
        return {
            "on_started": self.started,
            "on_log_lines": self.log_lines,
            "on_finished": self.finished,
        }

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="build-log-writer")

    async def close(self, flush_seconds: float = 10) -> None:
        """Write what is queued (for at most ``flush_seconds``), then stop."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        self._queue.append(None)
        self._wake.set()
        try:
            async with asyncio.timeout(flush_seconds):
                await asyncio.shield(writer)
        except TimeoutError:
            log.warning("build log writer did not finish in %s s; lines lost", flush_seconds)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def flush(self) -> None:
        """Wait until everything reported before this call is in the store (or failed)."""
        if self._writer is None:
            raise RuntimeError("the build log recorder is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(_Flush(done))
        await done

    # -- the manager's callbacks (on the event loop, never blocking) -------------------------

    def started(self, build: Build) -> None:
        build_id = record_id(build)
        first_sight = self._current.get(build.name) != build_id
        self._current[build.name] = build_id
        replay = self._replay_tail if build.adopted and first_sight else 0
        self._put(_Record(build_record(build), replay))

    def log_lines(self, service_name: str, lines: Sequence[str]) -> None:
        build_id = self._current.get(service_name)
        if build_id is None:  # a build this recorder was never told about
            return
        chars = sum(map(len, lines))
        if (
            self._pending_lines + len(lines) > self._max_pending_lines
            or self._pending_chars + chars > self._max_pending_chars
        ):
            if self.dropped_lines == 0:
                log.warning("the store is falling behind: dropping build log lines")
            self.dropped_lines += len(lines)
            return
        self._pending_lines += len(lines)
        self._pending_chars += chars
        self._put(_Lines(build_id, tuple(lines)))

    def finished(self, build: Build) -> None:
        self._put(_Record(build_record(build), 0))
        if self._current.get(build.name) == record_id(build):
            del self._current[build.name]

    def _put(self, item: _Record | _Lines | _Flush) -> None:
        self._queue.append(item)
        self._wake.set()

    # -- the writer ----------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            if item is None:
                return
            if isinstance(item, _Flush):
                if not item.done.done():
                    item.done.set_result(None)
                continue
            if isinstance(item, _Lines):
                self._pending_lines -= len(item.lines)
                self._pending_chars -= sum(map(len, item.lines))
            try:
                if isinstance(item, _Record):
                    await self._write_record(item)
                else:
                    await self._write_lines(item)
            except Exception:
                # The store's trouble is logged here and nowhere else: builds go on.
                self.failed_writes += 1
                log.exception("could not persist build log data")

    async def _write_record(self, item: _Record) -> None:
        build_id = item.record.build_id
        existing = await self._store.get_build(build_id) if item.replay_tail else None
        record = item.record
        if record.reason:
            record = replace(record, reason=self._scrubber.scrub(record.reason))
        await self._store.record_build(record)
        if item.replay_tail and existing is not None:
            # Read whole once: it is within the cap, and its size goes on counting against it.
            stored = await self._store.build_log(build_id)
            self._capped[build_id] = _Capped(
                stored=sum(map(line_bytes, stored)),
                cut=any(line.startswith(CUT_MARK) for line in stored),
            )
            if stored:
                self._replays[build_id] = _Replay(stored[-item.replay_tail :], [])
        if record.finished_at is not None:
            pending = self._replays.pop(build_id, None)
            if pending is not None and pending.buffer:
                await self._append(build_id, _new_part(pending))
            capped = self._capped.pop(build_id, None)
            if capped is not None and capped.cut:
                await self._store.append_build_log(build_id, self._ending(capped))

    async def _write_lines(self, item: _Lines) -> None:
        # Scrubbed before the replay is compared with the stored tail, which was scrubbed too.
        lines: Sequence[str] = [self._scrubber.scrub(line) for line in item.lines]
        replay = self._replays.get(item.build_id)
        if replay is not None:
            replay.buffer.extend(lines)
            if len(replay.buffer) < len(replay.stored_tail):
                return  # the replay has not reached the end of what we stored yet
            del self._replays[item.build_id]
            lines = _new_part(replay)
        await self._append(item.build_id, lines)

    async def _append(self, build_id: str, lines: Sequence[str]) -> None:
        """Store ``lines`` within the build's head budget; keep the rest in its tail ring."""
        capped = self._capped.setdefault(build_id, _Capped())
        stored: list[str] = []
        for line in lines:
            size = line_bytes(line)
            if not capped.cut and capped.stored + size <= self._half:
                capped.stored += size
                stored.append(line)
                continue
            if not capped.cut:
                capped.cut = True
                stored.append(
                    f"{CUT_MARK} it passed build_log_max_bytes ({self._max_bytes} bytes); "
                    "the lines after this point are left out, but for the last ones, which "
                    "follow when the build ends]"
                )
            self._keep_in_tail(capped, _keep_end(line, self._half))
        if stored:
            await self._store.append_build_log(build_id, stored)

    def _keep_in_tail(self, capped: _Capped, line: str) -> None:
        capped.tail.append(line)
        capped.tail_bytes += line_bytes(line)
        while capped.tail_bytes > self._half:
            gone = capped.tail.popleft()
            capped.tail_bytes -= line_bytes(gone)
            capped.left_out += 1
            capped.left_out_bytes += line_bytes(gone)

    @staticmethod
    def _ending(capped: _Capped) -> list[str]:
        """The line counting what was left out, then the tail ring."""
        mark = (
            f"[build log: {capped.left_out} lines ({capped.left_out_bytes} bytes) were left out "
            f"here; the last {len(capped.tail)} lines follow]"
        )
        return [mark, *capped.tail]


def _new_part(replay: _Replay) -> list[str]:
    """The replayed lines minus the longest start that repeats the end of the stored log."""
    stored, incoming = replay.stored_tail, replay.buffer
    for overlap in range(min(len(stored), len(incoming)), 0, -1):
        if stored[-overlap:] == incoming[:overlap]:
            return incoming[overlap:]
    return incoming


# -- reading back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistedLog:
    record: BuildRecord
    lines: list[str]


async def read_build_log(
    store: Store,
    *,
    service_name: str | None = None,
    image: str | None = None,
    tail: int | None = None,
) -> PersistedLog | None:
    """The latest recorded run of a build, by its service name or its image, with its log
    (all of it, or the last ``tail`` lines); None if no run was recorded."""
    if (service_name is None) == (image is None):
        raise ValueError("give exactly one of service_name and image")
    if service_name is not None:
        records = await store.builds_with_id_prefix(f"{service_name}@")
    else:
        assert image is not None
        records = await store.builds_for_image(image)
    if not records:
        return None
    record = records[0]
    return PersistedLog(record, await store.build_log(record.build_id, tail=tail))


async def prune_build_logs(
    store: Store, *, keep_for: float, clock: Callable[[], float] = time.time
) -> int:
    """Delete records and logs of builds that finished more than ``keep_for`` seconds ago."""
    return await store.prune(clock() - keep_for)


def recording_manager(
    swarm: SwarmClient, settings: BuildSettings, recorder: BuildLogRecorder
) -> BuildManager:
    """A build manager whose builds ``recorder`` persists."""
    return BuildManager(
        swarm,
        settings,
        on_started=recorder.started,
        on_log_lines=recorder.log_lines,
        on_finished=recorder.finished,
    )
