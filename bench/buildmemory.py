#!/usr/bin/env python3
"""The memory one build watcher holds while its build prints a huge log.

A build manager follows one build over the in-memory swarm of the tests
(``tests/fakes/fake_swarm.py``), whose log is made as it is read, so only what the watcher,
the build's fan-out and its watchers keep is counted. Once the whole log has been read (the
build still running), this reports the Python memory still held (tracemalloc) and the growth of
the process's resident set (a run without tracemalloc), for a log of many ordinary lines and
one of few 60 KiB lines, with no one watching and with one watcher that stopped reading.
Needs no test ground.

    bench/buildmemory.py [--lines 200000] [--width 200] [--wide-lines 2000]

Run it against another checkout (e.g. before a change) with ``PYTHONPATH=<its root>``; the
``swarmbinder`` module it measured is in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))  # appended: a PYTHONPATH checkout's swarmbinder wins

from fakes.fake_swarm import FakeSwarm  # noqa: E402

import swarmbinder  # noqa: E402
from swarmbinder.buildjob import BuildRequest, BuildSettings  # noqa: E402
from swarmbinder.builds import BuildManager  # noqa: E402


class GeneratedLog(FakeSwarm):
    """The fake swarm, but a service's log is made line by line as it is followed."""

    def __init__(self, lines: int, width: int) -> None:
        super().__init__()
        self.lines = lines
        self.width = width
        self.printed = asyncio.Event()

    async def follow_logs(
        self, service_name: str, *, tail: int | str = "all"
    ) -> AsyncGenerator[str, None]:
        await self._answer("follow_logs", f"GET services/{service_name}/logs")
        filler = "x" * self.width
        for i in range(self.lines):
            # a new string each time, as the engine stream gives
            yield json.dumps({"phase": "building", "message": f"line {i} {filler}\n"})
            if i % 500 == 0:
                await asyncio.sleep(0)
        self.printed.set()
        await asyncio.Event().wait()  # a followed log never ends by itself


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def held_by_one_build(lines: int, width: int, *, stalled: bool, trace: bool) -> int:
    """Bytes held once the whole log is read: traced Python memory, or RSS growth."""
    gc.collect()
    if trace:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    fake = GeneratedLog(lines, width)
    settings = BuildSettings(builder_image="bench/builder", sticky=False, cleanup_interval=3600)
    manager = BuildManager(fake.client(), settings)
    request = BuildRequest(
        provider="git",
        spec="https://git.test/org/loud.git/" + "a" * 40,
        repo_url="https://git.test/org/loud.git",
        ref="a" * 40,
        build_slug="org-loud",
        image="registry.test/binder-org-loud:" + "a" * 40,
    )
    watcher: Any = None
    try:
        build = await manager.request(request)
        if stalled:
            watcher = build.events()
            await anext(watcher)  # then never reads again, like a client that hung
        async with asyncio.timeout(600):
            await fake.printed.wait()
        await asyncio.sleep(0.1)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if trace else rss_bytes()
    finally:
        if watcher is not None:
            await watcher.aclose()
        await manager.close()
        if trace:
            tracemalloc.stop()
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="ordinary lines (200000)")
    parser.add_argument("--width", type=int, default=200, help="their length (200)")
    parser.add_argument("--wide-lines", type=int, default=2_000, help="60 KiB lines (2000)")
    args = parser.parse_args()
    cases = {
        "ordinary": (args.lines, args.width),
        "wide": (args.wide_lines, 60 * 1024),
    }
    result: dict[str, Any] = {"swarmbinder": str(Path(swarmbinder.__file__).parent), "cases": {}}
    for name, (lines, width) in cases.items():
        for stalled in (False, True):
            started = time.monotonic()
            traced = asyncio.run(held_by_one_build(lines, width, stalled=stalled, trace=True))
            rss = asyncio.run(held_by_one_build(lines, width, stalled=stalled, trace=False))
            key = f"{name}{'+stalled watcher' if stalled else ''}"
            result["cases"][key] = {
                "lines": lines,
                "log_bytes": lines * (width + 40),
                "held_traced_bytes": traced,
                "rss_growth_bytes": rss,
                "seconds": round(time.monotonic() - started, 1),
            }
            print(key, result["cases"][key], file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
