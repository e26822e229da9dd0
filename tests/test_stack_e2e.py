"""``swarmbinder up`` from nothing to a launch through the published ports, then ``down``.

The stack runs next to the test ground on the same engine, under a name and ports of its own,
and reuses the test ground's images (same tags and inputs, so nothing is rebuilt unless the
code changed). Binder runs in a container on the stack's overlay network, where the test
ground's git server on 127.0.0.1 is out of reach: the test serves the same repositories on
the address the node's containers reach the host by.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from swarmbinder import __version__
from swarmbinder.events import SSEDecoder

pytestmark = pytest.mark.swarm

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_IMAGE = f"swarmbinder/swarmbinder:{__version__}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def swarmbinder(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


@pytest.fixture
def git_for_containers(testground: dict[str, Any]) -> Iterator[str]:
    """The test ground's repositories over git smart HTTP on the host's address on
    docker_gwbridge, which containers on overlay networks reach the host by."""
    spec = importlib.util.spec_from_file_location("gitserver", REPO_ROOT / "stack" / "gitserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.GitHandler.project_root = str(Path(testground["state_dir"]) / "git")
    gateway = json.loads(
        docker("network", "inspect", "docker_gwbridge", "--format", "{{json .IPAM.Config}}")
    )[0]["Gateway"]
    server = ThreadingHTTPServer((gateway, 0), module.GitHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{gateway}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def read_events(url: str, timeout: float = 240) -> list[dict[str, Any]]:
    """A /build stream as a browser's EventSource reads it, up to ready or failed."""
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        while not events or events[-1]["phase"] not in ("ready", "failed"):
            chunk = resp.read1(65536)
            if not chunk:
                break
            events.extend(decoder.feed(chunk))
    return events


def stack_leftovers(stack: str) -> list[str]:
    services = docker("service", "ls", "--format", "{{.Name}}").split()
    networks = docker("network", "ls", "--format", "{{.Name}}").split()
    servers = docker(
        "service", "ls", "-q", "--filter", f"label=swarmbinder.hub={stack}_hub"
    ).split()
    return (
        [s for s in services if s.startswith(f"{stack}_") or s.startswith(f"{stack}-")]
        + [n for n in networks if n.startswith(stack)]
        + servers
    )


def test_up_launch_up_again_down(testground: dict[str, Any], git_for_containers: str) -> None:
    stack = f"sbe2e{uuid.uuid4().hex[:6]}"
    port, hub_port, registry_port = free_port(), free_port(), free_port()
    ports = ["--port", str(port), "--hub-port", str(hub_port)]
    ports += ["--registry-port", str(registry_port)]
    try:
        started = time.monotonic()
        first = swarmbinder("up", "--stack", stack, *ports, "--timeout", "240")
        assert first.returncode == 0, first.stderr[-2000:]
        assert first.stdout.strip() == f"Binder is running at http://127.0.0.1:{port}/"
        assert f"deploying stack {stack}" in first.stderr
        assert f"created secret {stack}-hub-api-token" in first.stderr
        print(f"up from nothing: {time.monotonic() - started:.1f} s", file=sys.stderr)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert json.load(resp)["ok"] is True

        repo = quote(f"{git_for_containers}binder-dockerfile.git", safe="")
        head = testground["repos"]["binder-dockerfile"]["head"]
        events = read_events(f"http://127.0.0.1:{port}/build/git/{repo}/{head}")
        phases = [e["phase"] for e in events]
        assert phases[-1] == "ready", events[-3:]
        assert "built" in phases
        ready = events[-1]
        assert ready["url"].startswith(f"http://127.0.0.1:{hub_port}/user/")
        assert ready["image"].startswith(f"127.0.0.1:{registry_port}/binder-")
        status = urllib.request.Request(
            ready["url"] + "api/status", headers={"Authorization": f"token {ready['token']}"}
        )
        with urllib.request.urlopen(status, timeout=20) as resp:
            assert "started" in json.load(resp)
        servers = docker("service", "ls", "-q", "--filter", f"label=swarmbinder.hub={stack}_hub")
        assert len(servers.split()) == 1

        deployed_image = docker(
            "service",
            "inspect",
            "--format",
            '{{index .Spec.TaskTemplate.ContainerSpec.Labels "swarmbinder.image-id"}}',
            f"{stack}_binder",
        ).strip()
        started = time.monotonic()
        again = swarmbinder("up", "--stack", stack, *ports)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "created secret" not in again.stderr
        current_image = docker("image", "inspect", "--format", "{{.Id}}", SERVICE_IMAGE)
        if current_image.removeprefix("sha256:")[:12] == deployed_image:
            assert f"nothing changed: stack {stack} is up to date" in again.stderr, again.stderr
            assert "deploying" not in again.stderr
            assert time.monotonic() - started < 30
        else:
            # Someone changed swarmbinder's code meanwhile (the service image is shared with
            # the test ground): the one right reason to deploy again.
            assert f"deploying stack {stack} (swarmbinder-image)" in again.stderr, again.stderr

        # Another stack on a port this one holds: refused in one line, nothing made.
        taken = swarmbinder("up", "--stack", f"{stack}x", "--port", str(port))
        assert taken.returncode == 2
        assert taken.stderr.strip().splitlines()[-1] == (
            f"swarmbinder: error: port {port} on 127.0.0.1 is already in use; "
            "choose another with --port / SWARMBINDER_PORT"
        )
        assert not docker("secret", "ls", "-q", "--filter", f"name={stack}x-").split()
    finally:
        gone = swarmbinder("down", "--stack", stack, "--purge", timeout=180)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert "removing 1 user server(s)" in gone.stderr
    assert stack_leftovers(stack) == []
    assert not docker("secret", "ls", "-q", "--filter", f"name={stack}-").split()
    assert not docker("volume", "ls", "-q", "--filter", f"name={stack}_").split()
