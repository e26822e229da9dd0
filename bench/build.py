#!/usr/bin/env python3
"""Build overhead: a build through swarmbinder (``/build?build_only=true``: resolve, a
one-shot Swarm service running repo2docker, its log followed, the image pushed) against a raw
``jupyter-repo2docker`` run with the same arguments, from the same builder image, on the same
engine (``docker run --network host`` with the engine's socket), of the same repository.

Warm: every layer is in the engine's cache (a new commit with the same tree, so a new image
name and nothing to rebuild). Cold: the Dockerfile's expensive step changes (a new nonce), so
it runs again: 16 MiB of random data in a layer, built and pushed. Swarmbinder and the raw run
alternate, each on a commit of its own.

    bench/build.py [--count 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b

from swarmbinder.buildjob import BuildRequest, BuildSettings, repo2docker_args


def dockerfile(singleuser: str, nonce: str) -> str:
    return (
        f"FROM {singleuser}\n"
        f"RUN echo {nonce} && head -c 16M /dev/urandom > /tmp/bench-data.bin\n"
        "COPY --chown=1000:1000 . /home/jovyan/\n"
    )


def engine_events(since: float, until: float, match: str) -> dict[str, float]:
    """When the engine created the service and started and stopped the container whose names
    contain ``match`` (epoch seconds), from its event log: the build manager may have removed
    both by now. swarmbinder publishes ``built`` when repo2docker says the image is pushed, so
    its builder may exit a moment after the result: the log is read again until it has."""
    deadline = time.time() + 15
    while True:
        times = _engine_events(since, until, match)
        if "container die" in times or time.time() > deadline:
            break
        time.sleep(0.5)
        until = time.time()
    if "container start" not in times or "container die" not in times:
        raise SystemExit(f"bench: no start and die events for a container named *{match}*")
    return times


def _engine_events(since: float, until: float, match: str) -> dict[str, float]:
    out = subprocess.run(
        ["docker", "events", "--since", f"{since - 1:.3f}", "--until", f"{until + 1:.3f}",
         "--filter", "type=container", "--filter", "type=service", "--filter", "event=start",
         "--filter", "event=die", "--filter", "event=create", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    times: dict[str, float] = {}
    for line in out.splitlines():
        event = json.loads(line)
        if match in event.get("Actor", {}).get("Attributes", {}).get("name", ""):
            key = f"{event['Type']} {event['Action']}"
            times.setdefault(key, event["timeNano"] / 1e9)
    return times


@dataclass
class Timing:
    """A build's wall time, split around the builder container's own run."""

    total: float
    before: float  # request (or docker run) to the container's start
    container: float  # the container's run: clone, build, push
    after: float  # the container's exit to the result (negative: the result came first)
    to_service: float = 0.0  # (swarmbinder) request to the build service's creation


def split(started: float, ended: float, match: str) -> Timing:
    times = engine_events(started, ended, match)
    c_start, c_end = times["container start"], times["container die"]
    to_service = times["service create"] - started if "service create" in times else 0.0
    return Timing(ended - started, c_start - started, c_end - c_start, ended - c_end, to_service)


async def ours(session: aiohttp.ClientSession, server: b.Server, url: str, sha: str) -> Timing:
    wall = time.time()
    stream = await b.build_stream(session, server, b.git_spec(url, sha), build_only=True)
    if not stream.ok:
        raise SystemExit(f"bench: a swarmbinder build failed: {stream.last}")
    ended = wall + stream.total_seconds
    # the build service's name (and so its container's) carries the commit's short sha
    return await asyncio.to_thread(split, wall, ended, f"-{sha[:7]}-")


async def raw(g: dict[str, Any], url: str, sha: str, image: str) -> Timing:
    request = BuildRequest(
        provider="git", spec="", repo_url=url, ref=sha, build_slug="", image=image
    )
    args = repo2docker_args(request, BuildSettings(builder_image=g["images"]["builder"]))
    name = f"bench-raw-repo2docker-{uuid.uuid4().hex[:12]}"
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        "docker", "run", "--name", name, "--network", "host",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        g["images"]["builder"], *args,  # its entrypoint is jupyter-repo2docker
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    ended = time.time()
    try:
        if proc.returncode != 0:
            raise SystemExit(f"bench: raw repo2docker failed:\n{out.decode()[-2000:]}")
        return await asyncio.to_thread(split, started, ended, name)
    finally:
        rm = ["docker", "rm", "-f", name]
        await asyncio.to_thread(subprocess.run, rm, capture_output=True, check=False)


async def measure(count: int) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = b.Repo(g, f"bench-build-{run}")
    singleuser = g["images"]["singleuser"]
    times: dict[str, dict[str, list[Timing]]] = {
        "warm": {"swarmbinder": [], "raw": []},
        "cold": {"swarmbinder": [], "raw": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp))
        prefix = config["image_prefix"]
        try:
            base = {
                "Dockerfile": dockerfile(singleuser, uuid.uuid4().hex),
                # the context is a clone: without this every commit changes the COPY layer
                ".dockerignore": ".git\n",
                "hello.txt": "hello\n",
            }
            repo.commit(base)
            async with b.serve(config) as server, aiohttp.ClientSession() as session:
                # Untimed: the first build fills the layer cache the warm rounds rely on.
                await ours(session, server, repo.url, repo.commit({}, "first"))
                for i in range(count):
                    for cache in ("warm", "cold"):
                        order = ("swarmbinder", "raw") if i % 2 == 0 else ("raw", "swarmbinder")
                        for kind in order:
                            change = {} if cache == "warm" else {
                                "Dockerfile": dockerfile(singleuser, uuid.uuid4().hex)
                            }  # fmt: skip
                            sha = repo.commit(change, f"{cache} {kind} {i}")
                            if kind == "swarmbinder":
                                timing = await ours(session, server, repo.url, sha)
                            else:
                                timing = await raw(g, repo.url, sha, f"{prefix}raw:{sha}")
                            times[cache][kind].append(timing)
                        b.say(
                            f"{cache} {i + 1}: swarmbinder {times[cache]['swarmbinder'][-1]}"
                            f", raw {times[cache]['raw'][-1]}"
                        )
        finally:
            b.clean_up(prefix)
            repo.remove()
    result: dict[str, Any] = {"count": count, "target": "p50 <= 1.05x raw repo2docker"}
    for cache, kinds in times.items():
        s_ours = b.summary([t.total for t in kinds["swarmbinder"]])
        s_raw = b.summary([t.total for t in kinds["raw"]])
        result[cache] = {
            "swarmbinder_seconds": s_ours,
            "raw_repo2docker_seconds": s_raw,
            "ratio_p50": b.ratio(s_ours["p50"], s_raw["p50"]),
            "overhead_p50_seconds": round(s_ours["p50"] - s_raw["p50"], 3),
            # p50 of each part: where the difference is
            "parts_p50_seconds": {
                kind: {
                    part: round(b.percentile([getattr(t, part) for t in timings], 50), 3)
                    for part in ("to_service", "before", "container", "after")
                }
                for kind, timings in kinds.items()
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5, help="builds of each kind per cache (5)")
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.count))
    b.emit("build", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
