"""The embedded backend: one SQLite file, for a Binder with a single replica.

Why it is shaped this way:

* **One worker thread owns the connection.** sqlite3 blocks, and the service is asyncio, so
  every statement runs on a single-thread executor and is awaited with ``run_in_executor``.
  The connection is created inside that thread and keeps ``check_same_thread``, so a call that
  slipped onto the loop thread would fail loudly instead of blocking it.
* **One asyncio lock around each transaction or session.** A transaction spans several
  statements, each its own trip to the thread; the lock keeps another caller's statements out
  of it. asyncio's lock is first come, first served, so calls still run in the order they were
  made (two appends to a build's log never swap).
* **WAL journal.** Readers (the admin CLI, a backup) do not block the writer, and a commit
  appends to the log instead of rewriting pages.
* **Every write transaction is ``BEGIN IMMEDIATE``.** It takes the write lock up front, so
  another process holding it makes us wait (``busy_timeout``) rather than fail halfway; it is
  also what makes a launch claim's check-then-insert atomic across processes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from .backend import Backend, Row, Tx
from .records import StoreError
from .schema import SQLITE

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a write waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 5000

MEMORY = ":memory:"


class _SqliteTx:
    def __init__(self, backend: SqliteBackend, what: str) -> None:
        self._backend = backend
        self._what = what

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._backend.call(self._what, fn)

    async def execute(self, sql: str, *args: object) -> int:
        return await self._call(lambda conn: conn.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        await self._call(lambda conn: conn.executemany(sql, rows))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self._call(lambda conn: conn.execute(sql, args).fetchall())

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await self._call(lambda conn: conn.execute(sql, args).fetchone())
        return row


class SqliteBackend(Backend):
    dialect = SQLITE

    def __init__(self, path: str, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.where = path
        self._executor = executor
        # Touched only on the executor's thread.
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> SqliteBackend:
        """Open the file (creating it and its parent directories); ``":memory:"`` gives a
        private in-memory database (tests)."""
        name = str(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmbinder-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, name)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(name, executor, conn)

    async def call(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, self._conn)
        except sqlite3.Error as exc:
            raise StoreError(self.where, f"{what} failed: {exc}") from exc

    @asynccontextmanager
    async def session(self, what: str) -> AsyncIterator[Tx]:
        async with self._lock:
            yield _SqliteTx(self, what)

    @asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[Tx]:
        async with self._lock:
            tx = _SqliteTx(self, what)
            await tx.execute("BEGIN IMMEDIATE")
            try:
                yield tx
            except BaseException:
                await self.call(what, _rollback)
                raise
            try:
                await tx.execute("COMMIT")
            except BaseException:
                await self.call(what, _rollback)
                raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(self._executor, self._conn.close)
        # The worker thread exits once the queue, which ends with the close, is drained.
        self._executor.shutdown(wait=False)
        await closing


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _connect(path: str) -> sqlite3.Connection:
    """Open; runs on the store's worker thread, which then owns the connection."""
    conn: sqlite3.Connection | None = None
    try:
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; transaction() says where they are.
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if path != MEMORY and str(mode).lower() != "wal":
            log.warning("store %s: WAL journal unavailable, using %s", path, mode)
        return conn
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise StoreError(path, f"cannot open: {exc}") from exc
