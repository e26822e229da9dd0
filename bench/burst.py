#!/usr/bin/env python3
"""Burst: simultaneous cached launches through swarmbinder. How many reach ``ready``, their
p50 and p95, and the ratio of the burst p50 to a single launch measured just before it (the
same image, the same hub, one at a time).

    bench/burst.py [--size 20] [--singles 3] [--launch-limit N]
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


async def timed_raw(hub: b.Hub, image: str, user: str) -> float | str:
    try:
        return await hub.spawn(user, image)
    except Exception as exc:
        return str(exc)[:300]
    finally:
        await hub.delete_user(user)


async def measure(size: int, singles: int, launch_limit: int | None) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    with tempfile.TemporaryDirectory() as tmp:
        extra = {} if launch_limit is None else {"concurrent_launch_limit": launch_limit}
        config = b.service_config(g, run, Path(tmp), **extra)
        try:
            async with (
                b.serve(config) as server,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            ):
                hub = b.Hub(g, session)
                spec, image = await b.cached_image(session, server, g)
                single: list[float] = []
                for i in range(singles + 1):
                    stream = await b.build_stream(session, server, spec)
                    if not stream.ok:
                        raise SystemExit(f"bench: a single launch failed: {stream.last}")
                    await hub.delete_user(b.user_of(stream.last))
                    if i:  # the first warms the node up
                        single.append(stream.total_seconds)
                    await asyncio.sleep(0.5)
                b.say(f"single launches {[round(s, 2) for s in single]}; burst of {size}")
                streams = await asyncio.gather(
                    *(
                        b.build_stream(session, server, spec, limit_seconds=180)
                        for _ in range(size)
                    ),
                    return_exceptions=True,
                )
                ok = [s for s in streams if isinstance(s, b.Stream) and s.ok]
                failures = [
                    repr(s) if not isinstance(s, b.Stream) else s.last.get("message", "")
                    for s in streams
                    if not (isinstance(s, b.Stream) and s.ok)
                ]
                await asyncio.gather(*(hub.delete_user(b.user_of(s.last)) for s in ok))
                rss = server.memory()
                # The floor: the same burst straight at the hub, to tell our limits from the
                # hub's and the machine's.
                await asyncio.sleep(5)
                b.say(f"raw burst of {size}")
                raw = await asyncio.gather(
                    *(timed_raw(hub, image, f"bench-rawburst-{run}-{i}") for i in range(size))
                )
        finally:
            b.clean_up(config["image_prefix"])
    burst = b.summary([s.total_seconds for s in ok])
    raw_ok = [r for r in raw if isinstance(r, float)]
    one = b.summary(single)
    return {
        "size": size,
        "concurrent_launch_limit": config.get("concurrent_launch_limit", "default"),
        "succeeded": len(ok),
        "failures": failures,
        "single_launch_seconds": one,
        "burst_seconds": burst,
        "ratio_p50_to_single": b.ratio(burst.get("p50", 0), one["p50"]),
        "raw_burst_succeeded": len(raw_ok),
        "raw_burst_seconds": b.summary(raw_ok),
        "raw_burst_failures": [r for r in raw if isinstance(r, str)],
        "target": "all succeed, burst p50 <= 2x a single launch",
        "service_memory_kib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20, help="simultaneous launches (20)")
    parser.add_argument("--singles", type=int, default=3, help="single launches before (3)")
    parser.add_argument(
        "--launch-limit",
        type=int,
        default=None,
        help="the service's concurrent_launch_limit (default: the service's default)",
    )
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.size, args.singles, args.launch_limit))
    b.emit("burst", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
