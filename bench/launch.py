#!/usr/bin/env python3
"""Cached launch: ``/build`` request to ``ready`` for an image already in the registry,
against the floor, a raw JupyterHub REST spawn of the same image through the same hub and
SwarmSpawner (create user, POST the server with the image, follow the progress to ready).

The two kinds alternate (swarmbinder first in even rounds, the floor first in odd ones) so
drifting load on the machine weighs on both alike. Every server is stopped and its user
deleted between launches, outside the timed part.

    bench/launch.py [--count 10]
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


async def one_swarmbinder(
    session: aiohttp.ClientSession, server: b.Server, hub: b.Hub, spec: str
) -> tuple[float, float]:
    stream = await b.build_stream(session, server, spec)
    if not stream.ok:
        raise SystemExit(f"bench: a cached launch failed: {stream.last}")
    await hub.delete_user(b.user_of(stream.last))
    return stream.total_seconds, stream.first_event_seconds


async def one_raw(hub: b.Hub, image: str, user: str) -> float:
    try:
        return await hub.spawn(user, image)
    finally:
        await hub.delete_user(user)


async def measure(count: int) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp))
        try:
            async with b.serve(config) as server, aiohttp.ClientSession() as session:
                hub = b.Hub(g, session)
                spec, image = await b.cached_image(session, server, g)
                b.say(f"cached image {image}; {count} launches of each kind")
                # One of each first, untimed: the node's first start of the image is not the
                # cached launch being measured.
                await one_swarmbinder(session, server, hub, spec)
                await one_raw(hub, image, f"bench-raw-{run}-warm")
                ours: list[float] = []
                first: list[float] = []
                raw: list[float] = []
                for i in range(count):
                    order = ("ours", "raw") if i % 2 == 0 else ("raw", "ours")
                    for kind in order:
                        if kind == "ours":
                            total, first_event = await one_swarmbinder(session, server, hub, spec)
                            ours.append(total)
                            first.append(first_event)
                        else:
                            raw.append(await one_raw(hub, image, f"bench-raw-{run}-{i}"))
                        await asyncio.sleep(0.5)
                    b.say(f"round {i + 1}: swarmbinder {ours[-1]:.2f} s, raw {raw[-1]:.2f} s")
                rss = server.memory()
        finally:
            b.clean_up(config["image_prefix"])
    s_ours, s_raw = b.summary(ours), b.summary(raw)
    return {
        "count": count,
        "image": image,
        "swarmbinder_seconds": s_ours,
        "raw_spawn_seconds": s_raw,
        "swarmbinder_first_event_ms": b.summary(first, scale=1000, digits=1),
        "ratio_p50": b.ratio(s_ours["p50"], s_raw["p50"]),
        "ratio_p95": b.ratio(s_ours["p95"], s_raw["p95"]),
        "target": "p50 <= 1.15x the raw spawn",
        "service_memory_kib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="launches of each kind (10)")
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.count))
    b.emit("launch", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
