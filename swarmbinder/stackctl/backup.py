"""``swarmbinder backup DIR`` and ``swarmbinder restore DIR``: the state of a stack that runs
on this node, as files.

What a backup holds, each part taken while the stack runs:

- ``registry.tar``: the registry's volume (its blobs are named by content, so a copy taken
  during a push holds whole blobs, and at worst an upload the registry would drop anyway);
- ``hub.sqlite`` and ``binder.sqlite`` (SQLite mode): the hub's database and Binder's store,
  each one consistent snapshot read through SQLite inside the service's own task;
- ``hub.pgdump`` and ``binder.pgdump`` (PostgreSQL mode): ``pg_dump`` of both databases,
  run inside the PostgreSQL task;
- ``manifest.json``: the stack, its store and the parts.

A restore goes into a stack that is up (after ``swarmbinder up``, e.g. on a new machine, or
after ``down --purge``): the registry, the hub and Binder stop, the parts are written into their
volumes (``pg_restore`` into the running PostgreSQL), and the three start again, whatever
happened meanwhile. Both run on the node that keeps the stack's state (where its volumes
are). Nothing passes through an argument list; the files are the operator's only (0600).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .. import hostsetup as hs
from .options import (
    POSTGRES_SERVICE,
    Progress,
    Silent,
    StackError,
    StackInputError,
    StackOptions,
    Store,
)
from .placement import state_label, swarm_nodes, this_node_id
from .replicas import deployed_store
from .state import deployed_ports, service_spec, stack_command, wait_healthy

MANIFEST = "manifest.json"
#: The SQLite files, as docker-stack.yml and the hub's config place them.
SQLITE_FILES = {
    "binder": "/srv/swarmbinder/swarmbinder.sqlite",
    "hub": "/srv/jupyterhub/data/jupyterhub.sqlite",
}
REGISTRY_DIR = "/var/lib/registry"
PG_BIN = "/usr/local/lib/postgresql-bin"
#: The hub's and Binder's databases on the stack's PostgreSQL (stack/postgres.yml).
PG_DATABASES = {"binder": "binder", "hub": "jupyterhub"}
#: A consistent copy of a live SQLite database, written to stdout (Python 3.11's serialize()
#: reads it in one transaction, as SQLite's backup would).
SNAPSHOT = (
    "import sqlite3, sys; "
    "db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
    "sys.stdout.buffer.write(db.serialize())"
)


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    parts: dict[str, int]  # file name -> bytes


def backup(stack: str, directory: Path, progress: Progress | None = None) -> BackupResult:
    with stack_command(stack):
        return _backup(stack, directory, progress or Silent())


def _backup(stack: str, directory: Path, report: Progress) -> BackupResult:
    store = _deployed_store_here(stack)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise StackInputError(f"{directory} is not an empty directory: back up into a new one")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    parts: dict[str, int] = {}
    registry = _container(stack, "registry")
    report.step("copying the registry's volume")
    # tar says 1 when a file changed while it read it: a push in flight, which is fine.
    parts["registry.tar"] = _exec_to_file(
        registry, ["tar", "-C", REGISTRY_DIR, "-cf", "-", "."], directory / "registry.tar", (0, 1)
    )
    if store == "postgres":
        postgres = _container(stack, POSTGRES_SERVICE)
        for part, database in PG_DATABASES.items():
            report.step(f"dumping the {database} database")
            parts[f"{part}.pgdump"] = dump_database(
                postgres, database, directory / f"{part}.pgdump"
            )
    else:
        for part, path in SQLITE_FILES.items():
            report.step(f"copying the {part}'s database")
            parts[f"{part}.sqlite"] = _exec_to_file(
                _container(stack, part),
                ["python3", "-c", SNAPSHOT, path],
                directory / f"{part}.sqlite",
            )
    manifest = {
        "stack": stack,
        "store": store,
        "parts": sorted(parts),
        "swarmbinder": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_private(directory / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    return BackupResult(directory, parts)


def restore(stack: str, directory: Path, progress: Progress | None = None) -> list[str]:
    """Put a backup into the running ``stack``; returns the parts restored."""
    with stack_command(stack):
        return _restore(stack, directory, progress or Silent())


def _restore(stack: str, directory: Path, report: Progress) -> list[str]:
    manifest = read_manifest(directory)
    store = _deployed_store_here(stack)
    if manifest["store"] != store:
        raise StackInputError(
            f"{directory} is a backup of a stack on {manifest['store']}, and stack {stack} runs "
            f"on {store}: run swarmbinder up --store {manifest['store']} first"
        )
    image = _image_of(f"{stack}_registry")
    restored: list[str] = []
    with _stopped(stack, store, report):
        report.step("restoring the registry's volume")
        # Emptied first: images pushed since the backup would otherwise stay, unreferenced.
        _run_with_file(
            ["docker", "run", "--rm", "-i", "-v", f"{stack}_registry-data:/data"]
            + ["--entrypoint", "sh", image, "-c"]
            + ["find /data -mindepth 1 -delete && tar -C /data -xf -"],
            directory / "registry.tar",
        )
        restored.append("registry.tar")
        if store == "postgres":
            postgres = _container(stack, POSTGRES_SERVICE)
            for part, database in PG_DATABASES.items():
                report.step(f"restoring the {database} database")
                restore_database(postgres, database, directory / f"{part}.pgdump")
                restored.append(f"{part}.pgdump")
        else:
            for part, path in SQLITE_FILES.items():
                report.step(f"restoring the {part}'s database")
                name = path.rsplit("/", 1)[1]
                volume = f"{stack}_{part}-data"
                # A journal left by the stopped service belongs to the old file: removed.
                script = (
                    f"cat > /data/{name}.restoring && rm -f /data/{name}-wal /data/{name}-shm "
                    f"/data/{name}-journal && mv /data/{name}.restoring /data/{name}"
                )
                _run_with_file(
                    ["docker", "run", "--rm", "-i", "-v", f"{volume}:/data"]
                    + ["--entrypoint", "sh", image, "-c", script],
                    directory / f"{part}.sqlite",
                )
                restored.append(f"{part}.sqlite")
    return restored


def dump_database(container: str, database: str, path: Path) -> int:
    """``pg_dump`` of ``database`` in the stack's PostgreSQL ``container`` into ``path`` (as
    the OS user postgres, whom the image lets in as the owner over the local socket)."""
    dump = [f"{PG_BIN}/pg_dump", "-h", "/run/postgresql", "-U", "binder", "-Fc", "-d", database]
    return _exec_to_file(container, dump, path, user="postgres")


def restore_database(container: str, database: str, path: Path) -> None:
    """Replace what ``database`` holds with the dump at ``path``, all or nothing."""
    _run_with_file(
        ["docker", "exec", "-i", "-u", "postgres", container]
        + [f"{PG_BIN}/pg_restore", "-h", "/run/postgresql", "-U", "binder"]
        + ["--clean", "--if-exists", "--single-transaction", "--exit-on-error", "-d", database],
        path,
    )


def read_manifest(directory: Path) -> dict[str, object]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise StackInputError(f"{directory} holds no swarmbinder backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise StackInputError(f"cannot read {directory / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("store") not in ("sqlite", "postgres"):
        raise StackInputError(f"{directory / MANIFEST} is not a swarmbinder backup's manifest")
    wanted = ["registry.tar"] + [
        f"{part}.{'pgdump' if manifest['store'] == 'postgres' else 'sqlite'}"
        for part in ("binder", "hub")
    ]
    missing = [name for name in wanted if not (directory / name).is_file()]
    if missing:
        raise StackInputError(f"the backup in {directory} lacks {', '.join(missing)}")
    return manifest


def _deployed_store_here(stack: str) -> str:
    """The store of ``stack``, which must run with its state on this node."""
    if not hs.docker_answers():
        raise StackError(f"the Docker engine at {hs.docker_host()} does not answer")
    store = deployed_store(stack)
    if store is None:
        raise StackInputError(f"no stack {stack} runs on this swarm: run swarmbinder up first")
    label = state_label(stack)
    holders = [n for n in swarm_nodes() if label in n.labels]
    if holders and holders[0].id != this_node_id():
        raise StackInputError(
            f"the state of stack {stack} is on node {holders[0]}: run this there, where its "
            "volumes are"
        )
    return store.kind


def _running(service: str) -> list[str]:
    """The running containers of ``service`` on this node."""
    label = f"label=com.docker.swarm.service.name={service}"
    return hs.run(["docker", "ps", "-q", "--filter", label], timeout=30).stdout.split()


def _container(stack: str, service: str) -> str:
    found = _running(f"{stack}_{service}")
    if not found:
        raise StackError(f"no task of {stack}_{service} runs on this node")
    return found[0]


def _image_of(service: str) -> str:
    spec = service_spec(service) or {}
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    image = container.get("Image", "") if isinstance(container, dict) else ""
    if not image:
        raise StackError(f"service {service} has no image")
    return str(image).split("@", 1)[0]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _exec_to_file(
    container: str,
    command: list[str],
    path: Path,
    ok: tuple[int, ...] = (0,),
    user: str | None = None,
) -> int:
    """Run ``command`` in ``container`` with its output streamed into ``path`` (0600, never
    held in memory); returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    as_user = ["-u", user] if user else []
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.run(
            ["docker", "exec", *as_user, container, *command],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=3600,
            check=False,
        )
    if proc.returncode not in ok:
        path.unlink(missing_ok=True)
        error = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"{command[0]} in {container[:12]} failed: {error[0][:300]}")
    return path.stat().st_size


def _run_with_file(command: list[str], path: Path) -> None:
    with path.open("rb") as source:
        proc = subprocess.run(command, stdin=source, capture_output=True, timeout=3600, check=False)
    if proc.returncode != 0:
        error = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"restoring {path.name} failed: {error[0][:300]}")


@contextmanager
def _stopped(stack: str, store: str, report: Progress) -> Iterator[None]:
    """The registry, the hub and Binder scaled to 0 (their volumes unused) for the block,
    then back to their replicas, and a wait until the stack is healthy again."""
    services = [f"{stack}_{name}" for name in ("binder", "hub", "registry")]
    replicas = {name: _replicas(name) for name in services}
    report.step(f"stopping {', '.join(services)}")
    try:
        hs.run(["docker", "service", "scale", "--detach", *(f"{s}=0" for s in services)])
        _wait_no_containers(services, report)
        yield
    finally:
        report.step(f"starting {', '.join(services)} again")
        hs.run(
            ["docker", "service", "scale", "--detach"]
            + [f"{name}={count}" for name, count in replicas.items()]
        )
    ports = deployed_ports(stack)
    options = StackOptions(name=stack, port=ports["binder"], hub_port=ports["proxy"])
    wait_healthy(options, report, store=Store(store, replicas[f"{stack}_binder"]))


def _replicas(service: str) -> int:
    spec = service_spec(service) or {}
    mode = spec.get("Mode", {})
    replicated = mode.get("Replicated", {}) if isinstance(mode, dict) else {}
    return int(replicated.get("Replicas", 1)) if isinstance(replicated, dict) else 1


def _wait_no_containers(services: list[str], report: Progress, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        running = [c for service in services for c in _running(service)]
        if not running:
            return
        report.status(f"waiting for {len(running)} container(s) to stop")
        time.sleep(1)
    raise StackError(f"{', '.join(services)} did not stop within {timeout:.0f} s")
