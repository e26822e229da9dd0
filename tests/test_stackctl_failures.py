"""``swarmbinder up`` failing for real on the test-ground engine: a port that is taken, an image
that does not build, a service that never becomes healthy. Each is one line that says what to
look at, and leaves nothing half-made behind."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_stackctl import run_cli

from swarmbinder import hostsetup as hs
from swarmbinder import stackctl
from swarmbinder.stackctl import StackError, StackOptions

pytestmark = pytest.mark.swarm


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=check
    )
    return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stack_name() -> str:
    return "sbfail" + uuid.uuid4().hex[:8]


def nothing_of(stack: str) -> list[str]:
    """Every Swarm object named after the stack (there must be none)."""
    found = []
    for kind in ("service", "secret", "config", "network"):
        names = docker(kind, "ls", "--format", "{{.Name}}").split()
        found += [f"{kind} {n}" for n in names if n.startswith(f"{stack}_") or n == stack]
    return found


def test_a_taken_port_is_one_line_and_nothing_is_made(testground: dict[str, Any]) -> None:
    stack = stack_name()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        up = run_cli(
            "up",
            "--quiet",
            "--stack",
            stack,
            "--port",
            str(port),
            "--hub-port",
            str(free_port()),
            "--registry-port",
            str(free_port()),
        )
    assert up.returncode == 2
    assert up.stderr.strip() == (
        f"swarmbinder: error: port {port} on 127.0.0.1 is already in use; choose another with "
        "--port / SWARMBINDER_PORT"
    )
    assert nothing_of(stack) == []


def test_an_image_that_does_not_build_is_one_line_with_its_output(
    testground: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swarmbinder image's Dockerfile broken on purpose: ``up`` names the image and quotes
    the build's last lines; no secret, service or leftover build container is made."""
    marker = "broken-on-purpose-" + uuid.uuid4().hex[:8]
    images = tmp_path / "images"
    shutil.copytree(hs.IMAGES_DIR, images)
    dockerfile = images / "swarmbinder" / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    lines.insert(first_from + 1, f'RUN echo "{marker}: cannot install" && exit 3')
    dockerfile.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(hs, "IMAGES_DIR", images)
    stack = stack_name()
    options = StackOptions(
        name=stack, port=free_port(), hub_port=free_port(), registry_port=free_port()
    )
    before = docker("image", "inspect", "--format", "{{.Id}}", "swarmbinder/swarmbinder:0.1.0")

    with pytest.raises(StackError) as failed:
        stackctl.up(options)

    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("building swarmbinder/swarmbinder:0.1.0 failed: "), message
    assert f"{marker}: cannot install" in message
    assert "returned a non-zero code: 3" in message
    # The working image is still the one the tag names; nothing of the stack exists.
    assert (
        docker("image", "inspect", "--format", "{{.Id}}", "swarmbinder/swarmbinder:0.1.0") == before
    )
    assert nothing_of(stack) == []
    leftovers = docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}").splitlines()
    assert [c for c in leftovers if marker in c] == []


@pytest.fixture
def unhealthy_stack(testground: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Four services labelled as a stack: registry, hub and proxy run; binder prints a line
    and never passes its healthcheck."""
    stack = stack_name()
    marker = "cannot reach the hub at http://hub:8081 (" + uuid.uuid4().hex[:8] + ")"
    image = testground["base_images"]["debian"]
    common = ["--detach", "--no-resolve-image", "--label", f"com.docker.stack.namespace={stack}"]
    try:
        for service in ("registry", "hub", "proxy"):
            docker("service", "create", *common, "--name", f"{stack}_{service}", image,
                   "sleep", "infinity")  # fmt: skip
        docker(
            "service", "create", *common, "--name", f"{stack}_binder",
            "--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1",
            "--health-start-period", "0s", image,
            "sh", "-c", f"echo 'starting'; echo '{marker}'; sleep infinity",
        )  # fmt: skip
        yield stack, marker
    finally:
        names = [f"{stack}_{s}" for s in stackctl.SERVICES]
        docker("service", "rm", *names, check=False)


def test_a_service_that_never_becomes_healthy_names_itself_and_its_last_log_lines(
    unhealthy_stack: tuple[str, str],
) -> None:
    stack, marker = unhealthy_stack
    options = StackOptions(
        name=stack, port=free_port(), hub_port=free_port(), registry_port=free_port(), timeout=12
    )
    shown: list[str] = []

    class Recorder:
        def step(self, message: str) -> None:
            shown.append(message)

        def status(self, message: str) -> None:
            shown.append(message)

    with pytest.raises(StackError) as failed:
        stackctl.wait_healthy(options, Recorder())

    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(
        f"service {stack}_binder did not become healthy within 12 s; its last log lines: "
    ), message
    assert marker in message
    # While it waited, it said what it was waiting for.
    assert any(s.startswith("waiting for the stack: registry running") for s in shown), shown
