"""The embedded store: state that must survive a restart and has no place in Swarm labels.

It keeps build records and their logs (BinderHub cannot show the log of a finished build; we
can), the bans and quota overrides an admin sets at run time, and an audit log of those
changes. Everything lives in one SQLite file.

Why it is shaped this way:

* **One worker thread owns the connection.** sqlite3 blocks, and the service is asyncio, so
  every call runs on a single-thread executor and is awaited with ``run_in_executor``. One
  thread means calls run in the order they were made (two appends to a build's log never
  swap) and no two transactions from this process contend for the lock. The connection is
  created inside that thread and keeps ``check_same_thread``, so a call that slipped onto the
  loop thread would fail loudly instead of blocking it.
* **WAL journal.** Readers (the admin CLI, a backup) do not block the writer, and a commit
  appends to the log instead of rewriting pages.
* **Every write is one ``BEGIN IMMEDIATE`` transaction.** A ban or quota change and its audit
  row commit together or not at all. IMMEDIATE takes the write lock up front, so another
  process holding it makes us wait (``busy_timeout``) rather than fail halfway.
* **Forward-only migrations** (:mod:`swarmbinder.storeschema`), run as the file is opened. A
  file written by a newer swarmbinder is refused rather than guessed at.

A call whose awaiting coroutine is cancelled still runs to completion on the worker thread:
a write that was submitted is either committed or rolled back, never left half done.

Failures opening or using the file leave as :class:`StoreError`, naming the path. Caller bugs
(an unknown ban kind, a negative limit) raise :class:`ValueError`; logging to a build that
has no record raises :class:`KeyError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

from swarmbinder.buildstatus import BuildStatus
from swarmbinder.errors import SwarmbinderError
from swarmbinder.storeschema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")

BanKind = Literal["spec", "network"]
QuotaScope = Literal["repo", "pod"]

BUILD_STATUSES: frozenset[str] = frozenset(BuildStatus)
BAN_KINDS: frozenset[str] = frozenset(get_args(BanKind))
QUOTA_SCOPES: frozenset[str] = frozenset(get_args(QuotaScope))

#: The actor named in audit rows the store writes on its own (quota overrides expiring).
SYSTEM_ACTOR = "system"

#: How long a write waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 5000

MEMORY = ":memory:"


class StoreError(SwarmbinderError):
    """The store's file could not be opened, read or written."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"store {path}: {problem}",
            user_message="swarmbinder could not read or write its state.",
        )
        self.path = path
        self.problem = problem


class StoreClosed(StoreError):
    """The store was used after :meth:`Store.close`."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "used after close")


@dataclass(frozen=True)
class BuildRecord:
    """One build, as the admin API shows it after its Swarm service is gone."""

    build_id: str
    provider: str
    spec: str
    repo_url: str
    ref: str
    image: str
    node: str
    status: BuildStatus
    reason: str
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class BanRecord:
    """A ban set at run time. ``pattern`` is a spec regex or a CIDR; the policy checks it."""

    ban_id: int
    kind: BanKind
    pattern: str
    reason: str
    created_by: str
    created_at: float


@dataclass(frozen=True)
class QuotaOverride:
    """A quota set at run time. ``key`` is a repo spec pattern, or ``""`` for the pod quota."""

    scope: QuotaScope
    key: str
    quota: int
    expires_at: float | None
    created_by: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    entry_id: int
    at: float
    actor: str
    action: str
    detail: Mapping[str, Any]


_BUILD_COLUMNS = (
    "build_id, provider, spec, repo_url, ref, image, node, status, reason, started_at, finished_at"
)
_BAN_COLUMNS = "ban_id, kind, pattern, reason, created_by, created_at"
_QUOTA_COLUMNS = "scope, key, quota, expires_at, created_by, created_at"
_AUDIT_COLUMNS = "entry_id, at, actor, action, detail"


class Store:
    """Async access to the store file. Make one with :meth:`open`; end with :meth:`close`."""

    def __init__(
        self,
        path: str,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        clock: Callable[[], float],
    ) -> None:
        self._path = path
        self._executor = executor
        # Touched only on the executor's thread.
        self._conn = conn
        self._clock = clock
        self._close_future: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating it and its parent directories if needed) and migrate the store.

        ``":memory:"`` gives a private in-memory store (tests). ``clock`` stamps created and
        audit times.
        """
        name = str(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmbinder-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, name)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(name, executor, conn, clock)

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._close_future is not None

    async def close(self) -> None:
        """Finish the calls already made, then close the file. Safe to call more than once."""
        if self._close_future is None:
            loop = asyncio.get_running_loop()
            self._close_future = loop.run_in_executor(self._executor, self._conn.close)
            # The worker thread exits once the queue, which ends with the close, is drained.
            self._executor.shutdown(wait=False)
        await asyncio.shield(self._close_future)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- builds -------------------------------------------------------------------------------

    async def record_build(self, rec: BuildRecord) -> None:
        """Insert or replace the record with ``rec.build_id``; its log is kept."""
        if rec.status not in BUILD_STATUSES:
            raise ValueError(f"unknown build status {rec.status!r}")
        values = (
            rec.build_id,
            rec.provider,
            rec.spec,
            rec.repo_url,
            rec.ref,
            rec.image,
            rec.node,
            rec.status,
            rec.reason,
            rec.started_at,
            rec.finished_at,
        )

        def op(conn: sqlite3.Connection) -> None:
            # ON CONFLICT DO UPDATE, never INSERT OR REPLACE: a replace deletes the row, and
            # the foreign key cascade would take the build's log with it.
            with _transaction(conn):
                conn.execute(
                    f"INSERT INTO builds ({_BUILD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (build_id) DO UPDATE SET provider = excluded.provider,"
                    " spec = excluded.spec, repo_url = excluded.repo_url, ref = excluded.ref,"
                    " image = excluded.image, node = excluded.node, status = excluded.status,"
                    " reason = excluded.reason, started_at = excluded.started_at,"
                    " finished_at = excluded.finished_at",
                    values,
                )

        await self._run("record build", op)

    async def get_build(self, build_id: str) -> BuildRecord | None:
        def op(conn: sqlite3.Connection) -> BuildRecord | None:
            row = conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id = ?", (build_id,)
            ).fetchone()
            return None if row is None else _build_record(row)

        return await self._run("get build", op)

    async def recent_builds(self, limit: int = 50) -> list[BuildRecord]:
        """The ``limit`` most recently started builds, newest first."""
        _check_count("limit", limit)

        def op(conn: sqlite3.Connection) -> list[BuildRecord]:
            rows = conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_build_record(row) for row in rows]

        return await self._run("list builds", op)

    async def builds_for_image(self, image: str) -> list[BuildRecord]:
        """Every recorded build of ``image``, newest first."""

        def op(conn: sqlite3.Connection) -> list[BuildRecord]:
            rows = conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds WHERE image = ?"
                " ORDER BY started_at DESC, rowid DESC",
                (image,),
            ).fetchall()
            return [_build_record(row) for row in rows]

        return await self._run("list builds for image", op)

    async def builds_with_id_prefix(self, prefix: str, limit: int = 50) -> list[BuildRecord]:
        """Builds whose id starts with ``prefix``, newest first (a range scan of the key)."""
        _check_count("limit", limit)

        def op(conn: sqlite3.Connection) -> list[BuildRecord]:
            # A range rather than LIKE: no wildcards to escape, and it uses the primary key.
            rows = conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id >= ? AND build_id < ?"
                " ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (prefix, prefix + "\U0010ffff", limit),
            ).fetchall()
            return [_build_record(row) for row in rows]

        return await self._run("list builds by id", op)

    async def append_build_log(self, build_id: str, lines: Sequence[str]) -> None:
        """Append ``lines`` to the build's log, in order, in one transaction.

        The build must have been recorded first (:class:`KeyError` otherwise).
        """
        if isinstance(lines, str):
            # A bare string is a Sequence[str] too, and would be stored one character a line.
            raise TypeError("lines must be a sequence of lines, not a str")
        if not lines:
            return

        def op(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if conn.execute("SELECT 1 FROM builds WHERE build_id = ?", (build_id,)).fetchone():
                    (start,) = conn.execute(
                        "SELECT COALESCE(MAX(seq) + 1, 0) FROM build_logs WHERE build_id = ?",
                        (build_id,),
                    ).fetchone()
                    conn.executemany(
                        "INSERT INTO build_logs (build_id, seq, line) VALUES (?, ?, ?)",
                        ((build_id, start + i, line) for i, line in enumerate(lines)),
                    )
                else:
                    raise KeyError(f"no build record {build_id!r}: record it before its log")

        await self._run("append build log", op)

    async def build_log(self, build_id: str, tail: int | None = None) -> list[str]:
        """The build's log lines in order: all of them, or the last ``tail``."""
        if tail is not None:
            _check_count("tail", tail)

        def op(conn: sqlite3.Connection) -> list[str]:
            if tail is None:
                rows = conn.execute(
                    "SELECT line FROM build_logs WHERE build_id = ? ORDER BY seq", (build_id,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT line FROM (SELECT seq, line FROM build_logs WHERE build_id = ?"
                    " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                    (build_id, tail),
                ).fetchall()
            return [line for (line,) in rows]

        return await self._run("read build log", op)

    async def prune(self, older_than: float) -> int:
        """Delete finished builds (and their logs) that finished before ``older_than``.

        Returns the number of build records deleted; unfinished builds are never pruned.
        """

        def op(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # The logs go by the foreign key's ON DELETE CASCADE.
                cur = conn.execute(
                    "DELETE FROM builds WHERE finished_at IS NOT NULL AND finished_at < ?",
                    (older_than,),
                )
                return cur.rowcount

        return await self._run("prune builds", op)

    # -- bans ---------------------------------------------------------------------------------

    async def add_ban(self, kind: BanKind, pattern: str, reason: str, actor: str) -> BanRecord:
        """Add a ban (and its audit row). The pattern is stored as given, not validated."""
        if kind not in BAN_KINDS:
            raise ValueError(f"unknown ban kind {kind!r}; expected one of {sorted(BAN_KINDS)}")
        now = self._clock()

        def op(conn: sqlite3.Connection) -> BanRecord:
            with _transaction(conn):
                cur = conn.execute(
                    "INSERT INTO bans (kind, pattern, reason, created_by, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (kind, pattern, reason, actor, now),
                )
                ban = BanRecord(_rowid(cur), kind, pattern, reason, actor, now)
                _insert_audit(conn, now, actor, "ban.add", _ban_detail(ban))
                return ban

        return await self._run("add ban", op)

    async def remove_ban(self, ban_id: int, actor: str) -> bool:
        """Remove a ban; False (and no audit row) if there was none with that id."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                row = conn.execute(
                    f"SELECT {_BAN_COLUMNS} FROM bans WHERE ban_id = ?", (ban_id,)
                ).fetchone()
                if row is None:
                    return False
                conn.execute("DELETE FROM bans WHERE ban_id = ?", (ban_id,))
                _insert_audit(conn, now, actor, "ban.remove", _ban_detail(BanRecord(*row)))
                return True

        return await self._run("remove ban", op)

    async def list_bans(self) -> list[BanRecord]:
        """Every ban, oldest first."""

        def op(conn: sqlite3.Connection) -> list[BanRecord]:
            rows = conn.execute(f"SELECT {_BAN_COLUMNS} FROM bans ORDER BY ban_id").fetchall()
            return [BanRecord(*row) for row in rows]

        return await self._run("list bans", op)

    # -- quota overrides ----------------------------------------------------------------------

    async def set_quota(
        self,
        scope: QuotaScope,
        key: str,
        quota: int,
        expires_at: float | None,
        actor: str,
    ) -> QuotaOverride:
        """Set (or replace) the override for ``(scope, key)``, with its audit row."""
        _check_quota_key(scope, key)
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
            raise ValueError(f"quota must be a non-negative int, not {quota!r}")
        now = self._clock()
        override = QuotaOverride(scope, key, quota, expires_at, actor, now)

        def op(conn: sqlite3.Connection) -> QuotaOverride:
            with _transaction(conn):
                previous = conn.execute(
                    "SELECT quota FROM quotas WHERE scope = ? AND key = ?", (scope, key)
                ).fetchone()
                conn.execute(
                    f"INSERT INTO quotas ({_QUOTA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (scope, key) DO UPDATE SET quota = excluded.quota,"
                    " expires_at = excluded.expires_at, created_by = excluded.created_by,"
                    " created_at = excluded.created_at",
                    (scope, key, quota, expires_at, actor, now),
                )
                detail = {
                    "scope": scope,
                    "key": key,
                    "quota": quota,
                    "expires_at": expires_at,
                    "previous": None if previous is None else previous[0],
                }
                _insert_audit(conn, now, actor, "quota.set", detail)
                return override

        return await self._run("set quota", op)

    async def clear_quota(self, scope: QuotaScope, key: str, actor: str) -> bool:
        """Remove the override for ``(scope, key)``; False (no audit row) if there was none."""
        _check_quota_key(scope, key)
        now = self._clock()

        def op(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT quota, expires_at FROM quotas WHERE scope = ? AND key = ?",
                    (scope, key),
                ).fetchone()
                if row is None:
                    return False
                conn.execute("DELETE FROM quotas WHERE scope = ? AND key = ?", (scope, key))
                detail = {"scope": scope, "key": key, "quota": row[0], "expires_at": row[1]}
                _insert_audit(conn, now, actor, "quota.clear", detail)
                return True

        return await self._run("clear quota", op)

    async def list_quotas(self, now: float) -> list[QuotaOverride]:
        """The overrides in force at ``now``; expired ones are deleted (and audited) on the way."""
        audit_at = self._clock()

        def op(conn: sqlite3.Connection) -> list[QuotaOverride]:
            expired_sql = (
                f"SELECT {_QUOTA_COLUMNS} FROM quotas"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?"
            )
            # Check before taking the write lock: this runs on every launch, expiry rarely.
            if conn.execute(expired_sql, (now,)).fetchone() is not None:
                with _transaction(conn):
                    for row in conn.execute(expired_sql, (now,)).fetchall():
                        gone = QuotaOverride(*row)
                        conn.execute(
                            "DELETE FROM quotas WHERE scope = ? AND key = ?",
                            (gone.scope, gone.key),
                        )
                        detail = {
                            "scope": gone.scope,
                            "key": gone.key,
                            "quota": gone.quota,
                            "expires_at": gone.expires_at,
                            "set_by": gone.created_by,
                        }
                        _insert_audit(conn, audit_at, SYSTEM_ACTOR, "quota.expire", detail)
            rows = conn.execute(
                f"SELECT {_QUOTA_COLUMNS} FROM quotas ORDER BY scope, key"
            ).fetchall()
            return [QuotaOverride(*row) for row in rows]

        return await self._run("list quotas", op)

    # -- audit --------------------------------------------------------------------------------

    async def add_audit(self, actor: str, action: str, detail: Mapping[str, Any]) -> AuditEntry:
        """Record an admin action the store does not make itself (e.g. cancelling a build)."""
        now = self._clock()
        # Encode here so a detail that is not JSON fails in the caller, before any write.
        encoded = _encode_detail(detail)

        def op(conn: sqlite3.Connection) -> AuditEntry:
            with _transaction(conn):
                entry_id = _insert_audit_encoded(conn, now, actor, action, encoded)
            return AuditEntry(entry_id, now, actor, action, json.loads(encoded))

        return await self._run("add audit entry", op)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The ``limit`` most recent audit entries, newest first."""
        _check_count("limit", limit)

        def op(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY entry_id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [
                AuditEntry(entry_id, at, actor, action, json.loads(detail))
                for entry_id, at, actor, action, detail in rows
            ]

        return await self._run("read audit log", op)

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, what: str, op: Callable[[sqlite3.Connection], T]) -> T:
        # Submit before the first await: calls reach the worker in the order they were made.
        if self._close_future is not None:
            raise StoreClosed(self._path)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, op, self._conn)
        except sqlite3.Error as exc:
            raise StoreError(self._path, f"{what} failed: {exc}") from exc


def _connect(path: str) -> sqlite3.Connection:
    """Open and migrate; runs on the store's worker thread, which then owns the connection."""
    conn: sqlite3.Connection | None = None
    try:
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; _transaction says where they are.
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if path != MEMORY and str(mode).lower() != "wal":
            log.warning("store %s: WAL journal unavailable, using %s", path, mode)
        _migrate(conn, path)
        return conn
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise StoreError(path, f"cannot open: {exc}") from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                path,
                f"schema version {version} is newer than this swarmbinder knows"
                f" ({SCHEMA_VERSION}); refusing to touch it",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (target,))
            log.info("store %s: migrated schema to version %d", path, target)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _insert_audit(
    conn: sqlite3.Connection, at: float, actor: str, action: str, detail: Mapping[str, Any]
) -> int:
    return _insert_audit_encoded(conn, at, actor, action, _encode_detail(detail))


def _insert_audit_encoded(
    conn: sqlite3.Connection, at: float, actor: str, action: str, detail: str
) -> int:
    cur = conn.execute(
        "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
        (at, actor, action, detail),
    )
    return _rowid(cur)


def _encode_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, allow_nan=False)


def _rowid(cur: sqlite3.Cursor) -> int:
    rowid = cur.lastrowid
    if rowid is None:  # pragma: no cover - an INSERT always sets it
        raise RuntimeError("INSERT did not report a rowid")
    return rowid


def _build_record(row: tuple[Any, ...]) -> BuildRecord:
    build_id, provider, spec, repo_url, ref, image, node, status, reason, started, finished = row
    return BuildRecord(
        build_id,
        provider,
        spec,
        repo_url,
        ref,
        image,
        node,
        BuildStatus(status),
        reason,
        started,
        finished,
    )


def _ban_detail(ban: BanRecord) -> dict[str, Any]:
    return {"ban_id": ban.ban_id, "kind": ban.kind, "pattern": ban.pattern, "reason": ban.reason}


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, not {value!r}")


def _check_quota_key(scope: str, key: str) -> None:
    if scope not in QUOTA_SCOPES:
        raise ValueError(f"unknown quota scope {scope!r}; expected one of {sorted(QUOTA_SCOPES)}")
    if scope == "pod" and key != "":
        raise ValueError(f"the pod quota has no key, got {key!r}")
    if scope == "repo" and not key:
        raise ValueError("a repo quota needs a spec pattern as its key")
