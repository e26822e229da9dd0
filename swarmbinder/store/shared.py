"""The state Binder replicas share through the store: limits that must hold across them.

* **Rate-limit windows**: BinderHub's fixed window per client, counted by one atomic upsert, so
  two replicas counting the same client at the same moment both count.
* **Launch claims**: a launch in progress holds a place under the quotas until it ends (or its
  claim expires, a launch timeout later, if its replica died). A quota check counts the running
  servers plus the claims of other launches and adds its own claim in one transaction that
  every replica takes in turn (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``), so
  a quota of 1 lets one of many concurrent launches through, whichever replica they reach.
* Both are ``UNLOGGED`` tables in PostgreSQL: written by every request or launch, they are not
  worth a disk flush each (a crash of the database forgives the rate limits, as a restart of
  BinderHub does, and forgets the claims of the launches then in flight).
* **Image use**: when each image was last launched (batched by
  :class:`~swarmbinder.retention.ImageUse`), for the retention sweep.
* **Image nodes**: which nodes (by hostname) were last seen holding each image, so a launch
  can prefer one of them (:mod:`~swarmbinder.placement`).
* **The policy version**: bumped in the transaction of every ban or quota change (and, with
  PostgreSQL, announced by ``NOTIFY``); a replica that sees it move reloads its bans and quotas.

:class:`~swarmbinder.store.api.Store` inherits these methods; they use its plumbing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .backend import Backend, Tx
from .records import LaunchClaim, RateWindow
from .schema import Dialect

T = TypeVar("T")

#: Records that ``image`` was used at a time; never moves its time backwards.
TOUCH_IMAGE = (
    "INSERT INTO image_use (image, last_used) VALUES (?, ?)"
    " ON CONFLICT (image) DO UPDATE SET last_used = excluded.last_used"
    " WHERE image_use.last_used < excluded.last_used"
)

#: Records that ``node`` held ``image`` at a time; never moves its time backwards.
NOTE_IMAGE_NODE = (
    "INSERT INTO image_nodes (image, node, seen_at) VALUES (?, ?, ?)"
    " ON CONFLICT (image, node) DO UPDATE SET seen_at = excluded.seen_at"
    " WHERE image_nodes.seen_at < excluded.seen_at"
)

#: The advisory lock key of the launch budget: one quota check at a time, across replicas.
BUDGET_LOCK = 0x5B1D0002


class SharedState:
    _backend: Backend
    _dialect: Dialect
    _clock: Callable[[], float]

    async def _read(self, what: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _write(self, what: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        raise NotImplementedError

    # -- rate-limit windows ---------------------------------------------------------------------

    async def count_request(self, key: str, limit: int, period: int, now: int) -> RateWindow:
        """Count one request from ``key``: a new window of ``limit`` from ``now`` when it has
        none or its window ended before ``now``, else one fewer left in the current one."""
        # One statement, so it is atomic on its own: no transaction round trips per request.
        sql = (
            "INSERT INTO rate_windows (key, remaining, reset_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET"
            " remaining = CASE WHEN rate_windows.reset_at < ? THEN excluded.remaining"
            " ELSE rate_windows.remaining - 1 END,"
            " reset_at = CASE WHEN rate_windows.reset_at < ? THEN excluded.reset_at"
            " ELSE rate_windows.reset_at END"
            " RETURNING remaining, reset_at"
        )
        row = await self._read(
            "count request", lambda tx: tx.fetchone(sql, key, limit - 1, now + period, now, now)
        )
        assert row is not None
        return RateWindow(int(row[0]), int(row[1]))

    async def forget_rate_windows(self, before: int) -> int:
        """Delete the windows that ended before ``before``; how many went."""
        return await self._read(
            "forget rate windows",
            lambda tx: tx.execute("DELETE FROM rate_windows WHERE reset_at < ?", before),
        )

    # -- launch claims ----------------------------------------------------------------------------

    async def claim_launch(
        self, claim: LaunchClaim, *, listed_at: float, check: Callable[[int, int], None]
    ) -> None:
        """Add ``claim`` if ``check`` lets it through, atomically across replicas.

        ``check(claimed, claimed_matching)`` is given the number of other claims in force (all,
        and those for the same repository or image) and raises to refuse; nothing is written
        then. Claims released at or after ``listed_at`` (when the caller listed the running
        servers) still count: their servers may have started after the listing.
        """
        now = float(self._clock())
        lock = self._dialect.xact_lock

        async def op(tx: Tx) -> None:
            if lock is not None:
                await tx.execute(lock, BUDGET_LOCK)
            await tx.execute("DELETE FROM launch_claims WHERE expires_at <= ?", now)
            row = await tx.fetchone(
                "SELECT COUNT(*),"
                " COALESCE(SUM(CASE WHEN repo_key = ? OR image = ? THEN 1 ELSE 0 END), 0)"
                " FROM launch_claims WHERE released_at IS NULL OR released_at >= ?",
                claim.repo_key or None,
                claim.image or None,
                float(listed_at),
            )
            claimed, matching = (int(row[0]), int(row[1])) if row else (0, 0)
            check(claimed, matching)
            await tx.execute(
                "INSERT INTO launch_claims (reservation_id, repo_key, image, expires_at)"
                " VALUES (?, ?, ?, ?)",
                claim.reservation_id,
                claim.repo_key,
                claim.image,
                float(claim.expires_at),
            )

        await self._write("claim launch", op)

    async def release_launch(self, reservation_id: str) -> None:
        """The launch ended: its claim stops counting for checks that list servers from now on
        (it is deleted when it expires)."""
        now = float(self._clock())
        await self._read(
            "release launch",
            lambda tx: tx.execute(
                "UPDATE launch_claims SET released_at = ? WHERE reservation_id = ?",
                now,
                reservation_id,
            ),
        )

    async def launch_claims(self) -> int:
        """How many launch claims are held right now (unreleased and unexpired)."""
        now = float(self._clock())
        row = await self._read(
            "count launch claims",
            lambda tx: tx.fetchone(
                "SELECT COUNT(*) FROM launch_claims WHERE released_at IS NULL AND expires_at > ?",
                now,
            ),
        )
        return int(row[0]) if row else 0

    # -- the policy version -----------------------------------------------------------------------

    async def policy_version(self) -> int:
        """A number that changes whenever a ban or quota override does."""
        row = await self._read(
            "read policy version", lambda tx: tx.fetchone("SELECT version FROM policy_version")
        )
        return int(row[0]) if row else 0

    async def wait_for_change(self, seconds: float) -> None:
        """Return soon after another replica changes the bans or quotas (PostgreSQL), or after
        ``seconds``; then compare :meth:`policy_version`."""
        await self._backend.wait_for_change(seconds)

    async def _policy_changed(self, tx: Tx) -> None:
        await tx.execute("UPDATE policy_version SET version = version + 1")
        if self._dialect.notify_policy is not None:
            await tx.execute(self._dialect.notify_policy)

    # -- image use --------------------------------------------------------------------------------

    async def touch_images(self, images: Sequence[str], at: float) -> None:
        """Record ``images`` as used at ``at`` (an earlier time never replaces a later one)."""

        async def op(tx: Tx) -> None:
            await tx.executemany(TOUCH_IMAGE, [(image, float(at)) for image in images])

        if images:
            await self._write("touch images", op)

    async def images_last_used(self) -> dict[str, float]:
        """Every image with a recorded use, and when it was last used."""
        rows = await self._read(
            "images last used", lambda tx: tx.fetch("SELECT image, last_used FROM image_use")
        )
        return {str(image): float(at) for image, at in rows}

    async def forget_images(self, images: Sequence[str]) -> None:
        """Drop the records of ``images`` (deleted from the registry)."""

        async def op(tx: Tx) -> None:
            rows = [(image,) for image in images]
            await tx.executemany("DELETE FROM image_use WHERE image = ?", rows)
            await tx.executemany("DELETE FROM image_nodes WHERE image = ?", rows)

        if images:
            await self._write("forget images", op)

    # -- image nodes ------------------------------------------------------------------------------

    async def note_image_nodes(self, seen: Sequence[tuple[str, str]], at: float) -> None:
        """Record that each ``(image, node hostname)`` of ``seen`` held the image at ``at``."""

        async def op(tx: Tx) -> None:
            await tx.executemany(NOTE_IMAGE_NODE, [(i, n, float(at)) for i, n in seen])

        if seen:
            await self._write("note image nodes", op)

    async def image_nodes(self, image: str) -> list[str]:
        """The hostnames of the nodes seen holding ``image``, the most recently seen first."""
        rows = await self._read(
            "image nodes",
            lambda tx: tx.fetch(
                "SELECT node FROM image_nodes WHERE image = ? ORDER BY seen_at DESC, node",
                image,
            ),
        )
        return [str(node) for (node,) in rows]

    async def forget_image_nodes(self, seen_before: float) -> int:
        """Drop what was last seen before ``seen_before`` (a node prunes its images too)."""
        return await self._write(
            "forget image nodes",
            lambda tx: tx.execute("DELETE FROM image_nodes WHERE seen_at < ?", float(seen_before)),
        )
