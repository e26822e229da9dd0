#!/usr/bin/env python3
"""Cached cold launch, side by side in one interleaved run: swarmbinder's ``/build`` to
``ready``, the bare ``docker run`` of the same image until Jupyter's ``api/status`` answers,
and real BinderHub in its local mode launching the same image from the same repository.

    bench/coldlaunch.py [--count 10] [--binderhub ARCHIVE]
                        [--baseline-hub-rev REV | --baseline-hub-config FILE]

- swarmbinder: ``swarmbinder serve`` in front of a JupyterHub of this benchmark's own, started
  from this checkout's ``stack/hub/jupyterhub_config.py`` (bench/ownhub.py), so the row
  measures the config in the tree whatever the test ground's shared hub runs;
  ``--baseline-hub-rev`` adds a row for that config at another git revision of this checkout
  (before/after; e.g. the commit before a change to it), ``--baseline-hub-config`` for a
  config file. Such a config, older, may run ``jupyterhub-singleuser``, which calls the hub
  as it starts: on a loaded machine its spawns come closer to the hub's 30 s http_timeout.
- bare: ``docker run`` of the image with the server the hub runs (``jupyter-lab`` with a
  token), probed every 20 ms from 127.0.0.1: the floor.
- BinderHub: its ``testing/local-binder-local-hub`` setup (bench/binderhub_local.py), from the
  source archive given by ``--binderhub`` or SWARMBINDER_BENCH_BINDERHUB (a ``git archive``
  tarball of jupyterhub/binderhub; its PyPI release is from 2018). Without one, or when the
  file is absent, that row is skipped with a message. The image is tagged with the name
  BinderHub looks for, so its launch is a cached one too.

The kinds take turns (the order rotates every round) so drifting load weighs on all alike;
the machine's load is recorded every round. Servers are stopped between launches, untimed.
SWARMBINDER_BENCH_GROUND may name a file holding ``stack/testground up --quiet``'s JSON, to
use the ground as it stands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b
import binderhub_local
import ownhub

HUB_CONFIG = b.ROOT / "stack" / "hub" / "jupyterhub_config.py"
TARGET_RATIO_TO_BARE = 1.3


async def bare_run(session: aiohttp.ClientSession, image: str, run: str) -> float:
    """``docker run`` to the first answer of ``api/status``; the container is removed after."""
    port = b.free_port()
    token = secrets.token_hex(24)
    name = f"sbbench-bare-{run}-{port}"
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8888",
        "-e", f"JUPYTER_TOKEN={token}", "--label", "swarmbinder.bench=1",
        image, "jupyter-lab", "--ip=0.0.0.0", "--port=8888",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench: docker run failed: {err.decode()[-300:]}")
    url = f"http://127.0.0.1:{port}/api/status"
    auth = {"Authorization": f"token {token}"}
    try:
        while time.monotonic() - started < 120:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, headers=auth, timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            await asyncio.sleep(0.02)
        raise SystemExit(f"bench: the bare container did not answer on {url} within 120 s")
    finally:
        rm = await asyncio.create_subprocess_exec(
            "docker", "rm", "-f", name,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await rm.wait()


async def ours(session: aiohttp.ClientSession, server: b.Server, hub: b.Hub, spec: str) -> float:
    stream = await b.build_stream(session, server, spec)
    if not stream.ok:
        raise SystemExit(f"bench: a cached launch failed: {stream.last}")
    await hub.delete_user(b.user_of(stream.last))
    return stream.total_seconds


@contextlib.asynccontextmanager
async def swarmbinder_on(
    g: dict[str, Any], config: Path, name: str, network: str, tmp: Path, run: str
) -> AsyncIterator[tuple[b.Server, dict[str, Any]]]:
    """A hub of our own from ``config`` and a ``swarmbinder serve`` in front of it."""
    async with ownhub.own_hub(g, config, name, network) as hub:
        ground = hub.ground(g)
        store = tmp / name
        store.mkdir()
        async with b.serve(b.service_config(ground, run, store)) as server:
            yield server, ground


def archive_path(given: str | None) -> Path | None:
    value = given or os.environ.get("SWARMBINDER_BENCH_BINDERHUB")
    if not value:
        b.say("BinderHub row skipped: no archive (--binderhub or SWARMBINDER_BENCH_BINDERHUB)")
        return None
    path = Path(value)
    if not path.is_file():
        b.say(f"BinderHub row skipped: {path} is not a file")
        return None
    return path


async def measure(count: int, archive: Path | None, baseline: Path | None) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    kinds: dict[str, Callable[[], Awaitable[float]]] = {}
    times: dict[str, list[float]] = {}
    loads: list[float] = []
    tagged: list[str] = []
    image = ""
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        ownhub.overlay_network(f"sbbench-net-{run}") as network,
    ):
        tmp = Path(tmp_name)
        prefix = f"{g['image_prefix']}bench{run}-"
        try:
            async with contextlib.AsyncExitStack() as stack:
                session = await stack.enter_async_context(aiohttp.ClientSession())
                server, ground = await stack.enter_async_context(
                    swarmbinder_on(g, HUB_CONFIG, f"sbbench-hub-{run}", network, tmp, run)
                )
                hub = b.Hub(ground, session)
                spec, image = await b.cached_image(session, server, g)
                kinds["swarmbinder"] = lambda: ours(session, server, hub, spec)
                if baseline is not None:
                    old_server, old_ground = await stack.enter_async_context(
                        swarmbinder_on(g, baseline, f"sbbench-oldhub-{run}", network, tmp, run)
                    )
                    old_hub = b.Hub(old_ground, session)
                    kinds["swarmbinder_baseline"] = lambda: ours(session, old_server, old_hub, spec)
                kinds["bare_docker_run"] = lambda: bare_run(session, image, run)
                if archive is not None:
                    state = tmp / "binderhub"
                    state.mkdir()
                    peer = await stack.enter_async_context(
                        binderhub_local.running(archive, run, state)
                    )
                    repo = g["repos"]["binder-dockerfile"]
                    name = await asyncio.to_thread(peer.image_name, repo["url"], repo["head"])
                    await asyncio.to_thread(
                        subprocess.run, ["docker", "tag", image, name], check=True
                    )
                    tagged.append(name)
                    kinds["binderhub_local"] = lambda: peer.launch(
                        session, repo["url"], repo["head"]
                    )
                b.say(f"cached image {image}; {count} rounds of {', '.join(kinds)}")
                # One of each first, untimed: the first start of an image on the node, and
                # each hub's first spawn, are not the cached launch being measured.
                for launch in kinds.values():
                    await launch()
                times = {kind: [] for kind in kinds}
                names = list(kinds)
                for i in range(count):
                    loads.append(b.loadavg()[0])
                    order = names[i % len(names) :] + names[: i % len(names)]
                    for kind in order:
                        times[kind].append(await kinds[kind]())
                        await asyncio.sleep(0.5)
                    b.say(
                        f"round {i + 1} (load {loads[-1]}): "
                        + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in names)
                    )
        finally:
            if tagged:
                await asyncio.to_thread(
                    subprocess.run, ["docker", "image", "rm", *tagged], capture_output=True
                )
            await asyncio.to_thread(b.clean_up, prefix)
            if image:
                await b.remove_from_registry(g["registry_url"], [image])
    return result(count, image, times, loads)


def result(
    count: int, image: str, times: dict[str, list[float]], loads: list[float]
) -> dict[str, Any]:
    seconds = {kind: b.summary(values) for kind, values in times.items()}
    p50 = {kind: s["p50"] for kind, s in seconds.items()}
    ratios = {
        f"{a}_to_{z}": b.ratio(p50[a], p50[z])
        for a in p50
        for z in p50
        if a != z and z in ("bare_docker_run", "binderhub_local")
    }
    out: dict[str, Any] = {
        "count": count,
        "image": image,
        "seconds": seconds,
        "ratios_p50": ratios,
        "load_per_round": loads,
        "load_range": [min(loads), max(loads)] if loads else [],
        "target": f"swarmbinder p50 <= {TARGET_RATIO_TO_BARE}x bare and below BinderHub",
    }
    if "swarmbinder_to_bare_docker_run" in ratios:
        met = ratios["swarmbinder_to_bare_docker_run"] <= TARGET_RATIO_TO_BARE
        if "binderhub_local" in p50:
            met = met and p50["swarmbinder"] < p50["binderhub_local"]
        out["target_met"] = met
    return out


def config_at(rev: str, parser: argparse.ArgumentParser) -> str:
    """The hub config as it was at git revision ``rev`` of this checkout."""
    shown = subprocess.run(
        ["git", "-C", str(b.ROOT), "show", f"{rev}:{HUB_CONFIG.relative_to(b.ROOT)}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        why = (shown.stderr.strip().splitlines() or ["git show failed"])[-1]
        parser.error(f"--baseline-hub-rev {rev}: {why}")
    return shown.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="rounds (10)")
    parser.add_argument("--binderhub", help="BinderHub source archive (.tar.gz)")
    parser.add_argument("--baseline-hub-config", type=Path, help="another jupyterhub_config.py")
    parser.add_argument("--baseline-hub-rev", help="the hub config at this git revision")
    args = parser.parse_args()
    if args.baseline_hub_config and args.baseline_hub_rev:
        parser.error("--baseline-hub-config and --baseline-hub-rev: one or the other")
    if args.baseline_hub_config and not args.baseline_hub_config.is_file():
        parser.error(f"--baseline-hub-config {args.baseline_hub_config}: no such file")
    archive = archive_path(args.binderhub)
    started, load = time.monotonic(), b.loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = args.baseline_hub_config
        if args.baseline_hub_rev:
            baseline = Path(tmp) / "jupyterhub_config.py"
            baseline.write_text(config_at(args.baseline_hub_rev, parser))
        out = asyncio.run(measure(args.count, archive, baseline))
    if args.baseline_hub_rev:
        out["baseline_hub_rev"] = args.baseline_hub_rev
    b.emit("coldlaunch", out, started=started, load_before=load)


if __name__ == "__main__":
    main()
