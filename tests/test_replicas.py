"""Several Binder replicas on one store: the limits hold across them.

Each "replica" here is a store instance of its own on one database, with its own bans, quotas
and rate limiter, as two processes would have: on a real PostgreSQL server (``pg_support``),
and on one SQLite file (two processes on one machine). ``test_replica_apps`` does the same with
whole apps over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pg_support import PASSWORD

from swarmbinder.errors import QuotaExceeded, SpecBanned
from swarmbinder.policy.bans import BanList
from swarmbinder.policy.canonical import RepoIdentity
from swarmbinder.policy.quotas import Quotas
from swarmbinder.policy.ratelimit import RateLimiter, RateLimitExceeded, StoreWindows
from swarmbinder.policy.sync import follow_changes
from swarmbinder.store import Store

EVIL = RepoIdentity("gh", "evil/repo/HEAD", "https://github.com/evil/repo")
REPO_URL = "https://github.com/org/popular"
IMAGE = "registry.example/binder-org-popular:abc123"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An SQLite file's path, or a fresh PostgreSQL database's URL (made outside the loop)."""
    if request.param == "sqlite":
        return str(tmp_path / "shared.sqlite")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def stores(database: str) -> AsyncIterator[list[Store]]:
    """Two replicas' stores on one database."""
    opened: list[Store] = []
    for _ in range(2):
        if database.startswith("postgresql://"):
            opened.append(await Store.connect_postgres(database, PASSWORD, wait_seconds=0))
        else:
            opened.append(await Store.open(database))
    yield opened
    for store in opened:
        await store.close()


@pytest.fixture
async def following(stores: list[Store]) -> AsyncIterator[list[tuple[BanList, Quotas]]]:
    """Each replica's bans and quotas, kept current by its own policy-sync task."""
    replicas = []
    tasks = []
    for store in stores:
        bans, quotas = BanList(store=store), Quotas(store=store, budget=store)
        await bans.load()
        await quotas.load()
        replicas.append((bans, quotas))
        tasks.append(asyncio.create_task(follow_changes(store, [quotas.load, bans.load])))
    yield replicas
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _banned(bans: BanList) -> bool:
    try:
        bans.check_spec(EVIL)
    except SpecBanned:
        return True
    return False


async def _until(condition: Any, within: float) -> float:
    """Seconds until ``condition()`` holds; fails the test past ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_ban_set_through_one_replica_is_enforced_by_the_other_within_a_second(
    following: list[tuple[BanList, Quotas]],
) -> None:
    (a_bans, _), (b_bans, _) = following
    assert not _banned(b_bans)
    entry = await a_bans.add("spec", "^evil/.*", "mining", "alice")
    assert _banned(a_bans)
    await _until(lambda: _banned(b_bans), within=1.0)

    assert entry.ban_id is not None
    await b_bans.remove(entry.ban_id, "bob")
    await _until(lambda: not _banned(a_bans), within=1.0)


async def test_a_quota_set_through_one_replica_is_enforced_by_the_other_within_a_second(
    following: list[tuple[BanList, Quotas]],
) -> None:
    (_, a_quotas), (_, b_quotas) = following
    await a_quotas.set_repo_quota("^org/popular", 2, "alice")
    spec = RepoIdentity("gh", "org/popular/HEAD", REPO_URL)
    await _until(lambda: b_quotas.quota_for(spec).quota == 2, within=1.0)
    await a_quotas.set_pod_quota(0, "alice")
    await _until(lambda: b_quotas.pod_quota == 0, within=1.0)
    await b_quotas.clear_pod_quota("bob")
    await _until(lambda: a_quotas.pod_quota is None, within=1.0)


@dataclass(frozen=True)
class _Server:
    repo_url: str
    image: str


@dataclass(frozen=True)
class _Build:
    provider: str
    spec: str
    repo_url: str
    image: str


@dataclass(frozen=True)
class _Resolved:
    build: _Build


async def test_a_quota_of_one_holds_under_concurrent_launches_through_both(
    stores: list[Store],
) -> None:
    running: list[_Server] = []

    async def list_servers() -> list[_Server]:
        await asyncio.sleep(0.005)  # the engine takes a moment to answer
        return list(running)

    gates = [
        Quotas(per_repo_quota=1, store=store, budget=store).launch_gate(list_servers)
        for store in stores
    ]
    # Two spellings of one repository: they share its quota.
    resolved = [
        _Resolved(_Build("gh", "org/popular/HEAD", REPO_URL, IMAGE)),
        _Resolved(_Build("git", "x/HEAD", "HTTPS://GitHub.com/org/popular.git", IMAGE + "x")),
    ]
    release = asyncio.Event()

    async def launch(i: int) -> str:
        try:
            async with gates[i % 2](resolved[i % 2]):
                await release.wait()
                running.append(_Server(REPO_URL, IMAGE))  # the launch ends: its server runs
            return "launched"
        except QuotaExceeded as refusal:
            assert refusal.scope == "repo_quota"
            return "refused"

    tasks = [asyncio.create_task(launch(i)) for i in range(12)]
    await _until(lambda: sum(t.done() for t in tasks) == 11, within=20)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("launched") == 1

    # The server that launched now counts through either replica...
    for i in range(2):
        with pytest.raises(QuotaExceeded):
            async with gates[i](resolved[i]):
                pass
    # ...and once it stops, a launch fits again: no claim was left behind.
    running.clear()
    async with gates[1](resolved[1]):
        assert await stores[0].launch_claims() == 1
    assert await stores[0].launch_claims() == 0


async def test_a_claim_left_by_a_dead_replica_expires(stores: list[Store]) -> None:
    async def no_servers() -> list[_Server]:
        return []

    resolved = _Resolved(_Build("gh", "org/popular/HEAD", REPO_URL, IMAGE))
    dying, alive = (Quotas(pod_quota=1, store=s, budget=s).launch_gate(no_servers) for s in stores)
    stuck = dying(resolved)
    await stuck.__aenter__()  # the replica dies mid-launch: nothing releases its claim
    try:
        with pytest.raises(QuotaExceeded) as refused:
            async with alive(resolved):
                pass
        assert refused.value.scope == "pod_quota"
        # A launch timeout later (played here by moving the claim's expiry to the past)...
        await stores[0]._write(
            "expire claims",
            lambda tx: tx.execute("UPDATE launch_claims SET expires_at = ?", time.time() - 1),
        )
        # ...the place is free again.
        async with alive(resolved):
            pass
    finally:
        await stuck.__aexit__(None, None, None)


async def test_a_rate_limit_of_ten_holds_across_both(stores: list[Store]) -> None:
    limiters = [RateLimiter(10, 3600, windows=StoreWindows(store)) for store in stores]

    async def request(i: int) -> int | None:
        try:
            status = await limiters[i % 2].check("2001:db8::1")
        except RateLimitExceeded as refusal:
            assert refusal.headers()["X-RateLimit-Limit"] == "10"
            return None
        assert status is not None
        return status.remaining

    results = await asyncio.gather(*(request(i) for i in range(25)))
    allowed = sorted((r for r in results if r is not None), reverse=True)
    assert allowed == list(range(9, -1, -1))
    # Another client has its own window at either replica.
    status = await limiters[1].check("198.51.100.1")
    assert status is not None and status.remaining == 9
