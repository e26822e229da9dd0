"""What one multi-node ground is called, and the ``docker`` calls every part of it makes.

Everything of a ground is named after its prefix and labelled ``swarmbinder.multinode=<prefix>``,
so ``down`` finds it all by label.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmbinder import hostsetup as hs
from swarmbinder.labels import LABEL_MULTINODE, LABEL_STORE_STAMP

LABEL = LABEL_MULTINODE
STAMP_LABEL = LABEL_STORE_STAMP
ENGINE_PORT = 2375
REGISTRY_PORT = 5000
#: Images every node needs: builds (builder, and the repositories' FROM), the hub and registry;
#: swarmbinder and tls, so `swarmbinder up` against the manager deploys the whole stack with
#: nothing to build.
NODE_IMAGES = ("builder", "singleuser", "hub", "registry", "swarmbinder", "tls")

Log = Callable[[str], None]


def quiet(_: str) -> None:
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


def running(name: str) -> bool:
    proc = hs.run(["docker", "inspect", "--format", "{{.State.Running}}", name], check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def label_of(kind: str, name: str, label: str) -> str | None:
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


def remove_volume(name: str) -> None:
    for _ in range(20):  # busy until the container using it is fully gone
        proc = hs.run(["docker", "volume", "rm", name], check=False)
        if proc.returncode == 0 or "no such volume" in proc.stderr.lower():
            return
        time.sleep(0.5)
