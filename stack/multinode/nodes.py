"""The node engines of a ground: its bridge, the prepared image store, the node containers
seeded from it, and the swarm they form (node1 the manager, the others its workers)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Sequence

from swarmbinder import hostsetup as hs

from .ground import (
    ENGINE_PORT,
    REGISTRY_PORT,
    STAMP_LABEL,
    Ground,
    Log,
    container_ip,
    engine_address,
    engine_answers,
    label_of,
    on,
    quiet,
    remove_volume,
    running,
    wait_engine,
)

#: Parts of a dockerd data root that belong to one engine and must not be copied to another.
ENGINE_PRIVATE = ("network", "engine-id", "swarm", "containers", "volumes/metadata.db")
#: Upper bound of a node's tmpfs data root; only what is written uses memory (~2 GiB seeded).
NODE_TMPFS_SIZE = os.environ.get("SWARMBINDER_MULTINODE_TMPFS", "8g")


# --------------------------------------------------------------------------- network


def ensure_network(ground: Ground) -> None:
    inspect = hs.run(
        ["docker", "network", "inspect", "--format", "{{.Driver}}", ground.network], check=False
    )
    if inspect.returncode == 0:
        if inspect.stdout.strip() != "bridge":
            raise hs.SetupError(
                f"network {ground.network} exists and is not a bridge; remove it or set "
                "SWARMBINDER_MULTINODE_PREFIX"
            )
        return
    hs.run(
        [
            "docker",
            "network",
            "create",
            "--driver",
            "bridge",
            "--label",
            ground.label,
            ground.network,
        ]
    )


# --------------------------------------------------------------------------- image store


def _node_run_args(ground: Ground, name: str, hostname: str, volume: str | None) -> list[str]:
    """``docker run`` up to the image; the data root is ``volume``, else a tmpfs."""
    data_root = (
        ["-v", f"{volume}:/var/lib/docker"]
        if volume
        else ["--tmpfs", f"/var/lib/docker:rw,exec,dev,suid,size={NODE_TMPFS_SIZE}"]
    )
    return [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        hostname,
        "--network",
        ground.network,
        "--network-alias",
        hostname,
        "--label",
        ground.label,
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "systempaths=unconfined",
        "--device-cgroup-rule",
        "a *:* rwm",
        "--tmpfs",
        "/run",
        *data_root,
    ]


def _dockerd_args(ground: Ground) -> list[str]:
    return [
        "-H",
        "unix:///var/run/docker.sock",
        "-H",
        f"tcp://0.0.0.0:{ENGINE_PORT}",
        # Without it dockerd 20.10 waits ~15 s on purpose before listening on plain TCP.
        "--tls=false",
        "--insecure-registry",
        f"{ground.hostname(1)}:{REGISTRY_PORT}",
    ]


def store_stamp(node_image_id: str, image_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join([node_image_id, *image_ids]).encode()).hexdigest()[:24]


def ensure_store(
    ground: Ground, node_image: str, images: Sequence[str], stamp: str, log: Log = quiet
) -> None:
    """The prepared image store: a dockerd data root holding ``images``, made once per stamp."""
    if label_of("volume", ground.store_volume, STAMP_LABEL) == stamp:
        return
    log(f"preparing the nodes' image store ({', '.join(images)})")
    remove_volume(ground.store_volume)
    hs.run(
        [
            "docker",
            "volume",
            "create",
            "--label",
            ground.label,
            "--label",
            f"{STAMP_LABEL}={stamp}",
            ground.store_volume,
        ]
    )
    prep = f"{ground.prefix}-prep"
    hs.run(["docker", "rm", "-f", prep], check=False)
    ensure_network(ground)
    try:
        hs.run(
            [
                *_node_run_args(ground, prep, "prep", ground.store_volume),
                node_image,
                *_dockerd_args(ground),
            ]
        )
        ip = container_ip(prep, ground.network)
        if ip is None:
            raise hs.SetupError("the image store engine has no address")
        wait_engine(engine_address(ip), 60)
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        assert save.stdout is not None
        load = subprocess.run(
            ["docker", "-H", engine_address(ip), "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        save.stdout.close()
        save.wait()
        if load.returncode != 0 or save.returncode != 0:
            raise hs.SetupError(f"loading images into the store failed: {load.stderr.strip()}")
        hs.run(["docker", "stop", "-t", "30", prep])
    except BaseException:
        hs.run(["docker", "rm", "-f", prep], check=False)
        remove_volume(ground.store_volume)
        raise
    hs.run(["docker", "rm", "-f", prep], check=False)
    # The store engine's identity, swarm state and networks must not reach the nodes.
    hs.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            "-v",
            f"{ground.store_volume}:/store",
            node_image,
            "-c",
            "cd /store && rm -rf " + " ".join(ENGINE_PRIVATE),
        ]
    )


# --------------------------------------------------------------------------- nodes


def ensure_nodes(ground: Ground, node_image: str, stamp: str, log: Log = quiet) -> dict[int, str]:
    """Every node container running, seeded from the store; returns index -> IP.

    A node's data root is a tmpfs: seeding it is a copy from the page cache, and removing a
    node frees it at once (deleting an image store on disk takes tens of seconds). A node whose
    container stopped (a test killed it) is made again from the store and rejoins the swarm.
    """
    fresh: list[int] = []
    for i in ground.indices:
        name = ground.container(i)
        if (
            running(name)
            and label_of("container", name, STAMP_LABEL) == stamp
            and (ip := container_ip(name, ground.network))
            and engine_answers(engine_address(ip))
        ):
            continue
        hs.run(["docker", "rm", "-f", name], check=False)
        fresh.append(i)
    if fresh:
        log(f"starting {', '.join(ground.hostname(i) for i in fresh)} from the image store")
    for i in fresh:
        hs.run(
            [
                *_node_run_args(ground, ground.container(i), ground.hostname(i), None),
                "--label",
                f"{STAMP_LABEL}={stamp}",
                "-v",
                f"{ground.store_volume}:/seed:ro",
                node_image,
                *_dockerd_args(ground),
            ]
        )
    ips: dict[int, str] = {}
    for i in ground.indices:
        ip = container_ip(ground.container(i), ground.network)
        if ip is None:
            raise hs.SetupError(f"{ground.container(i)} has no address on {ground.network}")
        ips[i] = ip
    for i in ground.indices:
        wait_engine(engine_address(ips[i]), 90)
    return ips


def _swarm_info(host: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(
        on(host, ["info", "--format", "{{json .Swarm}}"], timeout=20).stdout
    )
    return info


def ensure_swarm(ground: Ground, ips: dict[int, str], log: Log = quiet) -> str:
    """node1 the manager (1 s heartbeat), every other node a worker of it; returns node1's ID."""
    manager = engine_address(ips[1])
    info = _swarm_info(manager)
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        log("initialising the swarm on node1")
        on(manager, ["swarm", "leave", "--force"], check=False)
        on(
            manager,
            ["swarm", "init", "--advertise-addr", ips[1], "--dispatcher-heartbeat", "1s"],
            timeout=60,
        )
        info = _swarm_info(manager)
    token = on(manager, ["swarm", "join-token", "-q", "worker"]).stdout.strip()
    for i in ground.indices:
        if i == 1:
            continue
        worker = engine_address(ips[i])
        winfo = _swarm_info(worker)
        joined = winfo.get("LocalNodeState") == "active" and str(
            winfo.get("NodeID", "")
        ) in _node_ids(manager)
        if joined:
            continue
        log(f"joining {ground.hostname(i)} to the swarm")
        on(worker, ["swarm", "leave", "--force"], check=False)
        on(worker, ["swarm", "join", "--token", token, f"{ips[1]}:2377"], timeout=60)
    _wait_nodes_ready(ground, manager, 60)
    return str(info.get("NodeID", ""))


def _node_ids(manager: str) -> set[str]:
    proc = on(manager, ["node", "ls", "--format", "{{.ID}}"], check=False)
    return set(proc.stdout.split())


def list_nodes(manager: str) -> list[dict[str, str]]:
    """The swarm's nodes as ``{id, hostname, state, availability, role}``."""
    ids = on(manager, ["node", "ls", "-q"]).stdout.split()
    if not ids:
        return []
    raw = json.loads(on(manager, ["node", "inspect", *ids]).stdout)
    return [
        {
            "id": n["ID"],
            "hostname": n["Description"]["Hostname"],
            "state": n["Status"]["State"],
            "availability": n["Spec"]["Availability"],
            "role": n["Spec"]["Role"],
        }
        for n in raw
    ]


def _wait_nodes_ready(ground: Ground, manager: str, timeout: float) -> None:
    """Every hostname ready once; nodes left over from earlier incarnations of a worker (same
    hostname, down) are removed so rankings and listings see one node per host."""
    wanted = {ground.hostname(i) for i in ground.indices}
    deadline = time.monotonic() + timeout
    while True:
        nodes = list_nodes(manager)
        ready = {n["hostname"] for n in nodes if n["state"] == "ready"}
        if wanted <= ready:
            for n in nodes:
                if n["state"] != "ready" and (
                    n["hostname"] in ready or n["hostname"] not in wanted
                ):
                    on(manager, ["node", "rm", "--force", n["id"]], check=False)
            return
        if time.monotonic() > deadline:
            raise hs.SetupError(
                f"swarm nodes not ready within {timeout:.0f} s: {sorted(wanted - ready)}"
            )
        time.sleep(0.5)
