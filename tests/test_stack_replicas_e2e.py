"""``swarmbinder up --replicas 3`` for real: three Binder tasks behind the front, a PostgreSQL
task the replicas and the hub share, a launch through the published port, then ``down``.

One deployment for the whole file (it takes a minute or two on two cores), next to the test
ground on the same engine, under a name and ports of its own, from the test ground's images.
Each replica is reached in its own container on its own 127.0.0.1 (``docker exec``), never by
an overlay address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from test_stack_e2e import (  # the single-replica e2e test's helpers and git server
    docker,
    free_port,
    read_events,
    serve_git_for_containers,
    stack_config,
    stack_leftovers,
    swarmbinder,
)

pytestmark = pytest.mark.swarm

REPLICAS = 3
PSQL = ["psql", "-h", "/run/postgresql", "-U", "binder", "-At"]


def containers(stack: str, service: str) -> list[str]:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_{service}"
    ).split()


def in_replica(container: str, path: str) -> str:
    """GET a replica's own port from inside its container."""
    code = (
        "import urllib.request as u, sys; "
        f"sys.stdout.write(u.urlopen('http://127.0.0.1:8585{path}', timeout=10).read().decode())"
    )
    return docker("exec", container, "python3", "-c", code)


@pytest.fixture(scope="module")
def git_for_containers(testground: dict[str, Any]) -> Iterator[str]:
    with serve_git_for_containers(testground) as url:
        yield url


@pytest.fixture(scope="module")
def replicated(
    testground: dict[str, Any],
    git_for_containers: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    stack = f"sbrep{uuid.uuid4().hex[:6]}"
    port, hub_port, registry_port = free_port(), free_port(), free_port()
    config = stack_config(tmp_path_factory.mktemp("replicas"), git_for_containers)
    args = ["--stack", stack, "--port", str(port), "--hub-port", str(hub_port)]
    args += ["--registry-port", str(registry_port), "--config", str(config)]
    try:
        started = time.monotonic()
        up = swarmbinder("up", *args, "--replicas", str(REPLICAS), "--timeout", "300")
        print(f"up --replicas {REPLICAS}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        assert up.returncode == 0, up.stderr[-2000:]
        yield {"stack": stack, "port": port, "hub_port": hub_port, "args": args, "up": up}
    finally:
        started = time.monotonic()
        gone = swarmbinder("down", "--stack", stack, "--purge", timeout=240)
        print(f"down: {time.monotonic() - started:.1f} s", file=sys.stderr)
        assert gone.returncode == 0, gone.stderr[-2000:]
        assert stack_leftovers(stack) == []
        assert not docker("secret", "ls", "-q", "--filter", f"name={stack}-").split()
        assert not docker("volume", "ls", "-q", "--filter", f"name={stack}_").split()


def test_three_replicas_and_postgres_come_up(replicated: dict[str, Any]) -> None:
    stack, up = replicated["stack"], replicated["up"]
    assert up.stdout.strip() == f"Binder is running at http://127.0.0.1:{replicated['port']}/"
    assert f"{REPLICAS} Binder replica(s) on PostgreSQL" in up.stderr
    assert f"created secret {stack}-postgres-password" in up.stderr
    running = docker(
        "service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
        f"{stack}_binder",
    ).splitlines()  # fmt: skip
    assert len(running) == REPLICAS and all(s.startswith("Running") for s in running), running
    assert len(containers(stack, "postgres")) == 1
    # Each replica answers on its own port, configured for the shared database, password hidden.
    replicas = containers(stack, "binder")
    assert len(replicas) == REPLICAS
    for container in replicas:
        assert json.loads(in_replica(container, "/health"))["ok"] is True
        shown = json.loads(docker("exec", container, "swarmbinder", "show-config", "--json"))
        store = {k: v for k, v in shown.items() if k.startswith("store_")}
        assert store["store_url"] == "postgresql://binder@postgres:5432/binder", shown
        assert store["store_password"] == "***", store


def test_the_hub_keeps_its_database_in_postgres(replicated: dict[str, Any]) -> None:
    (postgres,) = containers(replicated["stack"], "postgres")
    tables = docker(
        "exec", "-u", "postgres", postgres, *PSQL, "-d", "jupyterhub", "-c",
        "select tablename from pg_tables where schemaname = 'public'",
    ).split()  # fmt: skip
    assert {"users", "servers", "spawners", "api_tokens", "alembic_version"} <= set(tables)
    # The hub's SQLite file was never made: its state is in PostgreSQL only.
    (hub,) = containers(replicated["stack"], "hub")
    listing = docker("exec", hub, "ls", "/srv/jupyterhub/data").split()
    assert "jupyterhub.sqlite" not in listing, listing


def test_no_password_in_any_service_spec(replicated: dict[str, Any]) -> None:
    stack = replicated["stack"]
    (postgres,) = containers(stack, "postgres")
    password = docker("exec", postgres, "cat", "/run/secrets/postgres_password").strip()
    assert len(password) >= 32
    services = docker(
        "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"
    )
    specs = docker("service", "inspect", *services.split())
    assert len(json.loads(specs)) == 6  # registry, hub, proxy, binder, postgres, front
    assert password not in specs
    for container in containers(stack, "binder") + containers(stack, "hub"):
        assert password not in docker("inspect", container)


def test_postgres_is_on_its_own_network_and_unpublished(replicated: dict[str, Any]) -> None:
    stack = replicated["stack"]
    (postgres,) = containers(stack, "postgres")
    networks = docker(
        "inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        postgres,
    ).split()  # fmt: skip
    assert networks == [f"{stack}-db"]
    spec = json.loads(docker("service", "inspect", f"{stack}_postgres"))[0]
    assert not spec["Endpoint"].get("Ports")
    # Binder's replicas and the hub only: not the proxy, the registry, the front or a user server.
    on_db = json.loads(
        docker("network", "inspect", "--format", "{{json .Containers}}", f"{stack}-db")
    )
    expected = containers(stack, "postgres") + containers(stack, "binder")
    expected += containers(stack, "hub")
    assert {c[:12] for c in on_db if not c.startswith("lb-")} == {c[:12] for c in expected}


def test_a_launch_works_through_the_front_and_spreads(
    replicated: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    port, stack = replicated["port"], replicated["stack"]
    repo = quote(f"{git_for_containers}binder-dockerfile.git", safe="")
    head = testground["repos"]["binder-dockerfile"]["head"]
    events = read_events(f"http://127.0.0.1:{port}/build/git/{repo}/{head}")
    assert events[-1]["phase"] == "ready", events[-3:]
    assert events[-1]["url"].startswith(f"http://127.0.0.1:{replicated['hub_port']}/user/")
    (postgres,) = containers(stack, "postgres")
    users = docker(
        "exec", "-u", "postgres", postgres, *PSQL, "-d", "jupyterhub", "-c",
        "select count(*) from spawners where server_id is not null",
    ).strip()  # fmt: skip
    assert users == "1"  # the launched server, as the hub recorded it in PostgreSQL
    # Requests through the published port reach every replica (the front's round robin).
    marker = f"spread-{uuid.uuid4().hex[:8]}"
    for _ in range(3 * REPLICAS):
        subprocess.run(
            ["curl", "-fsS", "-o", "/dev/null", "-A", marker, f"http://127.0.0.1:{port}/versions"],
            check=True,
            timeout=30,
        )
    served = [docker_logs(c).count(marker) for c in containers(stack, "binder")]
    assert sorted(served) == [3] * REPLICAS, served


def docker_logs(container: str) -> str:
    proc = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout + proc.stderr


def test_a_plain_up_keeps_the_replicas(replicated: dict[str, Any]) -> None:
    again = swarmbinder("up", *replicated["args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{REPLICAS} Binder replica(s) on PostgreSQL" in again.stderr
    # Nothing to deploy, unless someone rebuilt the shared service image meanwhile.
    if "deploying" in again.stderr:
        assert f"deploying stack {replicated['stack']} (swarmbinder-image" in again.stderr
    assert len(containers(replicated["stack"], "binder")) == REPLICAS


def test_bad_replicas_change_nothing(replicated: dict[str, Any]) -> None:
    for bad in (["--replicas", "0"], ["--replicas", "3", "--store", "sqlite"]):
        proc = swarmbinder("up", *replicated["args"], *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert len(containers(replicated["stack"], "binder")) == REPLICAS
