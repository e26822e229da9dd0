"""The store's API: state that must survive a restart and has no place in Swarm labels.

It keeps build records and their logs (BinderHub cannot show the log of a finished build; we
can), the bans and quota overrides an admin sets at run time, an audit log of those changes,
and what replicas must share (:mod:`.shared`: rate-limit windows, launch claims, the version
of the bans and quotas). Every query is written here once; a backend runs it on SQLite
(:mod:`.sqlite`, the embedded default) or PostgreSQL (:mod:`.postgres`, for replicas).

* **Every write is one transaction.** A ban or quota change and its audit row commit together
  or not at all.
* **A call runs to completion once made.** Its awaiting coroutine may be cancelled (a client
  went away); the call itself goes on, so a write is either committed or rolled back, never
  left half done, and :meth:`Store.close` waits for the calls already made.
* **Forward-only migrations** (:mod:`.schema`), run as the database is opened. A database
  written by a newer swarmbinder is refused, and nothing is written to it.

Failures leave as :class:`~.records.StoreError` naming the file or ``store_url``
(:class:`~.records.StoreUnavailable`, 503, when the database server does not answer). Caller
bugs (an unknown ban kind, a negative limit) raise :class:`ValueError`; logging to a build that
has no record raises :class:`KeyError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from .backend import Backend, Tx
from .records import (
    BAN_KINDS,
    BUILD_STATUSES,
    SYSTEM_ACTOR,
    AuditEntry,
    BanKind,
    BanRecord,
    BuildRecord,
    QuotaOverride,
    QuotaScope,
    StoreClosed,
    StoreError,
    ban_detail,
    build_record,
    check_count,
    check_quota_key,
)
from .schema import MIGRATIONS, SCHEMA_VERSION, render
from .shared import SharedState

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The advisory lock key two replicas migrating one database at once take in turn.
MIGRATION_LOCK = 0x5B1D0001

_BUILD_COLUMNS = (
    "build_id, provider, spec, repo_url, ref, image, node, status, reason, started_at, finished_at"
)
_BAN_COLUMNS = "ban_id, kind, pattern, reason, created_by, created_at"
_QUOTA_COLUMNS = "scope, key, quota, expires_at, created_by, created_at"
_AUDIT_COLUMNS = "entry_id, at, actor, action, detail"


class Store(SharedState):
    """Async access to the store. Make one with :meth:`open` (SQLite),
    :meth:`connect_postgres` or :func:`swarmbinder.store.open_store`; end with :meth:`close`."""

    def __init__(self, backend: Backend, clock: Callable[[], float]) -> None:
        self._backend = backend
        self._dialect = backend.dialect
        self._clock = clock
        self._calls: set[asyncio.Task[Any]] = set()
        self._close_future: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating it and its parent directories if needed) and migrate a SQLite file.

        ``":memory:"`` gives a private in-memory store (tests). ``clock`` stamps created and
        audit times.
        """
        from .sqlite import SqliteBackend

        return await cls._opened(await SqliteBackend.open(path), clock)

    @classmethod
    async def connect_postgres(
        cls,
        url: str,
        password: str | None,
        *,
        clock: Callable[[], float] = time.time,
        wait_seconds: float | None = None,
    ) -> Self:
        """Connect to and migrate the PostgreSQL database at ``url`` (no password in it).

        A server that does not answer yet is waited for up to ``wait_seconds``; a refusal
        (password, user, database) is a :class:`~swarmbinder.errors.ConfigError` at once.
        """
        from .postgres import DEFAULT_WAIT_SECONDS, PostgresBackend

        wait = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
        return await cls._opened(
            await PostgresBackend.connect(url, password, wait_seconds=wait), clock
        )

    @classmethod
    async def _opened(cls, backend: Backend, clock: Callable[[], float]) -> Self:
        try:
            await migrate(backend)
        except BaseException:
            await backend.close()
            raise
        return cls(backend, clock)

    @property
    def path(self) -> str:
        """The SQLite file, or ``store_url``: what errors name."""
        return self._backend.where

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect.name

    @property
    def closed(self) -> bool:
        return self._close_future is not None

    async def close(self) -> None:
        """Finish the calls already made, then close. Safe to call more than once."""
        if self._close_future is None:
            self._close_future = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_future)

    async def _close(self) -> None:
        if self._calls:
            await asyncio.wait(set(self._calls))
        await self._backend.close()

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
            str(rec.status),
            rec.reason,
            float(rec.started_at),
            None if rec.finished_at is None else float(rec.finished_at),
        )
        # ON CONFLICT DO UPDATE, never a replace: a replace deletes the row, and the foreign
        # key cascade would take the build's log with it.
        await self._write(
            "record build",
            lambda tx: tx.execute(
                f"INSERT INTO builds ({_BUILD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (build_id) DO UPDATE SET provider = excluded.provider,"
                " spec = excluded.spec, repo_url = excluded.repo_url, ref = excluded.ref,"
                " image = excluded.image, node = excluded.node, status = excluded.status,"
                " reason = excluded.reason, started_at = excluded.started_at,"
                " finished_at = excluded.finished_at",
                *values,
            ),
        )

    async def get_build(self, build_id: str) -> BuildRecord | None:
        row = await self._read(
            "get build",
            lambda tx: tx.fetchone(
                f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id = ?", build_id
            ),
        )
        return None if row is None else build_record(row)

    async def recent_builds(self, limit: int = 50) -> list[BuildRecord]:
        """The ``limit`` most recently started builds, newest first."""
        check_count("limit", limit)
        return await self._builds(
            "list builds", "ORDER BY started_at DESC, {build_order} DESC LIMIT ?", limit
        )

    async def builds_for_image(self, image: str) -> list[BuildRecord]:
        """Every recorded build of ``image``, newest first."""
        return await self._builds(
            "list builds for image",
            "WHERE image = ? ORDER BY started_at DESC, {build_order} DESC",
            image,
        )

    async def builds_with_id_prefix(self, prefix: str, limit: int = 50) -> list[BuildRecord]:
        """Builds whose id starts with ``prefix``, newest first (a range scan of the key)."""
        check_count("limit", limit)
        # A range rather than LIKE: no wildcards to escape, and it uses the primary key.
        return await self._builds(
            "list builds by id",
            "WHERE build_id COLLATE {bytewise} >= ? AND build_id COLLATE {bytewise} < ?"
            " ORDER BY started_at DESC, {build_order} DESC LIMIT ?",
            prefix,
            prefix + "\U0010ffff",
            limit,
        )

    async def _builds(self, what: str, clause: str, *args: object) -> list[BuildRecord]:
        sql = f"SELECT {_BUILD_COLUMNS} FROM builds " + render(clause, self._dialect)
        rows = await self._read(what, lambda tx: tx.fetch(sql, *args))
        return [build_record(row) for row in rows]

    async def append_build_log(self, build_id: str, lines: Sequence[str]) -> None:
        """Append ``lines`` to the build's log, in order, in one transaction.

        The build must have been recorded first (:class:`KeyError` otherwise).
        """
        if isinstance(lines, str):
            # A bare string is a Sequence[str] too, and would be stored one character a line.
            raise TypeError("lines must be a sequence of lines, not a str")
        if not lines:
            return

        # The build's row is locked: two appends to one log (from two replicas, or through
        # PostgreSQL's pool) take turns, so each sees the other's last line number.
        find = render("SELECT 1 FROM builds WHERE build_id = ?{for_update}", self._dialect)

        async def op(tx: Tx) -> None:
            if await tx.fetchone(find, build_id) is None:
                raise KeyError(f"no build record {build_id!r}: record it before its log")
            row = await tx.fetchone(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM build_logs WHERE build_id = ?", build_id
            )
            start = int(row[0]) if row else 0
            await tx.executemany(
                "INSERT INTO build_logs (build_id, seq, line) VALUES (?, ?, ?)",
                [(build_id, start + i, line) for i, line in enumerate(lines)],
            )

        await self._write("append build log", op)

    async def build_log(self, build_id: str, tail: int | None = None) -> list[str]:
        """The build's log lines in order: all of them, or the last ``tail``."""
        if tail is not None:
            check_count("tail", tail)
        if tail is None:
            sql = "SELECT line FROM build_logs WHERE build_id = ? ORDER BY seq"
            args: tuple[object, ...] = (build_id,)
        else:
            sql = (
                "SELECT line FROM (SELECT seq, line FROM build_logs WHERE build_id = ?"
                " ORDER BY seq DESC LIMIT ?) AS tail ORDER BY seq"
            )
            args = (build_id, tail)
        rows = await self._read("read build log", lambda tx: tx.fetch(sql, *args))
        return [line for (line,) in rows]

    async def prune(self, older_than: float) -> int:
        """Delete finished builds (and their logs) that finished before ``older_than``.

        Returns the number of build records deleted; unfinished builds are never pruned.
        """
        # The logs go by the foreign key's ON DELETE CASCADE.
        return await self._write(
            "prune builds",
            lambda tx: tx.execute(
                "DELETE FROM builds WHERE finished_at IS NOT NULL AND finished_at < ?",
                float(older_than),
            ),
        )

    # -- bans ---------------------------------------------------------------------------------

    async def add_ban(self, kind: BanKind, pattern: str, reason: str, actor: str) -> BanRecord:
        """Add a ban (and its audit row). The pattern is stored as given, not validated."""
        if kind not in BAN_KINDS:
            raise ValueError(f"unknown ban kind {kind!r}; expected one of {sorted(BAN_KINDS)}")
        now = float(self._clock())

        async def op(tx: Tx) -> BanRecord:
            row = await tx.fetchone(
                "INSERT INTO bans (kind, pattern, reason, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING ban_id",
                kind,
                pattern,
                reason,
                actor,
                now,
            )
            assert row is not None
            ban = BanRecord(int(row[0]), kind, pattern, reason, actor, now)
            await self._audit_row(tx, now, actor, "ban.add", ban_detail(ban))
            await self._policy_changed(tx)
            return ban

        return await self._write("add ban", op)

    async def remove_ban(self, ban_id: int, actor: str) -> bool:
        """Remove a ban; False (and no audit row) if there was none with that id."""
        now = float(self._clock())

        async def op(tx: Tx) -> bool:
            row = await tx.fetchone(f"SELECT {_BAN_COLUMNS} FROM bans WHERE ban_id = ?", ban_id)
            if row is None:
                return False
            await tx.execute("DELETE FROM bans WHERE ban_id = ?", ban_id)
            await self._audit_row(tx, now, actor, "ban.remove", ban_detail(BanRecord(*row)))
            await self._policy_changed(tx)
            return True

        return await self._write("remove ban", op)

    async def list_bans(self) -> list[BanRecord]:
        """Every ban, oldest first."""
        rows = await self._read(
            "list bans", lambda tx: tx.fetch(f"SELECT {_BAN_COLUMNS} FROM bans ORDER BY ban_id")
        )
        return [BanRecord(*row) for row in rows]

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
        check_quota_key(scope, key)
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
            raise ValueError(f"quota must be a non-negative int, not {quota!r}")
        now = float(self._clock())
        expires = None if expires_at is None else float(expires_at)
        override = QuotaOverride(scope, key, quota, expires_at, actor, now)

        async def op(tx: Tx) -> QuotaOverride:
            previous = await tx.fetchone(
                "SELECT quota FROM quotas WHERE scope = ? AND key = ?", scope, key
            )
            await tx.execute(
                f"INSERT INTO quotas ({_QUOTA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (scope, key) DO UPDATE SET quota = excluded.quota,"
                " expires_at = excluded.expires_at, created_by = excluded.created_by,"
                " created_at = excluded.created_at",
                scope,
                key,
                quota,
                expires,
                actor,
                now,
            )
            detail = {
                "scope": scope,
                "key": key,
                "quota": quota,
                "expires_at": expires_at,
                "previous": None if previous is None else previous[0],
            }
            await self._audit_row(tx, now, actor, "quota.set", detail)
            await self._policy_changed(tx)
            return override

        return await self._write("set quota", op)

    async def clear_quota(self, scope: QuotaScope, key: str, actor: str) -> bool:
        """Remove the override for ``(scope, key)``; False (no audit row) if there was none."""
        check_quota_key(scope, key)
        now = float(self._clock())

        async def op(tx: Tx) -> bool:
            row = await tx.fetchone(
                "SELECT quota, expires_at FROM quotas WHERE scope = ? AND key = ?", scope, key
            )
            if row is None:
                return False
            await tx.execute("DELETE FROM quotas WHERE scope = ? AND key = ?", scope, key)
            detail = {"scope": scope, "key": key, "quota": row[0], "expires_at": row[1]}
            await self._audit_row(tx, now, actor, "quota.clear", detail)
            await self._policy_changed(tx)
            return True

        return await self._write("clear quota", op)

    async def list_quotas(self, now: float) -> list[QuotaOverride]:
        """The overrides in force at ``now``; expired ones are deleted (and audited) on the way."""
        audit_at = float(self._clock())
        now = float(now)
        expired_sql = (
            f"SELECT {_QUOTA_COLUMNS} FROM quotas WHERE expires_at IS NOT NULL AND expires_at <= ?"
        )
        listing = render(
            f"SELECT {_QUOTA_COLUMNS} FROM quotas ORDER BY scope, key COLLATE {{bytewise}}",
            self._dialect,
        )

        async def expire(tx: Tx) -> None:
            for row in await tx.fetch(expired_sql, now):
                gone = QuotaOverride(*row)
                await tx.execute(
                    "DELETE FROM quotas WHERE scope = ? AND key = ?", gone.scope, gone.key
                )
                detail = {
                    "scope": gone.scope,
                    "key": gone.key,
                    "quota": gone.quota,
                    "expires_at": gone.expires_at,
                    "set_by": gone.created_by,
                }
                await self._audit_row(tx, audit_at, SYSTEM_ACTOR, "quota.expire", detail)
            await self._policy_changed(tx)

        # Check before taking the write lock: this runs on every reload, expiry rarely.
        if await self._read("list quotas", lambda tx: tx.fetchone(expired_sql, now)):
            await self._write("list quotas", expire)
        rows = await self._read("list quotas", lambda tx: tx.fetch(listing))
        return [QuotaOverride(*row) for row in rows]

    # -- audit --------------------------------------------------------------------------------

    async def add_audit(self, actor: str, action: str, detail: Mapping[str, Any]) -> AuditEntry:
        """Record an admin action the store does not make itself (e.g. cancelling a build)."""
        now = float(self._clock())
        # Encode here so a detail that is not JSON fails in the caller, before any write.
        encoded = _encode_detail(detail)

        async def op(tx: Tx) -> int:
            return await self._audit_encoded(tx, now, actor, action, encoded)

        entry_id = await self._write("add audit entry", op)
        return AuditEntry(entry_id, now, actor, action, json.loads(encoded))

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The ``limit`` most recent audit entries, newest first."""
        check_count("limit", limit)
        rows = await self._read(
            "read audit log",
            lambda tx: tx.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY entry_id DESC LIMIT ?", limit
            ),
        )
        return [
            AuditEntry(entry_id, at, actor, action, json.loads(detail))
            for entry_id, at, actor, action, detail in rows
        ]

    async def _audit_row(
        self, tx: Tx, at: float, actor: str, action: str, detail: Mapping[str, Any]
    ) -> int:
        return await self._audit_encoded(tx, at, actor, action, _encode_detail(detail))

    async def _audit_encoded(self, tx: Tx, at: float, actor: str, action: str, detail: str) -> int:
        row = await tx.fetchone(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?) RETURNING entry_id",
            at,
            actor,
            action,
            detail,
        )
        assert row is not None
        return int(row[0])

    # -- plumbing -----------------------------------------------------------------------------

    async def _read(self, what: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self._backend.session(what) as tx:
                return await op(tx)

        return await self._call(run())

    async def _write(self, what: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self._backend.transaction(what) as tx:
                return await op(tx)

        return await self._call(run())

    async def _call(self, work: Coroutine[Any, Any, T]) -> T:
        # The task starts before the first await: calls reach the database in the order they
        # were made. Shielded: a cancelled caller does not cut a transaction short.
        if self._close_future is not None:
            work.close()
            raise StoreClosed(self.path)
        task = asyncio.ensure_future(work)
        self._calls.add(task)
        task.add_done_callback(_forget(self._calls))
        return await asyncio.shield(task)


def _forget(calls: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        calls.discard(task)
        # Retrieved here so an error nobody awaited (the caller was cancelled) is not
        # reported as "never retrieved"; the caller that did await it has it already.
        if not task.cancelled():
            task.exception()

    return done


async def migrate(backend: Backend) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`, or refuse one that is newer."""
    dialect = backend.dialect
    async with backend.transaction("migrate") as tx:
        if dialect.xact_lock is not None:
            await tx.execute(dialect.xact_lock, MIGRATION_LOCK)
        # Read before writing anything: a newer database must come out untouched.
        if await tx.fetchone(dialect.table_exists, "schema_version") is None:
            await tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        row = await tx.fetchone("SELECT version FROM schema_version")
        if row is None:
            await tx.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                backend.where,
                f"schema version {version} is newer than this swarmbinder knows"
                f" ({SCHEMA_VERSION}); refusing to touch it",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target - 1]:
                await tx.execute(render(statement, dialect))
            await tx.execute("UPDATE schema_version SET version = ?", target)
            log.info("store %s: migrated schema to version %d", backend.where, target)


def _encode_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, allow_nan=False)
