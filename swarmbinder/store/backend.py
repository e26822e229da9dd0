"""The seam between the store's API and a database: a handful of async calls.

:class:`~swarmbinder.store.api.Store` writes every query once, with ``?`` parameters and the
:class:`~swarmbinder.store.schema.Dialect`'s spellings, against :class:`Tx`; a backend
(:mod:`.sqlite`, :mod:`.postgres`) runs them. A backend also turns its driver's errors into
the store's: :class:`~swarmbinder.store.records.StoreError` for a query that failed,
:class:`~swarmbinder.store.records.StoreUnavailable` (503) for a database that did not answer.
Errors raised by the caller's own code inside a transaction (a quota refusal, a ``KeyError``)
roll it back and pass through unchanged.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .schema import Dialect

Row = tuple[Any, ...]


class Tx(Protocol):
    """Statements on one connection: inside a transaction, or each on its own."""

    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; the number of rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None: ...

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: object) -> Row | None: ...


class Backend(abc.ABC):
    """One database. ``where`` names it in errors and logs: a path, or ``store_url``."""

    dialect: Dialect
    where: str

    @abc.abstractmethod
    def transaction(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back when it raises.
        ``what`` names the operation in errors ("add ban failed: ...")."""

    @abc.abstractmethod
    def session(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """Statements outside a transaction: reads, and single-statement writes (each one
        commits by itself)."""

    async def wait_for_change(self, seconds: float) -> None:
        """Return when another process may have changed the bans or quotas, or after
        ``seconds``, whichever comes first. The default only waits: the caller polls."""
        await asyncio.sleep(seconds)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connections; the store has already finished its calls."""
