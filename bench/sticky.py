#!/usr/bin/env python3
"""Sticky rebuild: after a one-file change to a repository, the rebuild on the node that
built it before (its layers in that node's build cache) against the same rebuild with that
node's cache of the repository cleared (its images and their layers removed from the node,
as on a node that never built it).

The repository's Dockerfile has an expensive dependency step before the files are copied, as
most do: a ``sleep`` stands in for downloading packages (20 s by default; installing numpy,
pandas and matplotlib from scratch took 47-56 s on this kind of machine), and 32 MiB of random
data for what they install. The ratio grows with that step; the sticky rebuild's own time does
not depend on it. A one-file change then rebuilds only the COPY layer where the cache is warm.
With one node the sticky node is that node; the rendezvous ranking picks it every time.

    bench/sticky.py [--count 2] [--dependency-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b


def dockerfile(singleuser: str, nonce: str, seconds: int) -> str:
    return (
        f"FROM {singleuser}\n"
        f"RUN echo {nonce} && sleep {seconds} && head -c 32M /dev/urandom > /tmp/bench-deps.bin\n"
        "COPY --chown=1000:1000 . /home/jovyan/\n"
    )


async def build(session: aiohttp.ClientSession, server: b.Server, url: str, sha: str) -> float:
    stream = await b.build_stream(session, server, b.git_spec(url, sha), build_only=True)
    if not stream.ok:
        raise SystemExit(f"bench: a build failed: {stream.last}")
    return stream.total_seconds


async def measure(count: int, seconds: int) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = b.Repo(g, f"bench-sticky-{run}")
    sticky: list[float] = []
    cleared: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp))
        prefix = config["image_prefix"]
        try:
            first = repo.commit(
                {
                    "Dockerfile": dockerfile(g["images"]["singleuser"], uuid.uuid4().hex, seconds),
                    ".dockerignore": ".git\n",
                    "notes.txt": "version 0\n",
                }
            )
            async with b.serve(config) as server, aiohttp.ClientSession() as session:
                b.say("first build (untimed)")
                await build(session, server, repo.url, first)
                for i in range(count):
                    sha = repo.commit({"notes.txt": f"version {i}.1\n"}, "one-file change")
                    sticky.append(await build(session, server, repo.url, sha))
                    sha = repo.commit({"notes.txt": f"version {i}.2\n"}, "one-file change")
                    # The node forgets the repository: its images and their own layers go.
                    await asyncio.to_thread(b.remove_images, prefix)
                    cleared.append(await build(session, server, repo.url, sha))
                    b.say(f"round {i + 1}: sticky {sticky[-1]:.2f} s, cleared {cleared[-1]:.2f} s")
        finally:
            b.clean_up(prefix)
            repo.remove()
    s_sticky, s_cleared = b.summary(sticky), b.summary(cleared)
    return {
        "count": count,
        "dependency_step_seconds": seconds,
        "sticky_rebuild_seconds": s_sticky,
        "cleared_cache_rebuild_seconds": s_cleared,
        "speedup_p50": b.ratio(s_cleared["p50"], s_sticky["p50"]),
        "target": "sticky rebuild >= 5x faster than with the cache cleared",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2, help="rebuilds of each kind (2)")
    parser.add_argument(
        "--dependency-seconds", type=int, default=20, help="the dependency step's sleep (20)"
    )
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.count, args.dependency_seconds))
    b.emit("sticky", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
