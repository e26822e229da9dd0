"""What runs on a ground's swarm: the registry on node1, the git server on the bridge, and
JupyterHub with SwarmSpawner on the manager."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from swarmbinder import hostsetup as hs

from .ground import (
    REGISTRY_PORT,
    Ground,
    Log,
    container_ip,
    engine_address,
    on,
    quiet,
    running,
)

GIT_PORT = 8480
HUB_PORT = 8000
HUB_SERVICE = "jupyterhub"
HUB_NETWORK = "binder"
HUB_CONFIG_FILE = hs.REPO_ROOT / "stack" / "hub" / "jupyterhub_config.py"
GITSERVER = hs.REPO_ROOT / "stack" / "gitserver.py"


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
    ip = container_ip(name, ground.network) if running(name) else None
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
    ground: Ground, ips: dict[int, str], hub_image: str, registry: str, log: Log = quiet
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
