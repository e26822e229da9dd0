"""The whole stack on the 3-node ground: ``swarmbinder up --tls local`` run against the manager
(DOCKER_HOST), the registry over TLS for every node's engine with no ``insecure-registries``.

One deployment for the file, on the ground the other multi-node tests use: builds on the
labelled workers (node2, node3), user servers on workers. Checked as a user and an operator
would see it: ``up`` builds nothing (the ground seeds every node with the stack's images); the
test repository is built and launched through HTTPS verified against the root ``up`` copied
out; the build ran on a worker and the final server on the other worker, which pulled the image
over TLS; no engine lists the stack's registry as insecure; the CA's key is mounted by the TLS
proxy alone and the host's /etc/docker by the trust service alone; a worker killed while a
launch's server task is on it, and the next launch is ready on the remaining worker; ``down
--purge`` leaves no service, secret or config of the stack.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import multinode_support as mns
import pytest
from multinode_support import docker_on, has_image, ready_ground
from test_stack_e2e import swarmbinder as run_cli
from test_stack_tls_e2e import read_events_https, root_of

# One deployment (up ~1 min) serves both tests; a launch may build first.
pytestmark = [pytest.mark.swarm, pytest.mark.timeout(600)]

multinode = mns.multinode

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_LABEL = "swarmbinder.build"
#: Ports on node1 apart from the ground's own (its hub 8000, its registry 5000).
PORTS = {"port": 8585, "hub-port": 8100, "registry-port": 5100, "http-port": 8180}
PORTS |= {"https-port": 8543, "hub-https-port": 8643, "registry-https-port": 5443}


def swarmbinder(ground: dict[str, Any], *args: str, timeout: float = 600, engine: str = "") -> Any:
    """The CLI on this machine, driving the ground's manager (or ``engine``) through
    DOCKER_HOST."""
    env = {
        "DOCKER_HOST": engine or ground["docker_host"],
        "SWARMBINDER_PUBLIC_HOST": manager_ip(ground),
        "SWARMBINDER_HUB_CONSTRAINTS": "node.role==worker",
    }
    return run_cli(*args, timeout=timeout, env_extra=env)


def manager_ip(ground: dict[str, Any]) -> str:
    return str(next(n["ip"] for n in ground["nodes"] if n["role"] == "manager"))


def on_manager(ground: dict[str, Any], *args: str) -> str:
    proc = docker_on(ground["docker_host"], *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def stack_objects(ground: dict[str, Any], stack: str) -> list[str]:
    """Every service, secret and config of the stack left on the swarm."""
    left = []
    for kind in ("service", "secret", "config"):
        names = on_manager(ground, kind, "ls", "--format", "{{.Name}}").split()
        left += [f"{kind} {n}" for n in names if n.startswith((f"{stack}_", f"{stack}-"))]
    servers = on_manager(
        ground, "service", "ls", "-q", "--filter", f"label=swarmbinder.hub={stack}_hub"
    )
    return left + [f"user server {s}" for s in servers.split()]


@pytest.fixture(scope="module")
def deployed(
    multinode: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    ground = ready_ground()
    stack = f"sbmn{uuid.uuid4().hex[:4]}"
    ip = manager_ip(ground)
    git = ground["repos"]["binder-dockerfile"]["url"]
    config = tmp_path_factory.mktemp("mn") / "binder.yaml"
    git_host = git.split("://", 1)[1].split(":", 1)[0]
    config.write_text(
        (REPO_ROOT / "stack" / "config" / "binder.yaml").read_text()
        + f"\nallowed_outbound_networks: [{git_host}/32]\n"
    )
    for worker in ("node2", "node3"):
        on_manager(ground, "node", "update", "--label-add", f"{BUILD_LABEL}=true", worker)
    args = ["--stack", stack, "--config", str(config), "--tls", "local", "--host", ip]
    args += [f"--{flag}={port}" for flag, port in PORTS.items()]
    try:
        started = time.monotonic()
        up = swarmbinder(ground, "up", *args, "--timeout", "240")
        seconds = time.monotonic() - started
        print(f"up against the manager: {seconds:.1f} s", file=sys.stderr)
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"ground": ground, "stack": stack, "ip": ip, "up": up, "args": args, "git": git}
    finally:
        # The killed worker back first: a down node keeps its tasks (and the networks) for good.
        ground = ready_ground()
        started = time.monotonic()
        down = swarmbinder(ground, "down", "--stack", stack, "--purge", timeout=300)
        print(f"down: {time.monotonic() - started:.1f} s", file=sys.stderr)
        for worker in ("node2", "node3"):
            docker_on(ground["docker_host"], "node", "update", "--label-rm", BUILD_LABEL, worker)
        assert down.returncode == 0, down.stderr[-2000:]
        assert stack_objects(ground, stack) == []


def launch(deployed: dict[str, Any], timeout: float = 200) -> list[dict[str, Any]]:
    """A /build stream through HTTPS (verified against the stack's root) up to ready or failed."""
    head = deployed["ground"]["repos"]["binder-dockerfile"]["head"]
    url = f"https://{deployed['ip']}:{PORTS['https-port']}/build/git/"
    url += f"{quote(deployed['git'], safe='')}/{head}"
    return read_events_https(url, root_of(deployed["up"]), timeout=timeout)


def server_status(deployed: dict[str, Any], ready: dict[str, Any]) -> int:
    context = ssl.create_default_context(cafile=str(root_of(deployed["up"])))
    request = urllib.request.Request(
        ready["url"] + "api/status", headers={"Authorization": f"token {ready['token']}"}
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as resp:
        return int(resp.status)


def server_nodes(deployed: dict[str, Any]) -> dict[str, str]:
    """User-server service -> the node its newest task is (or was) assigned to."""
    ground = deployed["ground"]
    label = f"label=swarmbinder.hub={deployed['stack']}_hub"
    services = on_manager(ground, "service", "ls", "-q", "--filter", label).split()
    nodes = {}
    for service in services:
        tasks = docker_on(ground["docker_host"], "service", "ps", "--format", "{{.Node}}", service)
        lines = tasks.stdout.split()
        if lines:
            nodes[service] = lines[0]
    return nodes


def test_up_against_the_manager_serves_the_registry_over_tls(deployed: dict[str, Any]) -> None:
    ground, stack, ip = deployed["ground"], deployed["stack"], deployed["ip"]
    up = deployed["up"].stderr
    # Every image came from the nodes' store: nothing built, no base image needed.
    assert "built swarmbinder/" not in up and "building swarmbinder/" not in up, up
    root = root_of(deployed["up"]).read_bytes()
    registry = f"{ip}:{PORTS['registry-https-port']}"
    for node in ground["nodes"]:
        # The trust service wrote the root where the node's engine looks for the registry's CA.
        copy = subprocess.run(
            ["docker", "exec", node["container"], "cat", f"/etc/docker/certs.d/{registry}/ca.crt"],
            capture_output=True,
            check=False,
        )
        assert copy.stdout == root, (node["name"], copy.stderr)
        info = json.loads(
            docker_on(node["docker_host"], "info", "--format", "{{json .RegistryConfig}}").stdout
        )
        insecure = [name for name, c in info["IndexConfigs"].items() if not c.get("Secure")]
        assert registry not in insecure and ip not in json.dumps(info["InsecureRegistryCIDRs"])
    # Only the TLS proxy mounts the CA's key; only the trust service mounts /etc/docker.
    specs = json.loads(
        on_manager(ground, "service", "inspect", *on_manager(ground, "service", "ls", "-q").split())
    )
    key_holders = {
        s["Spec"]["Name"]
        for s in specs
        for secret in s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        if "-tls-ca-key-" in secret["SecretName"]
    }
    assert key_holders == {f"{stack}_tls"}
    docker_dir = {
        s["Spec"]["Name"]
        for s in specs
        for mount in s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
        if mount.get("Source", "").startswith("/etc/docker")
    }
    assert docker_dir == {f"{stack}_registry-trust"}


def test_build_and_launch_through_https_then_a_worker_dies_mid_launch(
    deployed: dict[str, Any],
) -> None:
    ground = deployed["ground"]
    started = time.monotonic()
    events = launch(deployed)
    print(f"build and launch over HTTPS: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert events[-1]["phase"] == "ready", events[-3:]
    ready = events[-1]
    assert ready["url"].startswith(f"https://{deployed['ip']}:{PORTS['hub-https-port']}/user/")
    assert server_status(deployed, ready) == 200
    image = ready["image"]
    assert image.startswith(f"{deployed['ip']}:{PORTS['registry-https-port']}/binder-")
    built_on = [n for n in ("node1", "node2", "node3") if has_image(ground, n, image)]
    first_servers = server_nodes(deployed)
    assert set(first_servers.values()) <= {"node2", "node3"}, first_servers
    assert built_on and "node1" not in built_on, built_on

    # A second launch; its server's task goes to a worker, which is killed right then.
    outcome: list[list[dict[str, Any]]] = []
    second = threading.Thread(target=lambda: outcome.append(_launch_or_error(deployed)))
    second.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        new = {s: n for s, n in server_nodes(deployed).items() if s not in first_servers}
        victim = next(iter(new.values()), None)
        time.sleep(0.2)
    assert victim in ("node2", "node3"), victim
    container = next(n["container"] for n in ground["nodes"] if n["name"] == victim)
    subprocess.run(["docker", "kill", container], capture_output=True, check=True, timeout=60)
    killed_at = time.monotonic()
    second.join(240)
    said = outcome[0][-1]["phase"] if outcome and outcome[0] else "no end"
    print(f"the launch whose worker died: {said}", file=sys.stderr)
    # Gone as far as Swarm knows, then the next launch.
    while time.monotonic() - killed_at < 20:
        nodes = on_manager(ground, "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
        if f"{victim} Down" in nodes:
            break
        time.sleep(0.5)
    remaining = next(h for h in ("node2", "node3") if h != victim)
    started = time.monotonic()
    events = launch(deployed)
    print(f"the next launch: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert events[-1]["phase"] == "ready", events[-3:]
    assert server_status(deployed, events[-1]) == 200
    running = [
        n for s, n in server_nodes(deployed).items() if s not in first_servers and n == remaining
    ]
    assert running, server_nodes(deployed)
    # The image reached the remaining worker from the registry over TLS (pulled, or built
    # there and pushed: either way through the proxy's registry port, trusted by its engine).
    assert remaining not in built_on and has_image(ground, remaining, image), built_on


def _launch_or_error(deployed: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return launch(deployed)
    except Exception as exc:  # the node under it died: any end is fine, the next launch counts
        return [{"phase": f"error: {exc}"}]


def test_up_against_a_worker_is_refused_in_one_line(deployed: dict[str, Any]) -> None:
    ground = deployed["ground"]
    # One that is still up: the test before killed the other.
    worker = next(
        n
        for n in ground["nodes"]
        if n["role"] == "worker" and docker_on(n["docker_host"], "info").returncode == 0
    )
    proc = swarmbinder(ground, "up", "--stack", "sbmnworker", engine=worker["docker_host"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"swarmbinder: error: the engine at DOCKER_HOST={worker['docker_host']} is a worker: "
        "point DOCKER_HOST at a swarm manager (up makes a swarm only on this machine's engine)"
    ), lines
    assert not [s for s in stack_objects(ground, "sbmnworker")]
