"""The shared backend: one PostgreSQL database for every Binder replica (``store_url``).

Through asyncpg, with a small connection pool. What the rest of swarmbinder can count on:

* **Bounded waits.** Connecting gives up after :data:`CONNECT_TIMEOUT` seconds and every query
  after :data:`COMMAND_TIMEOUT` (the pool's ``command_timeout``), so a database that hangs
  costs a request a few seconds and a clear error, never an event stream that never ends.
* **503, not 500, while the database is away.** A refused or broken connection, a server
  shutting down or starting up, a timeout: all become
  :class:`~swarmbinder.store.records.StoreUnavailable`. The pool drops dead connections and
  opens new ones on the next call, so service resumes by itself once the server is back.
* **Changes reach every replica.** Ban and quota changes ``NOTIFY`` :data:`POLICY_CHANNEL`;
  :meth:`PostgresBackend.wait_for_change` returns on the notification, and keeps one listening
  connection, opening it again after an outage (the caller polls too, so nothing is missed
  while it was down).
* **Start-up tells a wrong setting from a database that is not up yet.** A bad password, an
  unknown user or database is a :class:`~swarmbinder.errors.ConfigError` naming ``store_url``
  (one line, exit code 2); a server that does not answer yet is waited for, with a log line
  saying so, up to ``wait_seconds``.

The password is passed to asyncpg apart from the URL and appears in no message we write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from ..errors import ConfigError
from .backend import Backend, Row, Tx
from .records import StoreError, StoreUnavailable
from .schema import POLICY_CHANNEL, POSTGRES

log = logging.getLogger(__name__)

#: Seconds to open one connection, and for any one query.
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
#: Connections per replica: requests are short, and a replica rarely needs more at once.
POOL_MIN, POOL_MAX = 1, 10
#: How long start-up waits for a database that does not answer yet, and between attempts.
DEFAULT_WAIT_SECONDS = 60.0
RETRY_SECONDS = 2.0

#: SQLSTATEs that mean the settings are wrong, not that the server is away: invalid
#: authorization (28000: no such user, pg_hba refuses), bad password (28P01), no such database.
_REFUSED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


#: What asyncpg raises: the server's errors, the client's, and the transport's.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server did not answer, as opposed to refusing a query."""
    if isinstance(exc, ValueError):  # asyncpg's client-side DataError: a bad argument, our bug
        return False
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError  # "connection is closed", "pool is closing"
        | asyncpg.InternalClientError  # a connection left in a broken state by a cut
        | asyncpg.PostgresConnectionError
        # Shutting down, starting up, crashed, or a statement cancelled by the server.
        | asyncpg.OperatorInterventionError
        | asyncpg.TooManyConnectionsError,
    )


def translate(where: str, what: str, exc: BaseException) -> StoreError:
    """The store's error for a driver error ``exc`` raised while doing ``what``."""
    problem = f"{what} failed: {_describe(exc)}"
    if _unavailable(exc):
        return StoreUnavailable(where, problem)
    return StoreError(where, problem)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` parameters as PostgreSQL's ``$1``, ``$2``... (our SQL has no ``?`` in literals)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> int:
        status: str = await self._conn.execute(numbered(sql), *args)
        # "INSERT 0 3", "UPDATE 1", "SELECT 1": the count is the last word when there is one.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(numbered(sql), list(rows))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [tuple(record) for record in await self._conn.fetch(numbered(sql), *args)]

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        record = await self._conn.fetchrow(numbered(sql), *args)
        return None if record is None else tuple(record)


class PostgresBackend(Backend):
    dialect = POSTGRES

    def __init__(self, url: str, password: str | None, pool: Any) -> None:
        self.where = url
        self._url = url
        self._password = password
        self._pool = pool
        self._changed = asyncio.Event()
        self._listener: Any = None
        self._listener_retry_at = 0.0

    @classmethod
    async def connect(
        cls, url: str, password: str | None, *, wait_seconds: float = DEFAULT_WAIT_SECONDS
    ) -> PostgresBackend:
        """A pool on ``url``, once the server answers; see the module for what fails how."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                pool = await asyncpg.create_pool(
                    url,
                    password=password,
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                )
            except _REFUSED as exc:
                raise ConfigError(
                    "store_url", f"the database at {url} refused us: {_describe(exc)}"
                ) from None
            except Exception as exc:
                if not _unavailable(exc):
                    raise ConfigError(
                        "store_url", f"cannot use the database at {url}: {_describe(exc)}"
                    ) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConfigError(
                        "store_url",
                        f"no database answered at {url} within {wait_seconds:.0f} s"
                        f" ({_describe(exc)})",
                    ) from None
                pause = min(RETRY_SECONDS, left)
                log.warning(
                    "waiting for the database at store_url %s (%s); retrying in %.0f s",
                    url,
                    _describe(exc),
                    pause,
                )
                await asyncio.sleep(pause)
                continue
            return cls(url, password, pool)

    async def _acquire(self, what: str) -> Any:
        try:
            return await self._pool.acquire(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise translate(self.where, what, exc) from exc

    @asynccontextmanager
    async def session(self, what: str) -> AsyncIterator[Tx]:
        conn = await self._acquire(what)
        try:
            yield _PgTx(conn)
        except _DRIVER_ERRORS as exc:
            raise self._failed(conn, what, exc) from exc
        finally:
            await self._release(conn)

    @asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[Tx]:
        conn = await self._acquire(what)
        try:
            async with conn.transaction():
                yield _PgTx(conn)
        except _DRIVER_ERRORS as exc:
            raise self._failed(conn, what, exc) from exc
        finally:
            await self._release(conn)

    def _failed(self, conn: Any, what: str, exc: BaseException) -> StoreError:
        error = translate(self.where, what, exc)
        if isinstance(error, StoreUnavailable):
            # A connection cut mid-operation can come back to the pool in a state asyncpg
            # no longer knows ("another operation is in progress", MagicStack/asyncpg#1069):
            # close it here, and the pool opens a fresh one for the next call.
            with contextlib.suppress(asyncpg.InterfaceError):  # already given back by the pool
                conn.terminate()
        return error

    async def _release(self, conn: Any) -> None:
        try:
            await self._pool.release(conn, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # a broken connection: the pool replaces it
            log.debug("store %s: releasing a connection failed: %s", self.where, exc)

    # -- notifications ----------------------------------------------------------------------

    async def wait_for_change(self, seconds: float) -> None:
        await self._ensure_listener()
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass
        self._changed.clear()

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._listener_retry_at:
            return
        self._listener_retry_at = time.monotonic() + RETRY_SECONDS
        try:
            conn = await asyncpg.connect(
                self._url, password=self._password, timeout=CONNECT_TIMEOUT
            )
            await conn.add_listener(POLICY_CHANNEL, self._notified)
        except Exception as exc:
            log.debug("store %s: cannot listen for changes yet: %s", self.where, exc)
            return
        self._listener = conn
        # Whatever was notified while nobody listened: the caller reloads now.
        self._changed.set()
        log.debug("store %s: listening for ban and quota changes", self.where)

    def _notified(self, *args: object) -> None:
        self._changed.set()

    async def close(self) -> None:
        if self._listener is not None:
            try:
                await asyncio.wait_for(self._listener.close(), CONNECT_TIMEOUT)
            except Exception:
                self._listener.terminate()
        try:
            await asyncio.wait_for(self._pool.close(), COMMAND_TIMEOUT)
        except Exception:
            self._pool.terminate()
