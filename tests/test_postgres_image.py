"""The stack's PostgreSQL image for real: a first start makes the databases with the password
from a secret file, password logins over TCP work and a wrong password does not, a stop with a
session open is a clean, fast shutdown, and the data survives a restart.

Containers on a bridge network this test makes (and removes), from the image as the test
ground builds it (cached: nothing is rebuilt unless its inputs changed).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmbinder import __version__
from swarmbinder import hostsetup as hs

pytestmark = pytest.mark.swarm

PASSWORD = "0123456789abcdef" * 4


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="module")
def image() -> str:
    bases = hs.ensure_bases()
    (spec,) = (s for s in hs.project_images(__version__) if s.name == "postgres")
    return hs.build_image(spec, bases).tag


@pytest.fixture
def server(image: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    name = f"pgimage-{uuid.uuid4().hex[:8]}"
    secret = tmp_path / "postgres_password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o444)
    docker("network", "create", name)
    docker("volume", "create", name)
    try:
        docker(
            "run", "-d", "--name", name, "--network", name,
            "-v", f"{name}:/var/lib/postgresql/data",
            "-v", f"{secret}:/run/secrets/postgres_password:ro",
            "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
            image,
        )  # fmt: skip
        wait_ready(name)
        yield {"name": name, "image": image}
    finally:
        docker("rm", "-f", name, check=False)
        for client in docker(
            "ps", "-aq", "--filter", f"network={name}", check=False
        ).stdout.split():
            docker("rm", "-f", client, check=False)
        docker("volume", "rm", name, check=False)
        docker("network", "rm", name, check=False)


def wait_ready(name: str, timeout: float = 60) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        probe = docker(
            "exec", name, "/usr/local/lib/postgresql-bin/pg_isready", "-q", "-h", "/run/postgresql",
            check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"postgres did not start: {logs_of(name)[-1000:]}")


def logs_of(name: str) -> str:
    logs = docker("logs", name)
    return logs.stdout + logs.stderr


def psql(server: dict[str, str], password: str, sql: str, database: str = "binder") -> str:
    """psql from another container on the network, as Binder and the hub connect."""
    proc = docker(
        "run", "--rm", "--network", server["name"], "-e", f"PGPASSWORD={password}",
        "--entrypoint", "psql", server["image"],
        "-h", server["name"], "-U", "binder", "-d", database, "-Atc", sql,
        check=False,
    )  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else f"refused: {proc.stderr.strip()}"


def test_first_start_makes_the_databases_and_wants_the_password(
    server: dict[str, str],
) -> None:
    assert psql(server, PASSWORD, "select current_user, current_database()") == "binder|binder"
    assert psql(server, PASSWORD, "select current_database()", "jupyterhub") == "jupyterhub"
    wrong = psql(server, "guess", "select 1")
    assert wrong.startswith("refused") and "password authentication failed" in wrong
    # scram-sha-256 on the wire and in the catalogue, never md5 or trust.
    assert psql(server, PASSWORD, "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid") == "t"
    hba = docker("exec", server["name"], "cat", "/var/lib/postgresql/data/pg_hba.conf").stdout
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "binder", "peer", "map=operator"],
        ["host", "all", "binder", "samenet", "scram-sha-256"],
    ]


def test_stop_with_a_session_open_is_clean_and_the_data_stays(server: dict[str, str]) -> None:
    name = server["name"]
    made = psql(server, PASSWORD, "create table kept (x int); insert into kept values (7)")
    assert made.splitlines() == ["CREATE TABLE", "INSERT 0 1"]
    session = subprocess.Popen(
        ["docker", "run", "--rm", "--network", name, "-e", f"PGPASSWORD={PASSWORD}"]
        + ["--entrypoint", "psql", server["image"], "-h", name, "-U", "binder", "-d", "binder"]
        + ["-c", "select pg_sleep(120)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        started = time.monotonic()
        docker("stop", "--time", "30", name)  # SIGTERM, as Swarm sends it
        stopped_in = time.monotonic() - started
    finally:
        session.wait(timeout=60)
    assert docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    assert stopped_in < 10, stopped_in  # a fast shutdown, not a wait for the session
    assert "database system is shut down" in logs_of(name)
    docker("start", name)
    wait_ready(name)
    logs = logs_of(name)
    assert "database system was shut down at" in logs
    assert "was interrupted" not in logs
    assert logs.count("initialising") == 1  # by the first start only
    assert psql(server, PASSWORD, "select x from kept") == "7"
