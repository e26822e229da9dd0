"""The stack's state for real: ``up`` pins it to a labelled node, ``swarmbinder admin`` opens
the stack's console with nothing given (in tmux, showing a build started through the stack,
its token in no argument list and on no screen), and a ban and an image survive ``backup``,
``down --purge``, ``up`` and ``restore``.

One deployment for the whole file, next to the test ground on the same engine, under a name
and ports of its own, from the test ground's images (as test_stack_replicas_e2e.py does).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from test_stack_e2e import (  # the single-replica e2e test's helpers and git server
    deployed_stack,
    docker,
    free_port,
    read_events,
    swarmbinder,
)

pytestmark = pytest.mark.swarm


def node_labels() -> dict[str, str]:
    shown = docker("node", "inspect", "self", "--format", "{{json .Spec.Labels}}")
    labels: dict[str, str] = json.loads(shown) or {}
    return labels


def hostname() -> str:
    return docker("node", "inspect", "self", "--format", "{{.Description.Hostname}}").strip()


def binder_container(stack: str) -> str:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_binder"
    ).split()[0]


def secret(stack: str, name: str) -> str:
    """A secret's value, read inside Binder's task as an operator would."""
    return docker("exec", binder_container(stack), "cat", f"/run/secrets/{name}").strip()


def admin_api(stack: str, port: int, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/admin/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {secret(stack, 'admin_token')}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=20) as resp:
        return json.load(resp)


def manifest_status(stack: str, port: int, registry_port: int, image: str) -> int:
    """HEAD of the image's manifest in the stack's registry, with a pull token that Binder's
    endpoint gives its own login."""
    name, tag = image.split("/", 1)[1].rsplit(":", 1)
    login = base64.b64encode(f"binder:{secret(stack, 'registry_password')}".encode()).decode()
    realm = f"http://127.0.0.1:{port}/registry/token"
    grant = urllib.request.Request(
        f"{realm}?service=swarmbinder-registry&scope=repository:{name}:pull",
        headers={"Authorization": f"Basic {login}"},
    )
    with urllib.request.urlopen(grant, timeout=20) as resp:
        token = json.load(resp)["token"]
    head = urllib.request.Request(
        f"http://127.0.0.1:{registry_port}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.docker.distribution.manifest.v2+json",
        },
    )
    try:
        with urllib.request.urlopen(head, timeout=20) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def deployed(
    testground: dict[str, Any],
    git_for_containers: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    with deployed_stack("sbpin", tmp_path_factory.mktemp("state"), git_for_containers) as made:
        yield made
    assert f"swarmbinder.state.{made['stack']}" not in node_labels()


@pytest.mark.timeout(600)
def test_up_pins_the_state_to_this_node(deployed: dict[str, Any]) -> None:
    stack, up = deployed["stack"], deployed["up"]
    label = f"swarmbinder.state.{stack}"
    assert (
        f"the state of stack {stack} (registry, hub database, Binder's store) is kept on node "
        f"{hostname()} (labelling it {label})"
    ) in up.stderr
    assert node_labels()[label] == "true"
    placement = "{{json .Spec.TaskTemplate.Placement.Constraints}}"
    for service in ("binder", "hub", "registry"):
        shown = docker("service", "inspect", "--format", placement, f"{stack}_{service}")
        constraints = json.loads(shown)
        assert f"node.labels.{label} == true" in constraints, service
    # up names the command that opens this stack's console (--stack when others run too).
    assert (
        "open the admin console with: swarmbinder admin\n" in up.stderr
        or f"open the admin console with: swarmbinder admin --stack {stack}\n" in up.stderr
    ), up.stderr


def test_a_node_no_swarm_has_is_refused_and_nothing_made(deployed: dict[str, Any]) -> None:
    other = f"{deployed['stack']}x"
    ports = ["--port", str(free_port()), "--hub-port", str(free_port())]
    ports += ["--registry-port", str(free_port())]
    proc = swarmbinder("up", "--stack", other, *ports, "--state-node", "no-such-node")
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "swarmbinder: error: --state-node no-such-node: no node of this swarm is called that"
        )
    ), proc.stderr
    assert "checking the images" not in proc.stderr
    assert not docker("secret", "ls", "-q", "--filter", f"name={other}-").split()
    assert f"swarmbinder.state.{other}" not in node_labels()
    # The running stack: its label is found where it is, and nothing is deployed.
    again = swarmbinder("up", *deployed["args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"on node {hostname()} (label swarmbinder.state.{deployed['stack']})" in again.stderr
    moved = swarmbinder("up", *deployed["args"], "--state-node", "no-such-node")
    assert moved.returncode == 2, moved.stderr
    assert moved.stderr.strip().splitlines()[-1] == (
        "swarmbinder: error: --state-node no-such-node: no node of this swarm is called that "
        f"({hostname()})"
    )


def tmux(socket_name: str, *args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", socket_name, *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def screen(socket_name: str) -> str:
    return tmux(socket_name, "capture-pane", "-p", "-t", "console")


def screen_until(socket_name: str, wanted: list[str], seconds: float) -> str:
    shown = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        shown = screen(socket_name)
        if all(text in shown for text in wanted):
            return shown
        time.sleep(0.3)
    raise AssertionError(f"the console never showed {wanted}; last screen:\n{shown}")


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += process_tree(int(child))
    return found


@pytest.mark.timeout(600)
def test_admin_with_no_arguments_shows_the_live_builds(
    deployed: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    if not shutil.which("tmux"):
        pytest.fail("tmux is not installed (apt-get install tmux)")
    stack, port = deployed["stack"], deployed["port"]
    token = secret(stack, "admin_token")
    # No SWARMBINDER_* variable, no URL, no token: only --stack if other stacks run here.
    listed = swarmbinder("admin", "--stack", "no-such-stack")
    assert listed.returncode == 2 and "no stack no-such-stack deployed" in listed.stderr
    only = f"(found: {stack})" in listed.stderr
    command = [sys.executable, "-m", "swarmbinder", "admin"] + ([] if only else ["--stack", stack])
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG"))
    socket_name = "sbpin-" + uuid.uuid4().hex[:8]
    tmux(socket_name, "new-session", "-d", "-s", "console", "-x", "160", "-y", "45",
         f"env -i {env} TERM=xterm-256color {' '.join(command)}")  # fmt: skip
    events: list[dict[str, Any]] = []
    try:
        before = screen_until(socket_name, ["Connected to", "Builds"], 60)
        assert f"127.0.0.1:{port}" in before, before
        repo_name = "binder-dockerfile.git"
        rows_before = [line for line in before.splitlines() if repo_name in line]
        repo = quote(f"{git_for_containers}{repo_name}", safe="")
        head = testground["repos"]["binder-dockerfile"]["head"]
        url = f"http://127.0.0.1:{port}/build/git/{repo}/{head}"
        build = threading.Thread(target=lambda: events.extend(read_events(url)), daemon=True)
        build.start()
        deadline = time.monotonic() + 120
        new: list[str] = []
        while time.monotonic() < deadline and not new:
            shown = screen(socket_name)
            new = [ln for ln in shown.splitlines() if repo_name in ln and ln not in rows_before]
            time.sleep(0.3)
        assert new, f"no new build row appeared:\n{shown}"
        build.join(240)
        assert events and events[-1]["phase"] == "ready", events[-3:]
        after = screen_until(socket_name, [repo_name, "built"], 60)
        assert "● Connected" in after
        # The token is on no screen and in no argument list or environment of the console.
        assert token not in after
        pane = int(tmux(socket_name, "display-message", "-p", "-t", "console", "#{pane_pid}"))
        tree = process_tree(pane)
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree]
        assert any(b"admin" in c for c in cmdlines), cmdlines
        for pid in tree:
            assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        deployed["image"] = events[-1]["image"]
    finally:
        tmux(socket_name, "kill-server")


@pytest.mark.timeout(900)
def test_a_ban_and_an_image_survive_backup_purge_up_restore(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    stack, port = deployed["stack"], deployed["port"]
    image = deployed.get("image")
    assert image, "the console test builds the image this test backs up"
    pattern = f"sbpin-banned-{uuid.uuid4().hex[:6]}/.*"
    admin_api(stack, port, "POST", "bans", {"kind": "spec", "pattern": pattern, "reason": "test"})
    assert manifest_status(stack, port, deployed["registry_port"], image) == 200

    backup = tmp_path / "backup"
    started = time.monotonic()
    saved = swarmbinder("backup", str(backup), "--stack", stack)
    print(f"backup: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert saved.returncode == 0, saved.stderr[-2000:]
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["stack"] == stack and manifest["store"] == "sqlite"
    files = sorted(p.name for p in backup.iterdir())
    assert files == ["binder.sqlite", "hub.sqlite", "manifest.json", "registry.tar"]
    assert all((backup / f).stat().st_mode & 0o777 == 0o600 for f in files)
    again = swarmbinder("backup", str(backup), "--stack", stack)
    assert again.returncode == 2 and "is not an empty directory" in again.stderr

    gone = swarmbinder("down", "--stack", stack, "--purge", timeout=240)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert f"label swarmbinder.state.{stack} of node {hostname()}" in gone.stderr
    assert f"swarmbinder.state.{stack}" not in node_labels()
    fresh = swarmbinder("up", *deployed["args"], "--timeout", "300")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    bans = admin_api(stack, port, "GET", "bans")["bans"]
    assert pattern not in json.dumps(bans)
    assert manifest_status(stack, port, deployed["registry_port"], image) == 404

    started = time.monotonic()
    restored = swarmbinder("restore", str(backup), "--stack", stack)
    print(f"restore: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert "the stack is healthy" in restored.stderr
    bans = admin_api(stack, port, "GET", "bans")["bans"]
    assert pattern in json.dumps(bans), bans
    assert manifest_status(stack, port, deployed["registry_port"], image) == 200
