"""Which engine ``up`` drives: this machine's, or a swarm manager elsewhere (DOCKER_HOST).

The docker CLI that ``up`` runs honours DOCKER_HOST, so everything it makes lands on that
engine. What the CLI does not do for us: the stack's ports are published on the engine's host,
so they are checked and waited for there; a swarm must already exist there (``up`` never
``swarm init``s an engine that is not this machine's: it would split a cluster off); and images
already current on that engine are not rebuilt, without needing base images there (a manager
seeded from an image store has the stack's images but no bases).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import hostsetup as hs
from .options import StackInputError

LOCAL_HOST = "127.0.0.1"
#: Where this machine's own engine answers, asked for base images a remote engine lacks.
LOCAL_ENGINE = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Engine:
    """The engine ``up`` drives and the host its published ports are reached on."""

    #: DOCKER_HOST as given ("" for this machine's engine)
    address: str = ""
    host: str = LOCAL_HOST

    @property
    def remote(self) -> bool:
        return bool(self.address)


def engine_from(docker_host: str | None) -> Engine:
    """The engine a DOCKER_HOST value names: tcp:// and ssh:// are remote (their host publishes
    the ports), unix:// and unset are this machine's."""
    if not docker_host or docker_host.startswith(("unix://", "npipe://", "fd://")):
        return Engine()
    parts = urlsplit(docker_host)
    if parts.scheme not in ("tcp", "ssh", "http", "https") or not parts.hostname:
        raise StackInputError(
            f"DOCKER_HOST={docker_host}: expected tcp://HOST:PORT or ssh://USER@HOST"
        )
    host = parts.hostname
    if host in ("localhost", "127.0.0.1", "::1"):
        return Engine(docker_host, LOCAL_HOST)
    return Engine(docker_host, host)


def current_engine() -> Engine:
    return engine_from(os.environ.get("DOCKER_HOST"))


def ensure_manager(engine: Engine, log: hs.Log) -> str:
    """The node ID of the engine's swarm manager; this machine's engine joins a single-node
    swarm if it is in none, any other engine must already be a manager (exit 2 otherwise)."""
    if not engine.remote:
        return hs.ensure_swarm(LOCAL_HOST, log)
    info = json.loads(hs.run(["docker", "info", "--format", "{{json .Swarm}}"]).stdout or "{}")
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        what = "a worker" if info.get("LocalNodeState") == "active" else "in no swarm"
        raise StackInputError(
            f"the engine at DOCKER_HOST={engine.address} is {what}: point DOCKER_HOST at a "
            "swarm manager (up makes a swarm only on this machine's engine)"
        )
    return str(info["NodeID"])


def port_in_use(engine: Engine, port: int) -> bool:
    """Whether something holds ``port`` on the engine's host: bound here, or answering there."""
    if not engine.remote or engine.host == LOCAL_HOST:
        return not hs.port_is_free(port)
    try:
        with socket.create_connection((engine.host, port), timeout=2):
            return True
    except OSError:
        return False


def current_image(spec: hs.ImageSpec, engine: Engine) -> str | None:
    """The ID of the engine's image for ``spec`` when a build now would make the same one (its
    inputs label matches this tree), found without the base images on the engine: their IDs
    come from the engine, else from this machine's engine (which built what a seeded engine
    holds); None when it must be built."""
    fallback = LOCAL_ENGINE if engine.remote else None
    return hs.current_image(spec, fallback_engine=fallback)
