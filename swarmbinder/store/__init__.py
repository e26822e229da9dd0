"""swarmbinder's own state, in SQLite (the embedded default) or PostgreSQL (for replicas).

==============  ===================================================================
``api``         :class:`Store`: builds, logs, bans, quota overrides, the audit log
``shared``      what replicas share: rate-limit windows, launch claims, policy version
``records``     the frozen records the store returns, and its errors
``schema``      one numbered list of migrations for both databases, and their dialects
``backend``     the seam a database sits behind
``sqlite``      the embedded backend (one file, one replica)
``postgres``    the shared backend (asyncpg; every replica on one database)
==============  ===================================================================

:func:`open_store` chooses by ``store_url``: unset, the SQLite file ``store_path``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.sections import ServerConfig
from .api import Store, migrate
from .records import (
    BAN_KINDS,
    BUILD_STATUSES,
    QUOTA_SCOPES,
    SYSTEM_ACTOR,
    AuditEntry,
    BanKind,
    BanRecord,
    BuildRecord,
    LaunchClaim,
    QuotaOverride,
    QuotaScope,
    RateWindow,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from .sqlite import MEMORY

__all__ = [
    "BAN_KINDS",
    "BUILD_STATUSES",
    "MEMORY",
    "QUOTA_SCOPES",
    "SYSTEM_ACTOR",
    "AuditEntry",
    "BanKind",
    "BanRecord",
    "BuildRecord",
    "LaunchClaim",
    "QuotaOverride",
    "QuotaScope",
    "RateWindow",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "migrate",
    "open_store",
]


async def open_store(
    server: ServerConfig,
    *,
    clock: Callable[[], float] = time.time,
    wait_seconds: float | None = None,
) -> Store:
    """The store the config names: PostgreSQL at ``store_url`` when it is set (waiting up to
    ``wait_seconds`` for a server that is starting), else the SQLite file ``store_path``."""
    if server.store_url:
        return await Store.connect_postgres(
            server.store_url, server.store_password, clock=clock, wait_seconds=wait_seconds
        )
    return await Store.open(server.store_path, clock=clock)
