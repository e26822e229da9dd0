"""Test-ground pieces the build tests make for themselves: registries (plain or with htpasswd
auth) as Swarm services, extra git repositories, a cuttable proxy in front of the engine, and
helpers shared by the build test modules.

Every object gets a unique name and is removed afterwards: other test runs share the engine.
Import the fixtures into a test module (``from build_fixtures import swarm, ...``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from swarmbinder.buildjob import BuildRequest, BuildSettings
from swarmbinder.buildwatch import Build
from swarmbinder.events import BuildEvent
from swarmbinder.handlers.registrytoken import add_registry_token_route
from swarmbinder.labels import KIND_BUILD
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.registrytokens import TOKEN_PATH, SigningPair, TokenIssuer, make_signing_pair
from swarmbinder.swarm import SwarmClient

TEST_LABEL = "swarmbinder.test-run"
HTPASSWD_PATH = "/etc/docker/registry/htpasswd"
TOKEN_CERT_PATH = "/etc/docker/registry/token-cert.pem"


def docker(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["docker", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- registries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixtureRegistry:
    service: str
    host: str  # 127.0.0.1:PORT, as image names and the node's daemon see it
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def _registry_status(host: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextlib.contextmanager
def running_registry(ground: dict[str, Any], *, auth: bool) -> Iterator[FixtureRegistry]:
    """A Distribution registry as a Swarm service on a free host port, storage on tmpfs;
    with ``auth``, htpasswd auth for one random user."""
    name = f"sbtest-registry-{uuid.uuid4().hex[:10]}"
    image = ground["images"]["registry"]
    port = free_port()
    username = password = None
    cmd = [
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--label",
        f"{TEST_LABEL}={name}",
        "--no-resolve-image",
        "--publish",
        f"mode=host,published={port},target=5000",
        "--mount",
        "type=tmpfs,dst=/var/lib/registry",
        "--constraint",
        "node.role==manager",
    ]
    secret_made = False
    try:
        if auth:
            username, password = "builder", secrets.token_urlsafe(18)
            # The registry image carries apache2-utils: bcrypt entries without a host package.
            entry = docker(
                "run", "--rm", "--entrypoint", "htpasswd", image, "-Bbn", username, password
            )
            docker("secret", "create", "--label", f"{TEST_LABEL}={name}", name, "-", input=entry)
            secret_made = True
            cmd += [
                "--secret",
                f"source={name},target={HTPASSWD_PATH}",
                "--env",
                "REGISTRY_AUTH=htpasswd",
                "--env",
                "REGISTRY_AUTH_HTPASSWD_REALM=swarmbinder-test",
                "--env",
                f"REGISTRY_AUTH_HTPASSWD_PATH={HTPASSWD_PATH}",
            ]
        docker(*cmd, image)
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _registry_status(host) != (401 if auth else 200):
            if time.monotonic() > deadline:
                raise AssertionError(f"registry {name} did not come up on {host}")
            time.sleep(0.3)
        yield FixtureRegistry(name, host, username, password)
    finally:
        remove_registry(name)
        if secret_made:
            _remove_secret_when_free(name)


class TokenRealm:
    """Binder's registry token endpoint, served from a thread of the test process on a free
    port of ``host``, so the engine (which fetches the tokens) reaches it while tests await."""

    def __init__(self, issuer: TokenIssuer, host: str = "127.0.0.1") -> None:
        self.issuer = issuer
        self.host = host
        self.port = free_port() if host == "127.0.0.1" else 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/{TOKEN_PATH}"

    def __enter__(self) -> TokenRealm:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise AssertionError("the token realm did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        add_registry_token_route(app, "/", self.issuer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        if not self.port:
            self.port = runner.addresses[0][1]
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


def make_issuer(
    pair: SigningPair | None = None, *, prefix: str = "sbtest-", **overrides: Any
) -> TokenIssuer:
    """An issuer with a fresh key, an operator ``binder``/``operator-pw`` and a pull account
    ``puller``/``pull-pw`` for repositories under ``prefix``."""
    pair = pair or make_signing_pair()
    values: dict[str, Any] = {
        "key_pem": pair.key_pem.decode(),
        "certificate_pem": pair.certificate_pem.decode(),
        "issuer": "swarmbinder",
        "service": "swarmbinder-registry",
        "operator": ("binder", "operator-pw"),
        "puller": ("puller", "pull-pw"),
        "pull_prefix": prefix,
    }
    values.update(overrides)
    return TokenIssuer(**values)


@contextlib.contextmanager
def token_registry(
    ground: dict[str, Any], certificate_pem: bytes, realm: str
) -> Iterator[FixtureRegistry]:
    """A Distribution registry with ``auth: token`` trusting ``certificate_pem``, whose realm
    is ``realm``; a Swarm service on a free host port, storage on tmpfs."""
    name = f"sbtest-registry-{uuid.uuid4().hex[:10]}"
    port = free_port()
    docker(
        "secret",
        "create",
        "--label",
        f"{TEST_LABEL}={name}",
        name,
        "-",
        input=certificate_pem.decode(),
    )
    try:
        docker(
            "service", "create", "--detach", "--name", name,
            "--label", f"{TEST_LABEL}={name}",
            "--no-resolve-image",
            "--publish", f"mode=host,published={port},target=5000",
            "--mount", "type=tmpfs,dst=/var/lib/registry",
            "--constraint", "node.role==manager",
            "--secret", f"source={name},target={TOKEN_CERT_PATH}",
            "--env", "REGISTRY_AUTH=token",
            "--env", f"REGISTRY_AUTH_TOKEN_REALM={realm}",
            "--env", "REGISTRY_AUTH_TOKEN_SERVICE=swarmbinder-registry",
            "--env", "REGISTRY_AUTH_TOKEN_ISSUER=swarmbinder",
            "--env", f"REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE={TOKEN_CERT_PATH}",
            ground["images"]["registry"],
        )  # fmt: skip
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _registry_status(host) != 401:
            if time.monotonic() > deadline:
                raise AssertionError(f"registry {name} did not come up on {host}")
            time.sleep(0.3)
        yield FixtureRegistry(name, host)
    finally:
        remove_registry(name)
        _remove_secret_when_free(name)


def remove_registry(name: str) -> None:
    with contextlib.suppress(AssertionError):
        docker("service", "rm", name)


def _remove_secret_when_free(name: str) -> None:
    # The service's task may still hold the secret for a moment after `service rm`.
    deadline = time.monotonic() + 30
    while True:
        try:
            docker("secret", "rm", name)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def manifest_status(
    registry: FixtureRegistry, image: str, *, auth: tuple[str, str] | None = None
) -> int:
    name, tag = image.removeprefix(registry.host + "/").rsplit(":", 1)
    req = urllib.request.Request(
        f"{registry.url}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- git repositories ------------------------------------------------------------------------


def _git(args: list[str], cwd: Path, home: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "swarmbinder tests",
        "GIT_AUTHOR_EMAIL": "tests@swarmbinder.invalid",
        "GIT_COMMITTER_NAME": "swarmbinder tests",
        "GIT_COMMITTER_EMAIL": "tests@swarmbinder.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(home),
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class GitRepo:
    name: str
    url: str
    sha: str


@contextlib.contextmanager
def git_repo(ground: dict[str, Any], files: dict[str, str], prefix: str) -> Iterator[GitRepo]:
    """A one-commit bare repository served by the test ground's git server."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    root = Path(ground["state_dir"]) / "git"
    bare = root / f"{name}.git"
    with tempfile.TemporaryDirectory(prefix="sbtest-repo-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        for path, content in files.items():
            (work / path).write_text(content)
        _git(["init", "-q", "-b", "main"], work, Path(tmp))
        _git(["add", "-A"], work, Path(tmp))
        _git(["commit", "-q", "-m", "test repository"], work, Path(tmp))
        _git(["clone", "-q", "--bare", str(work), str(bare)], Path(tmp), Path(tmp))
        _git(["update-server-info"], bare, Path(tmp))
        sha = _git(["rev-parse", "HEAD"], work, Path(tmp))
    try:
        yield GitRepo(name, f"{ground['git_base_url']}{name}.git", sha)
    finally:
        shutil.rmtree(bare, ignore_errors=True)


def slow_dockerfile(ground: dict[str, Any], seconds: int) -> dict[str, str]:
    # A unique line before the sleep, or the daemon's layer cache skips it on the next run.
    return {
        "Dockerfile": f"FROM {ground['images']['singleuser']}\n"
        f"RUN echo {uuid.uuid4().hex} && sleep {seconds}\n",
        "README.md": "A test repository whose build takes a while\n",
    }


# -- an engine that can stop answering -------------------------------------------------------


class EngineProxy:
    """A unix socket that forwards to the Docker engine until it is cut."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a dead engine would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


# -- fixtures and helpers shared by the build tests ------------------------------------------


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    client = SwarmClient.connect()
    yield client
    await client.close()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def cleanup_builds(swarm: SwarmClient, run_id: str) -> AsyncIterator[None]:
    yield
    for service in await swarm.list_services({KIND_LABEL: KIND_BUILD}):
        if run_id in service.labels.get("swarmbinder.build-slug", ""):
            await swarm.remove_service(service.id)


def build_settings(ground: dict[str, Any], **overrides: Any) -> BuildSettings:
    values: dict[str, Any] = {
        "builder_image": ground["images"]["builder"],
        "sticky": True,
        "cleanup_interval": 3600,
    }
    values.update(overrides)
    return BuildSettings(**values)


def make_request(
    run_id: str, repo_url: str, ref: str, *, registry: str, label: str
) -> BuildRequest:
    slug = f"test-{run_id}-{label}"
    return BuildRequest(
        provider="git",
        spec=f"{repo_url}/{ref}",
        repo_url=repo_url,
        ref=ref,
        build_slug=slug,
        image=f"{registry}/sbtest-{slug}:{ref}",
    )


def ground_request(
    ground: dict[str, Any], repo: str, run_id: str, *, registry: str | None = None
) -> BuildRequest:
    info = ground["repos"][repo]
    registry = registry or ground["registry"]
    return make_request(run_id, info["url"], info["commits"][-1], registry=registry, label=repo)


async def collect(build: Build, within: float = 240) -> list[BuildEvent]:
    events = []
    async with asyncio.timeout(within):
        async for event in build.events():
            events.append(event)
    return events


async def wait_until_gone(swarm: SwarmClient, name: str, within: float) -> float:
    """Seconds until the service ``name`` no longer exists; fails after ``within``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(within):
        while True:
            if await swarm.inspect_service(name) is None:
                break
            await asyncio.sleep(0.25)
    return loop.time() - start


def service_json(name: str) -> dict[str, Any]:
    result: list[dict[str, Any]] = json.loads(docker("service", "inspect", name))
    return result[0]
