"""Shared fixtures.

Tests marked ``swarm`` run against the real test ground (``stack/testground up``): a Docker
engine in swarm mode, the stack's registry as a Swarm service, and a git smart-HTTP server with
the test repositories. ``testground`` brings it up once per session (idempotent and cached, so
a warm run costs a few seconds) and yields the JSON it prints.

Every async test, in every tier, fails if a callback blocks its event loop
(``loop_watch``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loop_watch import event_loop_never_blocked, pytest_runtest_call, watched_event_loop
from pg_support import pg_server, pg_url, store_where

REPO_ROOT = Path(__file__).resolve().parent.parent

# for pytest
__all__ = [
    "event_loop_never_blocked",
    "git_for_containers",
    "pg_server",
    "pg_url",
    "store_where",
    "pytest_runtest_call",
    "watched_event_loop",
]


@pytest.fixture(scope="session")
def testground() -> Iterator[dict[str, Any]]:
    """The test ground's description: docker_host, registry, git_base_url, repos, images."""
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "testground"), "up", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"stack/testground up failed with exit code {proc.returncode}")
    ground: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    os.environ.setdefault("DOCKER_HOST", ground["docker_host"])
    started = time.time()
    yield ground
    asyncio.run(_remove_finished_test_builds(ground, since=started))


@pytest.fixture(scope="module")
def git_for_containers(testground: dict[str, Any]) -> Iterator[str]:
    """The test ground's repositories over git smart HTTP where containers on overlay networks
    reach this machine (the stack tests' Binder and builders clone from it)."""
    from test_stack_e2e import serve_git_for_containers

    with serve_git_for_containers(testground) as url:
        yield url


async def _remove_finished_test_builds(ground: dict[str, Any], since: float) -> None:
    """Build services this session's apps left when they stopped. A running service keeps its
    finished builds for housekeeping and the next start adopts them, but each test serves under
    an image prefix of its own that no later service adopts. Only finished builds created during
    this session are removed, so another session's builds on a shared engine stay."""
    from swarmbinder.swarm import SwarmClient

    async with SwarmClient.connect(ground["docker_host"]) as swarm:
        for service in await swarm.list_services({"swarmbinder.kind": "build"}):
            labels = service.labels
            if not labels.get("swarmbinder.image", "").startswith(ground["image_prefix"]):
                continue
            if float(labels.get("swarmbinder.created") or 0) < since:
                continue
            tasks = await swarm.tasks(service.name)
            if tasks and all(task.terminal for task in tasks):
                await swarm.remove_service(service.name)


def _build_and_push(dockerfile: str, tag: str) -> None:
    """Build an image from a Dockerfile given as text and push it to the test ground registry."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    subprocess.run(["docker", "push", "-q", tag], capture_output=True, check=True, timeout=300)


@pytest.fixture(scope="session")
def launchable_image(testground: dict[str, Any]) -> Iterator[str]:
    """An image under the hub's image prefix that runs jupyterhub-singleuser, in the registry.

    FROM the single-user base with one label layer: the push shares every other layer, so it
    takes about a second.
    """
    run = uuid.uuid4().hex[:10]
    tag = f"{testground['image_prefix']}launchtest-jupyter:{run}"
    _build_and_push(
        f"FROM {testground['images']['singleuser']}\nLABEL swarmbinder.test-run={run}\n", tag
    )
    yield tag
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


@pytest.fixture(scope="session")
def image_without_jupyter(testground: dict[str, Any]) -> Iterator[str]:
    """An image under the hub's image prefix that has no jupyterhub-singleuser at all."""
    run = uuid.uuid4().hex[:10]
    tag = f"{testground['image_prefix']}launchtest-nojupyter:{run}"
    base = testground["base_images"]["debian"]
    _build_and_push(f"FROM {base}\nLABEL swarmbinder.test-run={run}\n", tag)
    yield tag
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)
