#!/usr/bin/env python3
"""What admission costs per /build request with the store in PostgreSQL (on loopback).

Admission here is what every anonymous /build request pays before its stream starts: the
network ban check, the spec ban check, the quota lookup (all from memory) and the rate-limit
increment (one statement in the store, shared by every replica). A launch that a quota applies
to also claims a place under it and releases it at the end; that is measured on its own line.

Runs a throwaway PostgreSQL server from Debian's packages (``tests/pg_support.py``, as the
tests do), durable like a production server, so it needs no test ground. The target: admission
under 2 ms p50 per request.

    .venv/bin/python bench/admission.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import benchlib as b

sys.path.insert(0, str(b.ROOT / "tests"))

from pg_support import PASSWORD, remove_server, start_server  # noqa: E402

from swarmbinder.policy.bans import BanList  # noqa: E402
from swarmbinder.policy.canonical import RepoIdentity  # noqa: E402
from swarmbinder.policy.quotas import Quotas  # noqa: E402
from swarmbinder.policy.ratelimit import RateLimiter, StoreWindows  # noqa: E402
from swarmbinder.store import Store  # noqa: E402


@dataclass(frozen=True)
class _Build:
    provider: str
    spec: str
    repo_url: str
    image: str


@dataclass(frozen=True)
class _Resolved:
    build: _Build


async def timed(n: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    for i in range(50):  # warm the pool and the statement cache
        await one(-i - 1)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await one(i)
        samples.append(time.perf_counter() - started)
    return samples


async def measure(url: str, requests: int) -> dict[str, Any]:
    store = await Store.connect_postgres(url, PASSWORD, wait_seconds=10)
    try:
        bans = BanList(ban_networks={"192.0.2.0/24": "test"}, store=store)
        for i in range(20):
            await bans.add("spec", f"^banned-{i}/.*", "bench", "bench")
            await bans.add("network", f"198.18.{i}.0/24", "bench", "bench")
        quotas = Quotas(pod_quota=100_000, per_repo_quota=100_000, store=store, budget=store)
        await quotas.set_repo_quota("^org/big/.*", 50_000, "bench")
        limiter = RateLimiter(1_000_000, 3600, windows=StoreWindows(store))
        identity = RepoIdentity("gh", "org/repo/HEAD", "https://github.com/org/repo")

        async def admit(i: int) -> None:
            ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            bans.check_network(ip)
            bans.check_spec(identity)
            quotas.needs_servers(identity)
            await limiter.check(ip)

        b.say("admission (bans + quota lookup + rate-limit increment)")
        admission = await timed(requests, admit)

        async def no_servers() -> list[object]:
            return []

        gate = quotas.launch_gate(no_servers)  # type: ignore[arg-type]
        resolved = _Resolved(_Build("gh", "org/repo/HEAD", identity.repo_url, "r/org-repo:1"))

        async def claim(i: int) -> None:
            async with gate(resolved):
                pass

        b.say("launch claim (atomic quota check with claims + release)")
        claims = await timed(requests, claim)
    finally:
        await store.close()
    admission_ms = b.summary(admission, scale=1000, digits=3)
    return {
        "store": "postgresql (loopback, synchronous_commit on)",
        "requests": requests,
        "bans": {"spec": 20, "network": 21},
        "admission_ms": admission_ms,
        "launch_claim_ms": b.summary(claims, scale=1000, digits=3),
        "target": "admission p50 <= 2 ms",
        "met": admission_ms["p50"] <= 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per measurement (2000)")
    args = parser.parse_args()
    started, load_before = time.monotonic(), b.loadavg()
    # Durable like a production server: every commit waits for its WAL to reach the disk.
    server = start_server(durable=True)
    try:
        name = server.create_database()
        result = asyncio.run(measure(server.url(name), args.requests))
    finally:
        remove_server(server)
    b.emit("admission", result, started=started, load_before=load_before)


if __name__ == "__main__":
    main()
