#!/usr/bin/env python3
"""Request latency: time to the first event of ``/build`` for an image already in the
registry, and requests per second for ``/badge.svg`` and ``/health``.

Time to first event: one request at a time, ``/build/git/<url>/<full sha>?build_only=true``
(the first event is then ``ready``, "Done! Found built image", sent at the point where a
launch would say "Found built image, launching...": the spec resolved, the registry asked),
and the same with the branch name ``main``, which a ``git ls-remote`` resolves.

Throughput: a load generator in this process on 127.0.0.1 with ``--concurrency``
connections, bounded by ``--requests`` per path and ``--seconds`` per path, whichever comes
first. Every response is read whole; any status but 200 counts as an error.

    bench/latency.py [--samples 200] [--concurrency 32] [--requests 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b


async def first_events(
    session: aiohttp.ClientSession, server: b.Server, spec: str, samples: int
) -> list[float]:
    out: list[float] = []
    for _ in range(samples):
        stream = await b.build_stream(session, server, spec, build_only=True, first_only=True)
        if not stream.events or stream.events[0][1].get("phase") != "ready":
            raise SystemExit(f"bench: unexpected first event {stream.events[:1]}")
        out.append(stream.first_event_seconds)
    return out


async def ls_remote_floor(url: str, samples: int) -> list[float]:
    """What resolving a branch costs outside swarmbinder: the same ``git ls-remote``."""
    out: list[float] = []
    for _ in range(samples):
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "git", "ls-remote", "--", url, "main", "main^{}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
        out.append(time.monotonic() - started)
    return out


async def load(url: str, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            started = time.monotonic()
            async with session.get(url) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.monotonic() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "errors": sum(n for status, n in statuses.items() if status != 200),
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": b.summary(latencies, scale=1000, digits=2),
    }


async def measure(samples: int, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = g["repos"]["binder-dockerfile"]
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp))
        try:
            async with b.serve(config) as server, aiohttp.ClientSession() as session:
                sha_spec, _ = await b.cached_image(session, server, g)
                branch_spec = b.git_spec(repo["url"], "main")
                await first_events(session, server, sha_spec, 5)  # warm-up, not counted
                by_sha = await first_events(session, server, sha_spec, samples)
                by_branch = await first_events(session, server, branch_spec, max(samples // 4, 1))
                floor = await ls_remote_floor(repo["url"], max(samples // 4, 1))
                b.say("time to first event done; load")
                throughput = {
                    path: await load(server.url + path, concurrency, requests, seconds)
                    for path in ("/badge.svg", "/health")
                }
                memory = server.memory()
        finally:
            b.clean_up(config["image_prefix"])
    sha_ms = b.summary(by_sha, scale=1000, digits=2)
    return {
        "first_event_ms": sha_ms,
        "first_event_branch_ref_ms": b.summary(by_branch, scale=1000, digits=2),
        "git_ls_remote_alone_ms": b.summary(floor, scale=1000, digits=2),
        "throughput": throughput,
        "load_generator": {
            "concurrency": concurrency,
            "max_requests": requests,
            "max_seconds": seconds,
            "host": "127.0.0.1",
        },
        "service_memory_kib": memory,
        "target": "time to first event p50 <= 20 ms",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="/build first events (200)")
    parser.add_argument("--concurrency", type=int, default=32, help="load connections (32)")
    parser.add_argument("--requests", type=int, default=5000, help="at most, per path (5000)")
    parser.add_argument("--seconds", type=float, default=10, help="at most, per path (10)")
    args = parser.parse_args()
    started, load_before = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.samples, args.concurrency, args.requests, args.seconds))
    b.emit("latency", result, started=started, load_before=load_before)


if __name__ == "__main__":
    main()
