"""Bans and quotas changed through another replica reach this one within a second.

:class:`~swarmbinder.policy.bans.BanList` and :class:`~swarmbinder.policy.quotas.Quotas` answer
every request from memory; a change made here updates that memory at once, and one made through
another replica (or another process on the same SQLite file) arrives by :func:`follow_changes`:
the store bumps a version number in the transaction of every change, and this loop reloads the
bans and quotas when it sees the number move. With PostgreSQL the loop wakes on the change's
``NOTIFY``; otherwise, and when notifications are lost (the listening connection dropped in an
outage), the version is read every ``poll_seconds`` anyway. While the store does not answer
the last bans and quotas read stay in force, and the first read after it is back reloads them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import SwarmbinderError

log = logging.getLogger(__name__)

#: How often the version is read when no notification comes: the bound on how late a change
#: made through another replica is enforced here (plus one reload).
DEFAULT_POLL_SECONDS = 0.5


class VersionSource(Protocol):
    """The part of :class:`~swarmbinder.store.Store` that announces policy changes."""

    async def policy_version(self) -> int: ...

    async def wait_for_change(self, seconds: float) -> None: ...


async def follow_changes(
    store: VersionSource,
    reloads: list[Callable[[], Awaitable[None]]],
    *,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> None:
    """Run ``reloads`` (e.g. ``quotas.load`` and ``bans.load``) whenever the policy version
    moves; runs until cancelled."""
    seen: int | None = None
    failing = False
    while True:
        try:
            version = await store.policy_version()
            if version != seen:
                for reload in reloads:
                    await reload()
                if seen is not None:
                    log.info("bans and quotas reloaded (version %d)", version)
                seen = version
            if failing:
                log.info("the store answers again; bans and quotas are current")
                failing = False
        except SwarmbinderError as error:
            if not failing:
                log.warning("cannot read bans and quotas from the store: %s", error)
                failing = True
            # Reload everything on the first read that succeeds again.
            seen = None
        except Exception:
            # Never let one surprise end the following for good: this replica would enforce
            # stale bans until it restarts.
            log.exception("reloading bans and quotas failed unexpectedly; trying again")
            failing = True
            seen = None
        await store.wait_for_change(poll_seconds)
