#!/usr/bin/env python3
"""Pooled launches: ``/build`` to ``ready`` when a warm pool holds a server of the image.

    bench/pooled.py [--count 10] [--pool 2] [--burst 20]

(a) one launch at a time from a pool of ``--pool`` servers: the pool is full before each
    launch (the bench waits for the replacement of the server handed out before), so every
    launch is a hand-out; p50 and p95 over ``--count`` launches.
(b) ``--burst`` simultaneous launches from a pool of as many servers, filled first: how many
    got ``ready`` from the pool, their p50 and p95.

``swarmbinder serve`` runs with ``warm_pools`` for the test repository (binder-dockerfile at its
full sha) in front of a JupyterHub of the benchmark's own from this checkout's
``stack/hub/jupyterhub_config.py`` (bench/ownhub.py): the pool servers are that hub's, so the
shared test ground's hub is not filled with them, and they go with the hub at the end. Part
(b) restarts the service with the larger pool; the servers of (a) carry over, as they do
through any restart. The pool builds its image itself (a first build under this run's prefix).

Each launch records when ``built``, ``launching`` and ``ready`` reached the client, so the time
of a slow hand-out is placed. A launch the pool could not serve is a cold launch (its URL is
not a pool server's): it is counted as ``cold_fallbacks`` and not in the pooled times.
SWARMBINDER_BENCH_GROUND as for every benchmark (bench/benchlib.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b
import coldlaunch
import ownhub

TARGET_P50_SECONDS = 0.3
TARGET_BURST_P50_SECONDS = 0.5
POOL_SERVER = "pool"
FILL_PATIENCE = 900.0


class PoolHub:
    """The benchmark's hub, asked how many pool servers wait, and told to remove a user."""

    def __init__(self, hub: b.Hub) -> None:
        self.hub = hub

    async def ready_pool_servers(self) -> set[str]:
        """Users whose pool server the hub calls ready (handed-out ones are deleted at once,
        so these are the servers waiting in the pool)."""
        async with self.hub.session.get(f"{self.hub.api}/users", headers=self.hub.headers) as r:
            r.raise_for_status()
            users = await r.json()
        return {
            u["name"] for u in users if (u.get("servers") or {}).get(POOL_SERVER, {}).get("ready")
        }

    async def remove(self, user: str) -> None:
        """Stop the user's pool server (removing it) and delete the user."""
        url = f"{self.hub.api}/users/{user}"
        async with self.hub.session.delete(
            f"{url}/servers/{POOL_SERVER}", headers=self.hub.headers, json={"remove": True}
        ):
            pass
        await self.hub.delete_user(user)

    async def until_full(self, size: int, what: str) -> float:
        """Wait for ``size`` ready pool servers; the seconds it took."""
        started = time.monotonic()
        while len(await self.ready_pool_servers()) < size:
            if time.monotonic() - started > FILL_PATIENCE:
                raise SystemExit(f"bench: {what}: the pool did not fill to {size}")
            await asyncio.sleep(0.5)
        # the manager lists the new server in the round its spawn's end wakes
        await asyncio.sleep(0.5)
        return time.monotonic() - started


def phases(stream: b.Stream) -> dict[str, float]:
    """Seconds from the request to the first event of each phase."""
    out: dict[str, float] = {}
    for at, event in stream.events:
        out.setdefault(str(event.get("phase")), round(at - stream.started, 4))
    return out


def from_pool(stream: b.Stream) -> bool:
    return stream.ok and str(stream.last.get("url", "")).endswith(f"/{POOL_SERVER}/")


@contextlib.asynccontextmanager
async def pooled_binder(
    g: Mapping[str, Any], hub: ownhub.OwnHub, run: str, store: Path, spec: str, size: int
) -> AsyncIterator[b.Server]:
    # the spec itself is the pattern (its dots match themselves too): a pattern that names
    # one spec gets its pool at start, where a regex-escaped one would wait for a launch
    config = b.service_config(hub.ground(g), run, store, warm_pools={spec: size})
    async with b.serve(config) as server:
        yield server


async def one_at_a_time(
    session: aiohttp.ClientSession,
    server: b.Server,
    pools: PoolHub,
    spec: str,
    count: int,
    size: int,
) -> dict[str, Any]:
    times: list[float] = []
    loads: list[float] = []
    refills: list[float] = []
    launches: list[dict[str, float]] = []
    cold = 0
    for i in range(count):
        refills.append(await pools.until_full(size, "a pooled launch"))
        loads.append(b.loadavg()[0])
        stream = await b.build_stream(session, server, spec, limit_seconds=180)
        if not stream.ok:
            raise SystemExit(f"bench: a pooled launch failed: {stream.last}")
        await pools.remove(launched_user(stream))
        if not from_pool(stream):
            cold += 1
            b.say(f"launch {i + 1}: not from the pool ({stream.total_seconds:.2f} s)")
            continue
        times.append(stream.total_seconds)
        launches.append(phases(stream))
        b.say(f"launch {i + 1} (load {loads[-1]}): {stream.total_seconds * 1000:.0f} ms")
    return {
        "pool_size": size,
        "count": count,
        "seconds": b.summary(times, digits=4),
        "phases_per_launch": launches,
        "cold_fallbacks": cold,
        "refill_seconds": b.summary(refills[1:]),
        "load_per_launch": loads,
        "load_range": [min(loads), max(loads)] if loads else [],
    }


def launched_user(stream: b.Stream) -> str:
    """The temporary user of a launch: ``.../user/<name>/pool/`` from a pool, else
    ``.../user/<name>/``."""
    parts = str(stream.last["url"]).rstrip("/").split("/")
    return parts[-2] if from_pool(stream) else parts[-1]


async def simultaneous(
    session: aiohttp.ClientSession, server: b.Server, pools: PoolHub, spec: str, size: int
) -> dict[str, Any]:
    fill = await pools.until_full(size, "the burst")
    load = b.loadavg()[0]
    b.say(f"pool of {size} full in {fill:.0f} s (load {load}); {size} simultaneous launches")
    streams = await asyncio.gather(
        *(b.build_stream(session, server, spec, limit_seconds=180) for _ in range(size)),
        return_exceptions=True,
    )
    ok = [s for s in streams if isinstance(s, b.Stream) and s.ok]
    pooled = [s for s in ok if from_pool(s)]
    failures = [
        repr(s) if not isinstance(s, b.Stream) else str(s.last.get("message", ""))[:300]
        for s in streams
        if not (isinstance(s, b.Stream) and s.ok)
    ]
    await asyncio.gather(*(pools.remove(launched_user(s)) for s in ok))
    seconds = b.summary([s.total_seconds for s in pooled], digits=4)
    b.say(f"{len(pooled)}/{size} ready from the pool, p50 {seconds.get('p50')} s")
    return {
        "size": size,
        "ready": len(ok),
        "ready_from_pool": len(pooled),
        "failures": failures,
        "seconds": seconds,
        "phases_per_launch": sorted((phases(s) for s in ok), key=lambda p: p.get("ready", 0)),
        "fill_seconds": round(fill, 1),
        "load": load,
    }


async def measure(count: int, size: int, burst: int) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = g["repos"]["binder-dockerfile"]
    spec = b.git_spec(repo["url"], repo["head"])
    image = ""
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        ownhub.overlay_network(f"sbbench-net-{run}") as network,
    ):
        store = Path(tmp_name)
        prefix = f"{g['image_prefix']}bench{run}-"
        try:
            async with (
                ownhub.own_hub(g, coldlaunch.HUB_CONFIG, f"sbbench-hub-{run}", network) as hub,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            ):
                pools = PoolHub(b.Hub(hub.ground(g), session))
                async with pooled_binder(g, hub, run, store, spec, size) as server:
                    b.say(f"pool of {size} for {spec}: building and filling")
                    # the first launch is untimed: the node's first start of the image
                    await pools.until_full(size, "the first fill")
                    first = await b.build_stream(session, server, spec, limit_seconds=180)
                    image = str(first.last.get("image", ""))
                    if first.ok:
                        await pools.remove(launched_user(first))
                    single = await one_at_a_time(session, server, pools, spec, count, size)
                async with pooled_binder(g, hub, run, store, spec, burst) as server:
                    together = await simultaneous(session, server, pools, spec, burst)
        finally:
            await asyncio.to_thread(b.clean_up, prefix)
            if image:
                await b.remove_from_registry(g["registry_url"], [image])
    return result(single, together, image)


def result(single: dict[str, Any], together: dict[str, Any], image: str) -> dict[str, Any]:
    p50 = single["seconds"].get("p50", float("inf"))
    burst_p50 = together["seconds"].get("p50", float("inf"))
    all_ready = together["ready_from_pool"] == together["size"]
    return {
        "image": image,
        "pooled": single,
        "simultaneous": together,
        "target": (
            f"pooled p50 <= {TARGET_P50_SECONDS} s; {together['size']} simultaneous pooled "
            f"launches all ready, p50 <= {TARGET_BURST_P50_SECONDS} s"
        ),
        "target_met": {
            "pooled": p50 <= TARGET_P50_SECONDS,
            "simultaneous": all_ready and burst_p50 <= TARGET_BURST_P50_SECONDS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="one-at-a-time launches (10)")
    parser.add_argument("--pool", type=int, default=2, help="pool size for those (2)")
    parser.add_argument("--burst", type=int, default=20, help="simultaneous launches (20)")
    args = parser.parse_args()
    for name in ("count", "pool", "burst"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    started, load = time.monotonic(), b.loadavg()
    out = asyncio.run(measure(args.count, args.pool, args.burst))
    b.emit("pooled", out, started=started, load_before=load)


if __name__ == "__main__":
    main()
