"""A real multi-node Docker Swarm on one machine: Docker-in-Docker engines on a private bridge.

Used by ``stack/testground up --nodes N`` (N > 1). Standard library only and driven through the
``docker`` CLI, like :mod:`swarmbinder.hostsetup`. What ``up`` makes, all named after a prefix
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

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import hostsetup as hs

LABEL = "swarmbinder.multinode"
STAMP_LABEL = "swarmbinder.store-stamp"
ENGINE_PORT = 2375
REGISTRY_PORT = 5000
GIT_PORT = 8480
HUB_PORT = 8000
#: Images every node needs: builds (builder, and the repositories' FROM), the hub and registry.
NODE_IMAGES = ("builder", "singleuser", "hub", "registry")
#: Parts of a dockerd data root that belong to one engine and must not be copied to another.
ENGINE_PRIVATE = ("network", "engine-id", "swarm", "containers", "volumes/metadata.db")
#: Upper bound of a node's tmpfs data root; only what is written uses memory (~2 GiB seeded).
NODE_TMPFS_SIZE = os.environ.get("SWARMBINDER_MULTINODE_TMPFS", "8g")
HUB_SERVICE = "jupyterhub"
HUB_NETWORK = "binder"
HUB_CONFIG_FILE = hs.REPO_ROOT / "stack" / "hub" / "jupyterhub_config.py"
GITSERVER = hs.REPO_ROOT / "stack" / "gitserver.py"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Ground:
    """Names of everything one multi-node ground is made of."""

    prefix: str
    size: int
    state_dir: Path

    @classmethod
    def from_env(cls, size: int, state_dir: Path) -> Ground:
        prefix = os.environ.get("SWARMBINDER_MULTINODE_PREFIX", "swarmbinder-mn")
        return cls(prefix, size, state_dir / prefix)

    @property
    def network(self) -> str:
        return self.prefix

    @property
    def store_volume(self) -> str:
        return f"{self.prefix}-store"

    @property
    def git_container(self) -> str:
        return f"{self.prefix}-git"

    @property
    def git_root(self) -> Path:
        return self.state_dir / "git"

    @property
    def label(self) -> str:
        return f"{LABEL}={self.prefix}"

    def hostname(self, i: int) -> str:
        return f"node{i}"

    def container(self, i: int) -> str:
        return f"{self.prefix}-node{i}"

    @property
    def indices(self) -> range:
        return range(1, self.size + 1)


def node_image_spec(version: str) -> hs.ImageSpec:
    return hs.ImageSpec(
        "node", f"swarmbinder/dind-node:{version}", base="debian", common_setup=False
    )


# --------------------------------------------------------------------------- helpers


def on(
    host: str, args: Sequence[str], *, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``docker -H host ARGS`` (host: an engine address such as tcp://IP:2375)."""
    return hs.run(["docker", "-H", host, *args], check=check, timeout=timeout)


def engine_address(ip: str) -> str:
    return f"tcp://{ip}:{ENGINE_PORT}"


def container_ip(name: str, network: str) -> str | None:
    proc = hs.run(
        [
            "docker",
            "inspect",
            "--format",
            "{{with index .NetworkSettings.Networks "
            f'"{network}"}}}}{{{{.IPAddress}}}}{{{{end}}}}',
            name,
        ],
        check=False,
    )
    ip = proc.stdout.strip()
    return ip if proc.returncode == 0 and ip else None


def _running(name: str) -> bool:
    proc = hs.run(["docker", "inspect", "--format", "{{.State.Running}}", name], check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def _label_of(kind: str, name: str, label: str) -> str | None:
    labels = ".Config.Labels" if kind == "container" else ".Labels"
    proc = hs.run(
        ["docker", kind, "inspect", "--format", f'{{{{index {labels} "{label}"}}}}', name],
        check=False,
    )
    value = proc.stdout.strip()
    return value if proc.returncode == 0 and value not in ("", "<no value>") else None


def engine_answers(host: str, timeout: float = 5) -> bool:
    try:
        return (
            on(
                host, ["info", "--format", "{{.ServerVersion}}"], timeout=timeout, check=False
            ).returncode
            == 0
        )
    except hs.SetupError:
        return False


def wait_engine(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine_answers(host):
            return
        time.sleep(0.3)
    raise hs.SetupError(f"the node engine at {host} did not answer within {timeout:.0f} s")


def _remove_volume(name: str) -> None:
    for _ in range(20):  # busy until the container using it is fully gone
        proc = hs.run(["docker", "volume", "rm", name], check=False)
        if proc.returncode == 0 or "no such volume" in proc.stderr.lower():
            return
        time.sleep(0.5)


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
    ground: Ground, node_image: str, images: Sequence[str], stamp: str, log: Log = _quiet
) -> None:
    """The prepared image store: a dockerd data root holding ``images``, made once per stamp."""
    if _label_of("volume", ground.store_volume, STAMP_LABEL) == stamp:
        return
    log(f"preparing the nodes' image store ({', '.join(images)})")
    _remove_volume(ground.store_volume)
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
        _remove_volume(ground.store_volume)
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


def ensure_nodes(ground: Ground, node_image: str, stamp: str, log: Log = _quiet) -> dict[int, str]:
    """Every node container running, seeded from the store; returns index -> IP.

    A node's data root is a tmpfs: seeding it is a copy from the page cache, and removing a
    node frees it at once (deleting an image store on disk takes tens of seconds). A node whose
    container stopped (a test killed it) is made again from the store and rejoins the swarm.
    """
    fresh: list[int] = []
    for i in ground.indices:
        name = ground.container(i)
        if (
            _running(name)
            and _label_of("container", name, STAMP_LABEL) == stamp
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


def ensure_swarm(ground: Ground, ips: dict[int, str], log: Log = _quiet) -> str:
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


# --------------------------------------------------------------------------- registry, git


def ensure_registry(ground: Ground, ips: dict[int, str], registry_image: str) -> str:
    manager = engine_address(ips[1])
    url = f"http://{ips[1]}:{REGISTRY_PORT}/v2/"
    if not hs.wait_http(url, 1):
        on(manager, ["rm", "-f", "registry"], check=False)
        on(
            manager,
            [
                "run",
                "-d",
                "--name",
                "registry",
                "--restart",
                "always",
                "-p",
                f"{REGISTRY_PORT}:5000",
                "-v",
                "registry:/var/lib/registry",
                registry_image,
            ],
        )
        if not hs.wait_http(url, 60):
            raise hs.SetupError(f"the registry on node1 did not answer on {url}")
    return f"{ground.hostname(1)}:{REGISTRY_PORT}"


def ensure_git_server(ground: Ground, image: str) -> str:
    """The git smart-HTTP server as a container on the bridge, serving ``ground.git_root``."""
    ground.git_root.mkdir(parents=True, exist_ok=True)
    name = ground.git_container
    ip = container_ip(name, ground.network) if _running(name) else None
    if ip is None or not hs.wait_http(f"http://{ip}:{GIT_PORT}/", 2, ok_statuses=(200, 404)):
        hs.run(["docker", "rm", "-f", name], check=False)
        # gitserver.py binds 127.0.0.1; here it must listen on the bridge, so it is imported and
        # served on every address of the container.
        serve = (
            "import sys; sys.path.insert(0, '/srv/stack'); import gitserver; "
            "from http.server import ThreadingHTTPServer; "
            "gitserver.GitHandler.project_root = '/srv/git'; "
            f"ThreadingHTTPServer(('0.0.0.0', {GIT_PORT}), gitserver.GitHandler).serve_forever()"
        )
        hs.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                ground.network,
                "--network-alias",
                "git",
                "--label",
                ground.label,
                "--entrypoint",
                "python3",
                "-v",
                f"{GITSERVER.parent}:/srv/stack:ro",
                "-v",
                f"{ground.git_root}:/srv/git",
                image,
                "-c",
                serve,
            ]
        )
        ip = container_ip(name, ground.network)
        if ip is None or not hs.wait_http(f"http://{ip}:{GIT_PORT}/", 30, ok_statuses=(200, 404)):
            raise hs.SetupError("the git server container did not answer")
    return f"http://{ip}:{GIT_PORT}/"


def mirror_repositories(ground: Ground, source_root: Path, base_url: str) -> dict[str, object]:
    """Bare copies of the single-node ground's test repositories, served by the git container."""
    out: dict[str, object] = {}
    for bare in sorted(source_root.glob("*.git")):
        target = ground.git_root / bare.name
        if not target.is_dir():
            hs.run(["git", "clone", "-q", "--mirror", str(bare), str(target)])
            hs.run(["git", "-C", str(target), "update-server-info"])
        shas = hs.run(["git", "-C", str(target), "rev-list", "--reverse", "main"]).stdout.split()
        out[bare.name.removesuffix(".git")] = {
            "url": f"{base_url}{bare.name}",
            "ref": "main",
            "commits": shas,
            "head": shas[-1] if shas else "",
        }
    return out


# --------------------------------------------------------------------------- hub


def ensure_hub(
    ground: Ground, ips: dict[int, str], hub_image: str, registry: str, log: Log = _quiet
) -> dict[str, str]:
    """JupyterHub on the manager; user servers only on workers, pulled from the registry."""
    manager = engine_address(ips[1])
    token = hs.read_or_create_secret(ground.state_dir / "hub_api_token")
    hub_url = f"http://{ips[1]}:{HUB_PORT}/"
    api = f"{hub_url}hub/api/"
    result = {
        "hub_url": hub_url,
        "hub_api_url": api.rstrip("/"),
        "hub_api_token": token,
        "hub_network": HUB_NETWORK,
        "hub_service": HUB_SERVICE,
        "image_prefix": f"{registry}/binder-",
    }
    if on(manager, ["service", "inspect", HUB_SERVICE], check=False).returncode == 0:
        if hs.wait_http(api, 30):
            return result
        on(manager, ["service", "rm", HUB_SERVICE], check=False)
    if on(manager, ["network", "inspect", HUB_NETWORK], check=False).returncode != 0:
        on(manager, ["network", "create", "--driver", "overlay", "--attachable", HUB_NETWORK])
    config = f"hub-config-{hashlib.sha256(HUB_CONFIG_FILE.read_bytes()).hexdigest()[:12]}"
    if on(manager, ["config", "inspect", config], check=False).returncode != 0:
        _create_config(manager, config, HUB_CONFIG_FILE.read_bytes())
    environment = {
        "SWARMBINDER_HUB_API_TOKEN": token,
        "SWARMBINDER_HUB_IMAGE_PREFIX": result["image_prefix"],
        "SWARMBINDER_HUB_NETWORK": HUB_NETWORK,
        "SWARMBINDER_HUB_CONNECT_HOST": HUB_SERVICE,
        "SWARMBINDER_HUB_MEM_LIMIT": "1G",
        "SWARMBINDER_HUB_CPU_LIMIT": "1",
        # Launch tests are about servers on workers pulling from the registry.
        "SWARMBINDER_HUB_CONSTRAINTS": "node.role==worker",
        "SWARMBINDER_HUB_START_TIMEOUT": "90",
        "SWARMBINDER_HUB_HTTP_TIMEOUT": "60",
    }
    log("starting the hub on node1")
    cmd = [
        "service",
        "create",
        "--detach",
        "--name",
        HUB_SERVICE,
        "--no-resolve-image",
        "--network",
        HUB_NETWORK,
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        f"mode=host,published={HUB_PORT},target=8000",
        "--mount",
        "type=volume,src=hub-data,dst=/srv/jupyterhub/data",
        "--mount",
        "type=bind,src=/var/run/docker.sock,dst=/var/run/docker.sock",
        "--config",
        f"source={config},target=/srv/jupyterhub/jupyterhub_config.py",
        "--constraint",
        "node.role==manager",
    ]
    for key, value in environment.items():
        cmd += ["--env", f"{key}={value}"]
    on(manager, [*cmd, hub_image])
    if not hs.wait_http(api, 120):
        raise hs.SetupError(f"the hub on node1 did not answer on {api} within 120 s")
    return result


def _create_config(host: str, name: str, content: bytes) -> None:
    proc = subprocess.run(
        ["docker", "-H", host, "config", "create", name, "-"],
        input=content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise hs.SetupError(f"creating config {name} failed: {proc.stderr.decode().strip()}")


# --------------------------------------------------------------------------- up / down


def up(
    ground: Ground,
    *,
    images: dict[str, str],
    node_image: str,
    repos_root: Path | None,
    log: Log = _quiet,
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
            _remove_volume(volume)
    hs.run(["docker", "network", "rm", ground.network], check=False)
    if purge:
        hs.run(["rm", "-rf", str(ground.state_dir)], check=False)
