"""A real PostgreSQL server for the store's tests, from Debian's packages.

One server per session (``pg_server``), started from ``initdb`` in a temporary directory and
listening on 127.0.0.1 on a free port, with a password user (``binder``) as the store would use
in production; every test that asks for ``pg_url`` gets a fresh database of its own (a
``CREATE DATABASE`` is a file copy, tens of milliseconds). A test that stops the server (an
outage) starts a private one with :func:`start_server` instead of stopping the shared one.

PostgreSQL refuses to run as root, so as root the programs run as the ``postgres`` OS user
(``runuser``). The server's ``fsync`` is off: these databases are thrown away.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swarmbinder import hostsetup
from swarmbinder.store import Store

USER = "binder"
PASSWORD = "pg-test-" + uuid.uuid4().hex[:12]


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PgServer:
    bin_dir: Path
    base: Path
    port: int
    #: fsync and synchronous commits on, as in production (benchmarks); off for tests.
    durable: bool = False

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, database: str, user: str = USER) -> str:
        """``store_url`` for ``database`` (never with the password: that is ``PASSWORD``)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], timeout: float = 60) -> str:
        proc = subprocess.run(
            _as_postgres(args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr or proc.stdout}")
        return proc.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the server's Unix socket; its output."""
        return self._run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.base),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ]
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base}"
        options += " -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.base / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )

    def stop(self) -> None:
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            timeout=90,
        )

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        self.psql(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server(*, durable: bool = False) -> PgServer:
    """initdb and start a server of our own; :func:`remove_server` when done."""
    bin_dir = hostsetup.postgres_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="swarmbinder-pg-"))
    base.chmod(0o755)
    pwfile = base / "superuser-password"
    pwfile.write_text(uuid.uuid4().hex + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    server = PgServer(bin_dir, base, _free_port(), durable)
    server._run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        timeout=120,
    )
    server.start()
    server.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
    return server


def remove_server(server: PgServer) -> None:
    try:
        server.stop()
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    shutil.rmtree(server.base, ignore_errors=True)


def wait_until_down(server: PgServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) != 0:
                return
        time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (not to be stopped: see :func:`start_server`)."""
    server = start_server()
    yield server
    remove_server(server)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_where(request: pytest.FixtureRequest) -> str:
    """Where a test's store lives, once per backend: a private SQLite store (``:memory:``), or
    a fresh PostgreSQL database's URL. Open it with :func:`open_store_at`."""
    if request.param == "sqlite":
        return ":memory:"
    url: str = request.getfixturevalue("pg_url")
    return url


async def open_store_at(where: str, clock: Callable[[], float] = time.time) -> Store:
    if where.startswith("postgresql://"):
        return await Store.connect_postgres(where, PASSWORD, clock=clock, wait_seconds=0)
    return await Store.open(where, clock=clock)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """``store_url`` of a fresh, empty database owned by the ``binder`` user."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)
