"""A JupyterHub of the benchmark's own, started from a given ``jupyterhub_config.py``.

The test ground's hub is shared and runs whatever config it was last brought up with; a
benchmark that compares hub configs (this branch's against an older one) or must not disturb
other users of the ground starts its own: a plain container of the stack's hub image on the
manager, in an attachable overlay network the benchmark creates, its proxy published on a
free port of 127.0.0.1 only. Its user servers are Swarm services labelled with the hub's own
id, so no other hub or swarmbinder counts or reaps them, and they are removed with the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import benchlib as b

#: Settings of the test ground's hub (stack/testground's hub_env), so the numbers compare.
GROUND_SETTINGS = {
    "SWARMBINDER_HUB_MEM_LIMIT": "1G",
    "SWARMBINDER_HUB_CPU_LIMIT": "1",
    "SWARMBINDER_HUB_CULL_TIMEOUT": "900",
    "SWARMBINDER_HUB_CULL_EVERY": "120",
    "SWARMBINDER_HUB_START_TIMEOUT": "60",
    "SWARMBINDER_HUB_HTTP_TIMEOUT": "30",
}


@dataclass(frozen=True)
class OwnHub:
    """What a benchmark needs of a hub: the ground's keys, pointing at this one."""

    name: str
    url: str
    api_token: str

    def ground(self, g: Mapping[str, Any]) -> dict[str, Any]:
        """``g`` with the hub keys replaced, for ``benchlib.service_config`` and ``Hub``."""
        return {
            **g,
            "hub_url": self.url,
            "hub_api_url": f"{self.url}hub/api",
            "hub_api_token": self.api_token,
            "hub_service": self.name,
        }


def _docker(*args: str, check: bool = True) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise SystemExit(f"bench: docker {args[0]} {args[1]}: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


@contextlib.contextmanager
def overlay_network(name: str) -> Any:
    """An attachable overlay network of the benchmark's own, removed after."""
    _docker("network", "create", "--driver", "overlay", "--attachable",
            "--label", "swarmbinder.bench=1", name)  # fmt: skip
    try:
        yield name
    finally:
        # Swarm detaches a removed service's task from the network a moment later.
        for _ in range(30):
            removed = subprocess.run(["docker", "network", "rm", name], capture_output=True)
            if removed.returncode == 0:
                break
            time.sleep(1)
        else:
            b.say(f"could not remove network {name}")


def _remove_user_servers(hub_id: str) -> None:
    services = _docker("service", "ls", "-q", "--filter", f"label=swarmbinder.hub={hub_id}",
                       check=False).split()  # fmt: skip
    if services:
        _docker("service", "rm", *services, check=False)


@contextlib.asynccontextmanager
async def own_hub(
    g: Mapping[str, Any], config_file: Path, name: str, network: str
) -> AsyncIterator[OwnHub]:
    """Run the stack's hub image with ``config_file`` as container ``name`` on ``network``."""
    port = b.free_port()
    token = secrets.token_hex(32)
    socket_path = str(g["docker_host"]).removeprefix("unix://")
    config_path = str(config_file.resolve())  # noqa: ASYNC240 (a path, no I/O worth a thread)
    environment = {
        **GROUND_SETTINGS,
        "SWARMBINDER_HUB_API_TOKEN": token,
        "SWARMBINDER_HUB_IMAGE_PREFIX": g["image_prefix"],
        "SWARMBINDER_HUB_NETWORK": network,
        "SWARMBINDER_HUB_CONNECT_HOST": name,
    }
    args = ["run", "-d", "--name", name, "--label", "swarmbinder.bench=1",
            "--network", network, "-p", f"127.0.0.1:{port}:8000",
            "-v", f"{socket_path}:/var/run/docker.sock",
            "-v", f"{config_path}:/srv/jupyterhub/jupyterhub_config.py:ro"]  # fmt: skip
    for key, value in environment.items():
        args += ["-e", f"{key}={value}"]
    _docker(*args, g["images"]["hub"])
    hub = OwnHub(name=name, url=f"http://127.0.0.1:{port}/", api_token=token)
    try:
        await _wait_up(hub, name)
        b.say(f"hub {name} ({config_file.name}) at {hub.url}")
        yield hub
    finally:
        _remove_user_servers(name)
        _docker("rm", "-f", name, check=False)


async def _wait_up(hub: OwnHub, name: str) -> None:
    deadline = time.monotonic() + 240
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"{hub.url}hub/api/", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return
            if _docker("inspect", "-f", "{{.State.Running}}", name, check=False) != "true":
                break
            await asyncio.sleep(0.3)
    logs = subprocess.run(  # noqa: ASYNC221 (the benchmark ends here)
        ["docker", "logs", "--tail", "15", name], capture_output=True, text=True
    )
    raise SystemExit(f"bench: hub {name} did not come up:\n{logs.stderr[-2000:]}")
