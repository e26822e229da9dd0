"""Several Binder replicas: which store and how many replicas an ``up`` deploys, and what
PostgreSQL mode adds to docker-stack.yml.

SQLite, one replica, is the default. ``--replicas N`` with N > 1 needs a store every replica
shares, so it turns PostgreSQL mode on; ``--store postgres`` turns it on for one replica too.
PostgreSQL mode deploys stack/postgres.yml (the database, its network and volume, Binder's
``store_url`` and the hub's ``db_url``) and stack/front.yml (one published port for every
replica) over a copy of docker-stack.yml whose binder service publishes no port: host-mode
ports allow one task per node, and without IPVS no routing mesh shares one among tasks.

An ``up`` that names neither option keeps what is deployed, as it keeps the SSH console: a
plain ``swarmbinder up`` after a code change must not fold three replicas on PostgreSQL back
into one on SQLite.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from .. import hostsetup as hs
from .inputs import digest
from .options import (
    CONSOLE_FILE,
    FRONT_FILE,
    MAX_REPLICAS,
    POSTGRES_FILE,
    POSTGRES_IMAGES,
    POSTGRES_SERVICE,
    STACK_FILE,
    STACK_LABEL,
    STORES,
    StackError,
    StackOptions,
    Store,
)
from .placement import LABEL_PREFIX
from .state import service_spec

#: Binder's connection to the stack's PostgreSQL (stack/postgres.yml); the password is the
#: ``postgres-password`` secret's file.
STORE_URL = "postgresql://binder@postgres:5432/binder"


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help=f"Binder's replicas, 1 to {MAX_REPLICAS}; more than one runs PostgreSQL for their "
        "shared state (default: as deployed, else 1)",
    )
    parser.add_argument(
        "--store",
        choices=STORES,
        help="where Binder keeps its state: sqlite (one replica) or postgres (a database "
        "service every replica shares) (default: as deployed, else sqlite)",
    )


def plan_store(options: StackOptions, deployed: Store | None) -> Store:
    """The store and replicas this ``up`` deploys: as asked, else as deployed, else SQLite
    with one replica. ``options`` are checked (no SQLite with several replicas)."""
    asked_replicas = options.replicas or 1
    if options.store is not None:
        kind = options.store
    elif asked_replicas > 1:
        kind = "postgres"
    else:
        kind = deployed.kind if deployed else "sqlite"
    if kind == "sqlite":
        return Store("sqlite", 1)
    if options.replicas is not None:
        return Store("postgres", options.replicas)
    return Store("postgres", deployed.replicas if deployed and deployed.postgres else 1)


def store_plan_line(store: Store, deployed: Store | None) -> str:
    line = store.describe()
    if deployed and deployed.kind != store.kind:
        # Nothing is copied between the two: say so before the switch, not after.
        line += (
            f" (was {deployed.kind}: bans, quotas and logs kept in {deployed.kind} are not "
            f"copied; they are there again if you switch back)"
        )
    return line


def deployed_store(stack: str) -> Store | None:
    """The store and replicas of the stack deployed now (None if it is not deployed)."""
    spec = service_spec(f"{stack}_binder")
    if spec is None:
        return None
    if service_spec(f"{stack}_{POSTGRES_SERVICE}") is None:
        return Store("sqlite", 1)
    mode = spec.get("Mode", {})
    replicated = mode.get("Replicated", {}) if isinstance(mode, dict) else {}
    replicas = replicated.get("Replicas", 1) if isinstance(replicated, dict) else 1
    return Store("postgres", max(1, int(replicas)))


def stack_files(store: Store, console: bool, workdir: Path) -> list[Path]:
    """The compose files ``docker stack deploy`` is given, in order; PostgreSQL mode writes its
    copy of docker-stack.yml to ``workdir``."""
    files = [STACK_FILE]
    if store.postgres:
        files = [write_front_base(workdir / "docker-stack.yml"), POSTGRES_FILE, FRONT_FILE]
    return files + ([CONSOLE_FILE] if console else [])


def front_base(text: str) -> dict[str, object]:
    """docker-stack.yml (``text``) for PostgreSQL mode: the binder service publishes no port
    (the front does) and is not pinned to the state's node, and the files it names are
    absolute (the copy lives elsewhere)."""
    import yaml

    data: dict[str, object] = yaml.safe_load(text)
    services = data["services"]
    assert isinstance(services, dict)
    services["binder"].pop("ports", None)
    # Its state is in PostgreSQL, not on a volume: the replicas may run on every manager.
    placement = services["binder"]["deploy"]["placement"]
    placement["constraints"] = [
        c for c in placement["constraints"] if not c.startswith(f"node.labels.{LABEL_PREFIX}")
    ]
    configs = data.get("configs", {})
    assert isinstance(configs, dict)
    for config in configs.values():
        if isinstance(config.get("file"), str):
            config["file"] = config["file"].replace("./stack/", f"{hs.REPO_ROOT}/stack/")
    return data


def write_front_base(path: Path) -> Path:
    import yaml

    data = front_base(STACK_FILE.read_text())
    path.write_text(
        "# Made by swarmbinder up from docker-stack.yml for PostgreSQL mode; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def ensure_front_network(options: StackOptions) -> str:
    """The front's network (made if missing), not attachable, so only the front and Binder are
    on it; returns its subnet, the one address range Binder believes X-Forwarded-For from."""
    name = options.front_network
    inspect = hs.run(
        ["docker", "network", "inspect", "--format", "{{json .}}", name], check=False, timeout=30
    )
    if inspect.returncode != 0:
        cmd = ["docker", "network", "create", "--driver", "overlay"]
        cmd += ["--label", f"{STACK_LABEL}={options.name}", name]
        created = hs.run(cmd, check=False, timeout=60)
        inspect = hs.run(
            ["docker", "network", "inspect", "--format", "{{json .}}", name],
            check=False,
            timeout=30,
        )
        if inspect.returncode != 0:
            raise StackError(f"creating network {name} failed: {created.stderr.strip()[-300:]}")
    network = json.loads(inspect.stdout)
    if network.get("Driver") != "overlay" or network.get("Attachable"):
        raise StackError(
            f"network {name} exists but is not the front's (a non-attachable overlay): remove "
            "it (docker network rm) and run up again"
        )
    subnets = [c.get("Subnet") for c in (network.get("IPAM", {}).get("Config") or [])]
    if not subnets or not subnets[0]:
        raise StackError(f"network {name} has no subnet")
    return str(subnets[0])


def trusted_proxies(config_file: Path, front_subnet: str) -> str:
    """Binder's ``trusted_proxies`` in PostgreSQL mode: the config file's and the front's
    network (the environment wins over the file, so the file's must be in it too)."""
    import yaml

    raw = yaml.safe_load(config_file.read_text())
    configured = (raw.get("trusted_proxies") if isinstance(raw, dict) else None) or []
    return json.dumps([*[str(c) for c in configured], front_subnet])


def store_inputs(
    store: Store,
    node_id: str,
    front_subnet: str,
    config_file: Path,
    image_ids: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """docker-stack.yml variables and inputs-label parts of PostgreSQL mode (none in SQLite
    mode, so a stack that never had it keeps its label as it was)."""
    if not store.postgres:
        return {}, {}
    proxies = trusted_proxies(config_file, front_subnet)
    images = {name: image_ids[name].removeprefix("sha256:")[:12] for name in POSTGRES_IMAGES}
    variables = {
        "SWARMBINDER_REPLICAS": str(store.replicas),
        "SWARMBINDER_TRUSTED_PROXIES": proxies,
        # A rebuilt image under the same tag changes the service, so Swarm rolls it.
        **{f"SWARMBINDER_{name.upper()}_IMAGE_ID": image for name, image in images.items()},
    }
    parts = {
        "store": f"postgres-{store.replicas}",
        "postgres-file": digest(POSTGRES_FILE.read_bytes()),
        "front-file": digest(FRONT_FILE.read_bytes()),
        **{f"{name}-image": image for name, image in images.items()},
        "front": digest(f"{node_id} {proxies}".encode()),
    }
    return variables, parts


def binder_store_environment(store: Store) -> Mapping[str, str]:
    """What stack/postgres.yml adds to the binder service's environment (the secrets' files
    exist only inside the service)."""
    if not store.postgres:
        return {}
    return {
        "SWARMBINDER_STORE_URL": STORE_URL,
        "SWARMBINDER_STORE_PASSWORD_FILE": "/run/secrets/postgres_password",
        "SWARMBINDER_COOKIE_SECRET_FILE": "/run/secrets/cookie_secret",
    }


def remove_front_network(options: StackOptions) -> None:
    """The front's network, once nothing uses it (after a switch back to SQLite, or ``down``);
    Docker refuses while a container is still attached, and then it stays for the next try."""
    name = options.front_network
    if hs.run(["docker", "network", "inspect", name], check=False).returncode == 0:
        hs.run(["docker", "network", "rm", name], check=False)
