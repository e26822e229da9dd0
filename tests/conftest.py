"""Shared fixtures.

Tests marked ``swarm`` run against the real test ground (``stack/testground up``): a Docker
engine in swarm mode, the stack's registry as a Swarm service, and a git smart-HTTP server with
the test repositories. ``testground`` brings it up once per session (idempotent and cached, so
a warm run costs a few seconds) and yields the JSON it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    yield ground
