#!/usr/bin/env python3
"""Launch placement by image, on the 3-node ground: a user server started on the node that
holds its image against the same server started on a node that must pull it first.

The image is the stack's single-user image plus one layer of ``--layer-mib`` MiB of random data
(256 by default), standing for what repo2docker adds to a base image (a conda environment with
numpy, pandas and matplotlib is about 1 GiB). It is built on node2 and pushed to the ground's
registry on node1, so node2 holds it and node3 does not. Each round spawns one server through
the hub's API with swarmbinder's token, pinned by ``prefer_node`` to node2 (the image there),
then one pinned to node3 (its copy of the image removed first, so it pulls), interleaved, and
times each from the spawn request to the hub's ``ready``. It also times the preference itself
(:meth:`swarmbinder.placement.ImagePlacement.preferred_node`: one store read and two engine
calls), which every launch pays.

    bench/placement.py [--rounds 3] [--layer-mib 256] [--keep-ground]

The ground is ``stack/testground up --nodes 3`` (SWARMBINDER_MULTINODE_PREFIX names it,
``sbpl-bench`` by default); it is removed at the end unless ``--keep-ground``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b

from swarmbinder import naming
from swarmbinder.hubclient import HubClient
from swarmbinder.launcher import PREFER_NODE_OPTION
from swarmbinder.placement import ImagePlacement
from swarmbinder.store import Store
from swarmbinder.swarm import SwarmClient

TESTGROUND = b.ROOT / "stack" / "testground"


def ground_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TESTGROUND), *args, "--nodes", "3"],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )


def docker(host: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        ["docker", "-H", host, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: docker {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def host_of(g: dict[str, Any], hostname: str) -> str:
    return str(next(n["docker_host"] for n in g["nodes"] if n["name"] == hostname))


def forget_on(host: str, image: str, image_id: str) -> None:
    """Remove ``image`` from a node, layers and all: the containers of the last server there
    first (while one exists, removing the image only untags it, and the next "pull" finds
    every layer in place)."""
    containers = docker(host, "ps", "-aq", "--filter", f"ancestor={image_id}").split()
    if containers:
        docker(host, "rm", "-f", *containers)
    probe = subprocess.run(
        ["docker", "-H", host, "image", "inspect", image_id], capture_output=True, check=False
    )
    if probe.returncode == 0:
        docker(host, "image", "rm", "-f", image_id)
    gone = subprocess.run(
        ["docker", "-H", host, "image", "inspect", image_id], capture_output=True, check=False
    )
    if gone.returncode == 0:
        raise SystemExit(f"bench: {image} is still on {host}")


def build_on_node2(g: dict[str, Any], image: str, layer_mib: int) -> None:
    node2 = host_of(g, "node2")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Dockerfile").write_text(
            f"FROM {g['images']['singleuser']}\n"
            f"RUN head -c {layer_mib}M /dev/urandom > /tmp/environment.bin\n"
        )
        docker(node2, "build", "-q", "-t", image, tmp)
    docker(node2, "push", "-q", image)


async def spawn_seconds(
    hub: HubClient, swarm: SwarmClient, image: str, node_id: str, run: str
) -> tuple[float, str]:
    """Seconds from the spawn request to ready, and the node the server ran on."""
    user = f"sbpl-{run}-{uuid.uuid4().hex[:6]}"
    await hub.create_user(user)
    options = {"image": image, "token": uuid.uuid4().hex, PREFER_NODE_OPTION: node_id}
    started = time.monotonic()
    try:
        if not await hub.start_server(user, "", options):
            async for event in hub.progress(user, ""):
                if event.get("failed"):
                    raise SystemExit(f"bench: spawn failed: {event.get('message')}")
                if event.get("ready"):
                    break
        seconds = time.monotonic() - started
        service = naming.spawner_service_name(user)
        nodes = {n.id: n.hostname for n in await swarm.nodes()}
        tasks = await swarm.tasks(service)
        return seconds, ",".join(nodes.get(t.node_id, "?") for t in tasks if t.state == "running")
    finally:
        await hub.stop_server(user)
        await hub.delete_user_once_stopped(user, patience=30)
        await swarm.remove_service(naming.spawner_service_name(user), settle_seconds=3)


async def measure(g: dict[str, Any], rounds: int, layer_mib: int) -> dict[str, Any]:
    run = b.run_id()
    image = f"{g['image_prefix']}sbpl-bench-{run}:1"
    b.say(f"building {image} ({layer_mib} MiB layer) on node2")
    await asyncio.to_thread(build_on_node2, g, image, layer_mib)
    node3 = host_of(g, "node3")
    image_id = docker(host_of(g, "node2"), "image", "inspect", "-f", "{{.Id}}", image)
    held: list[float] = []
    pulled: list[float] = []
    choice_ms: list[float] = []
    async with aiohttp.ClientSession() as session, SwarmClient.connect(g["docker_host"]) as swarm:
        hub = HubClient(g["hub_api_url"], g["hub_api_token"], session)
        ids = {n.hostname: n.id for n in await swarm.nodes()}
        with tempfile.TemporaryDirectory() as tmp:
            async with await Store.open(Path(tmp) / "store.sqlite") as store:
                await store.note_image_nodes([(image, "node2")], time.time())
                places = ImagePlacement(swarm, store, hub_id=None, max_imbalance=4, clock=time.time)
                for _ in range(20):
                    t0 = time.perf_counter()
                    chosen = await places.preferred_node(image)
                    choice_ms.append((time.perf_counter() - t0) * 1000)
                if chosen != ids["node2"]:
                    raise SystemExit(f"bench: the preference is {chosen}, not node2")
        for i in range(rounds):
            seconds, ran = await spawn_seconds(hub, swarm, image, ids["node2"], run)
            if ran != "node2":
                raise SystemExit(f"bench: the server ran on {ran}, not node2")
            held.append(seconds)
            await asyncio.to_thread(forget_on, node3, image, image_id)
            seconds, ran = await spawn_seconds(hub, swarm, image, ids["node3"], run)
            if ran != "node3":
                raise SystemExit(f"bench: the server ran on {ran}, not node3")
            pulled.append(seconds)
            b.say(f"round {i + 1}: image on the node {held[-1]:.2f} s, pulled {pulled[-1]:.2f} s")
    s_held, s_pulled = b.summary(held), b.summary(pulled)
    return {
        "rounds": rounds,
        "image_layer_mib": layer_mib,
        "launch_on_node_with_image_seconds": s_held,
        "launch_on_node_without_image_seconds": s_pulled,
        "speedup_p50": b.ratio(s_pulled["p50"], s_held["p50"]),
        "saved_p50_seconds": round(s_pulled["p50"] - s_held["p50"], 2),
        "preference_ms": b.summary(choice_ms, digits=2),
        "target": "a server on the node with its image starts without the pull",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="launches of each kind (3)")
    parser.add_argument("--layer-mib", type=int, default=256, help="the image's own layer (256)")
    parser.add_argument("--keep-ground", action="store_true", help="leave the 3-node ground up")
    args = parser.parse_args()
    os.environ.setdefault("SWARMBINDER_MULTINODE_PREFIX", "sbpl-bench")
    started, load = time.monotonic(), b.loadavg()
    b.say("bringing up the 3-node ground")
    proc = ground_cli("up", "--quiet")
    if proc.returncode != 0:
        raise SystemExit(f"bench: stack/testground up --nodes 3 failed ({proc.returncode})")
    g = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        result = asyncio.run(measure(g, args.rounds, args.layer_mib))
    finally:
        if not args.keep_ground:
            ground_cli("down", "--keep-image-store")
    b.emit("placement", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
