"""A real multi-node Docker Swarm on one machine: Docker-in-Docker engines on a private bridge.

Used by ``stack/testground up --nodes N`` (N > 1). Standard library only and driven through the
``docker`` CLI, like :mod:`swarmbinder.hostsetup`; ``stack/testground`` imports it from
beside itself. What ``up`` makes, all named after a prefix
(``SWARMBINDER_MULTINODE_PREFIX``, default ``swarmbinder-mn``) and labelled
``swarmbinder.multinode=<prefix>``:

- a bridge network ``<prefix>`` and N node containers ``<prefix>-node1`` ... (hostnames
  ``node1`` ...), each a ``dockerd`` whose data root is a tmpfs; node1 is the swarm manager and the
  others are workers. Every engine listens on ``tcp://<node IP>:2375`` (plain TCP: the network
  is private to this machine) so the host drives the swarm and can look into any node;
- the stack's images already inside every node: they are loaded once into a prepared image store
  (the volume ``<prefix>-store``, kept across ``down`` like built images, keyed by the image
  IDs) and each node copies the store into its tmpfs as it starts, which is far faster than
  loading or pulling into every node;
- a registry (the stack's registry image) in node1's engine on port 5000, known to every node
  as ``node1:5000`` (plain HTTP, so every engine has ``--insecure-registry node1:5000``);
- a git server container ``<prefix>-git`` on the bridge serving the test repositories over
  smart HTTP at ``http://<its IP>:8480/`` (reachable from the host and from every node, and from
  builders on a node's host network);
- JupyterHub with SwarmSpawner as a service on the manager (``stack/hub/jupyterhub_config.py``),
  its proxy on ``http://<node1 IP>:8000/``, user servers on an attachable overlay.

The swarm runs with a 1 s dispatcher heartbeat, so a node that dies shows ``down`` in about 3 s
(15 s with Docker's default).

Why these ``docker run`` flags: ``--privileged`` is refused on hosts whose bounding set lacks
CAP_SYS_RESOURCE; all other capabilities, unconfined seccomp and system paths, every device
through the cgroup rule, and a tmpfs ``/run`` are what dockerd needs; the node's entrypoint
remounts ``/sys`` and the cgroup hierarchies writable.
"""

from __future__ import annotations

import time
from pathlib import Path

from swarmbinder import hostsetup as hs

from .ground import (
    NODE_IMAGES,
    REGISTRY_PORT,
    Ground,
    Log,
    engine_address,
    node_image_spec,
    quiet,
    remove_volume,
)
from .nodes import ensure_network, ensure_nodes, ensure_store, ensure_swarm, list_nodes, store_stamp
from .services import ensure_git_server, ensure_hub, ensure_registry, mirror_repositories

__all__ = ["NODE_IMAGES", "Ground", "down", "node_image_spec", "up"]


def up(
    ground: Ground,
    *,
    images: dict[str, str],
    node_image: str,
    repos_root: Path | None,
    log: Log = quiet,
) -> dict[str, object]:
    """Bring the ground up (idempotent) and describe it."""
    started = time.monotonic()
    ground.state_dir.mkdir(parents=True, exist_ok=True)
    node_image_id = hs.image_id(node_image)
    if node_image_id is None:
        raise hs.SetupError(f"the node image {node_image} is missing")
    wanted = [images[name] for name in NODE_IMAGES]
    ids = []
    for tag in wanted:
        found = hs.image_id(tag)
        if found is None:
            raise hs.SetupError(f"image {tag} is missing; run stack/testground up first")
        ids.append(found)
    stamp = store_stamp(node_image_id, ids)
    ensure_network(ground)
    ensure_store(ground, node_image, wanted, stamp, log)
    ips = ensure_nodes(ground, node_image, stamp, log)
    manager_id = ensure_swarm(ground, ips, log)
    registry = ensure_registry(ground, ips, images["registry"])
    git_base = ensure_git_server(ground, images["builder"])
    repos = mirror_repositories(ground, repos_root, git_base) if repos_root else {}
    hub = ensure_hub(ground, ips, images["hub"], registry, log)
    manager = engine_address(ips[1])
    nodes = {n["hostname"]: n for n in list_nodes(manager)}
    return {
        "nodes": [
            {
                "name": ground.hostname(i),
                "container": ground.container(i),
                "ip": ips[i],
                "docker_host": engine_address(ips[i]),
                "role": "manager" if i == 1 else "worker",
                "node_id": nodes.get(ground.hostname(i), {}).get("id", ""),
            }
            for i in ground.indices
        ],
        "docker_host": manager,
        "manager_node_id": manager_id,
        "network": ground.network,
        "registry": registry,
        "registry_url": f"http://{ips[1]}:{REGISTRY_PORT}",
        "git_base_url": git_base,
        "git_root": str(ground.git_root),
        "repos": repos,
        **hub,
        "images": {name: images[name] for name in NODE_IMAGES},
        "node_image": node_image,
        "prefix": ground.prefix,
        "state_dir": str(ground.state_dir),
        "seconds": round(time.monotonic() - started, 1),
    }


def down(ground: Ground, *, purge: bool = False, keep_image_store: bool = False) -> None:
    """Remove every container, network and volume of the ground; ``keep_image_store`` keeps
    the prepared image store (a cache that makes the next bring-up ~25 s instead of minutes),
    ``purge`` also removes the state directory."""
    listed = hs.run(
        ["docker", "ps", "-aq", "--filter", f"label={ground.label}"], check=False
    ).stdout.split()
    if listed:
        # Killed, not stopped: the nodes' state is thrown away anyway.
        hs.run(["docker", "rm", "-f", "-v", *listed], check=False, timeout=120)
    volumes = hs.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={ground.label}"], check=False
    ).stdout.split()
    for volume in volumes:
        if volume != ground.store_volume or not keep_image_store:
            remove_volume(volume)
    hs.run(["docker", "network", "rm", ground.network], check=False)
    if purge:
        hs.run(["rm", "-rf", str(ground.state_dir)], check=False)
