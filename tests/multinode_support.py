"""The 3-node test ground for the ``swarm`` tests of several nodes, and helpers to use it.

``multinode`` brings up ``stack/testground up --nodes 3`` once per session and removes it at the
end (``down --nodes 3``) unless SWARMBINDER_KEEP_MULTINODE=1. ``healthy`` (per test) brings every
node back (a test may have killed one: it is made again and rejoins) and sets every node active,
so each test starts from three ready nodes whatever the previous one did.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarmbinder.buildjob import BuildRequest, BuildSettings
from swarmbinder.builds import BuildManager
from swarmbinder.buildwatch import Build
from swarmbinder.sticky import Node, rank_nodes
from swarmbinder.swarm import SwarmClient

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTGROUND = REPO_ROOT / "stack" / "testground"
NODES = 3

#: The "expensive" step of the test repositories: what a pip install is in real ones. Its layer
#: is what a sticky rebuild finds in the node's cache and a build on another node redoes.
#: ``{name}`` makes the layer the repository's own, so no other repository's build caches it.
SLOW_STEP = "RUN echo {name} > /opt/repo && sleep 8 && head -c 30000000 /dev/urandom > /opt/blob"


def _up() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(TESTGROUND), "up", "--quiet", "--nodes", str(NODES)],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"stack/testground up --nodes {NODES} failed with exit code {proc.returncode}")
    ground: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return ground


@pytest.fixture(scope="session")
def multinode() -> Iterator[dict[str, Any]]:
    """The 3-node ground's description (see stack/multinode/)."""
    ground = _up()
    yield ground
    if os.environ.get("SWARMBINDER_KEEP_MULTINODE") != "1":
        subprocess.run(
            # The image store is a cache between runs, like the single-node ground's images.
            [sys.executable, str(TESTGROUND), "down", "--nodes", str(NODES), "--keep-image-store"],
            capture_output=True,
            check=False,
        )


def docker_on(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", host, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ready_ground() -> dict[str, Any]:
    """The ground with all three nodes ready and active (re-made after a test killed one)."""
    ground = _up()
    for node in ground["nodes"]:
        docker_on(ground["docker_host"], "node", "update", "--availability", "active", node["name"])
    return ground


@pytest.fixture
def healthy(multinode: dict[str, Any]) -> dict[str, Any]:
    """The ground with all three nodes ready and active (re-made after a test killed one)."""
    return ready_ground()


def node_host(ground: dict[str, Any], hostname: str) -> str:
    return next(n["docker_host"] for n in ground["nodes"] if n["name"] == hostname)


def has_image(ground: dict[str, Any], hostname: str, image: str) -> bool:
    return docker_on(node_host(ground, hostname), "image", "inspect", image).returncode == 0


def node_containers(ground: dict[str, Any], hostname: str, service: str) -> list[str]:
    proc = docker_on(
        node_host(ground, hostname),
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.swarm.service.name={service}",
    )
    return proc.stdout.split()


def ranking(ground: dict[str, Any], url: str) -> list[str]:
    """Hostnames in the order sticky placement tries them for ``url`` (all nodes up)."""
    nodes = [Node(id=n["node_id"] or n["name"], hostname=n["name"]) for n in ground["nodes"]]
    return [n.hostname for n in rank_nodes(url, nodes)]


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@swarmbinder.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@swarmbinder.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout.strip()


@dataclass
class Repo:
    """A test repository served by the ground's git server; ``commit`` adds a commit."""

    name: str
    url: str
    work: Path
    bare: Path

    def commit(self, files: dict[str, str]) -> str:
        for path, content in files.items():
            (self.work / path).write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "change")
        git(self.work, "push", "-q", str(self.bare), "main")
        git(self.bare, "update-server-info")
        return git(self.work, "rev-parse", "HEAD")

    @property
    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")


def make_repo(ground: dict[str, Any], work_root: Path, name: str, dockerfile: str) -> Repo:
    work = work_root / name
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    (work / "Dockerfile").write_text(dockerfile.replace("{name}", name))
    (work / "hello.txt").write_text("first version\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    bare = Path(ground["git_root"]) / f"{name}.git"
    git(work_root, "clone", "-q", "--bare", str(work), str(bare))
    git(bare, "update-server-info")
    return Repo(name, f"{ground['git_base_url']}{name}.git", work, bare)


def repo_ranked(
    ground: dict[str, Any],
    work_root: Path,
    prefix: str,
    dockerfile: str,
    want: Callable[[list[str]], bool],
) -> Repo:
    """A new repository whose ranking satisfies ``want`` (names are tried until one does)."""
    for i in range(200):
        name = f"{prefix}-{i}"
        if want(ranking(ground, f"{ground['git_base_url']}{name}.git")):
            return make_repo(ground, work_root, name, dockerfile)
    raise AssertionError("no repository name with the wanted ranking")


def slow_dockerfile(ground: dict[str, Any]) -> str:
    return (
        f"FROM {ground['images']['singleuser']}\nUSER root\n{SLOW_STEP}\nUSER 1000\n"
        "COPY --chown=1000:1000 . /home/jovyan/\n"
    )


def request_for(ground: dict[str, Any], run: str, repo: Repo, ref: str) -> BuildRequest:
    slug = f"mn{run}-{repo.name}"
    return BuildRequest(
        provider="git",
        spec=f"{repo.url}/{ref}",
        repo_url=repo.url,
        ref=ref,
        build_slug=slug,
        image=f"{ground['image_prefix']}{slug}:{ref}",
    )


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


def settings_for(ground: dict[str, Any], **overrides: Any) -> BuildSettings:
    values: dict[str, Any] = {
        "builder_image": ground["images"]["builder"],
        "registry_url": ground["registry_url"],
        # Housekeeping is the tests' business: a failed build's service is checked by name.
        "cleanup_interval": 3600,
        "poll_interval": 0.25,
    }
    return BuildSettings(**{**values, **overrides})


@pytest.fixture
async def swarm(multinode: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    async with SwarmClient.connect(multinode["docker_host"]) as client:
        yield client


@pytest.fixture
async def manager_factory(
    swarm: SwarmClient, multinode: dict[str, Any]
) -> AsyncIterator[Callable[..., BuildManager]]:
    """Build managers on the 3-node swarm; every service they made is removed afterwards."""
    made: list[BuildManager] = []

    def make(ground: dict[str, Any], **overrides: Any) -> BuildManager:
        manager = BuildManager(swarm, settings_for(ground, **overrides))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        names = [b.name for b in manager.builds]
        await manager.close()
        for name in names:
            try:
                await swarm.remove_service(name, reaper_image=multinode["images"]["builder"])
            except Exception:  # the ground may be half down after a node-loss test
                pass


async def finished(build: Build, seconds: float) -> Build:
    await asyncio.wait_for(build.done.wait(), seconds)
    return build


async def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A docker CLI call off the event loop (the build watchers keep running meanwhile)."""
    proc = await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:5])} failed: {proc.stderr.strip()}")
    return proc


async def gone(swarm: SwarmClient, service: str, seconds: float) -> None:
    """Wait until the service no longer exists."""
    async with asyncio.timeout(seconds):
        while True:
            if await swarm.inspect_service(service) is None:
                return
            await asyncio.sleep(0.25)
