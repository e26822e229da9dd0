"""``swarmbinder up`` from nothing to a launch through the published ports, then ``down``.

The first ``up`` also deploys the SSH console (``--ssh-console``); OpenSSH's client checks what
it lets in through its published port, and the next ``up``, which does not mention it, keeps it.

The stack runs next to the test ground on the same engine, under a name and ports of its own,
and reuses the test ground's images (same tags and inputs, so nothing is rebuilt unless the
code changed). Binder runs in a container on the stack's overlay network, where the test
ground's git server on 127.0.0.1 is out of reach: the test serves the same repositories on
the address the node's containers reach the host by.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
NO_TERMINAL = "the swarmbinder console needs a terminal: use ssh -t"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def swarmbinder(
    *args: str, timeout: float = 600, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a clean environment (no SWARMBINDER_* of the caller's), plus ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    env |= env_extra or {}
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


@contextmanager
def serve_git_for_containers(testground: dict[str, Any]) -> Iterator[str]:
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


@pytest.fixture
def ssh_keys(tmp_path: Path) -> dict[str, Path]:
    """An operator's key listed in an authorized_keys file, and a stranger's that is not."""
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.fail("OpenSSH's client is not installed (apt-get install openssh-client)")
    keys = {name: tmp_path / name for name in ("operator", "stranger")}
    for path in keys.values():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    keys["authorized"] = tmp_path / "authorized_keys"
    keys["authorized"].write_text("# operators\n" + (tmp_path / "operator.pub").read_text())
    return keys


def ssh(port: int, key: Path) -> subprocess.CompletedProcess[str]:
    """An SSH session without a terminal, as a script would open one."""
    options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]
    options += ["IdentitiesOnly=yes", "BatchMode=yes", "ConnectTimeout=10"]
    return subprocess.run(
        ["ssh", "-p", str(port), "-i", str(key), *(f"-o{o}" for o in options), "admin@127.0.0.1"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


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


def registry_auth_secrets() -> list[str]:
    return [
        name
        for kind in ("registry-auth", "build-auth")
        for name in docker(
            "secret", "ls", "--format", "{{.Name}}", "--filter", f"label=swarmbinder.kind={kind}"
        ).split()
    ]


def check_registry_token_auth(port: int, registry_port: int, image: str) -> None:
    """The stack's registry wants a token from Binder's endpoint, which refuses a guessed
    login: the image just built and launched was pushed with a build's own login."""
    name, tag = image.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(
        f"http://127.0.0.1:{registry_port}/v2/{name}/manifests/{tag}", method="HEAD"
    )
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(request, timeout=10)
    assert anonymous.value.code == 401
    challenge = anonymous.value.headers["WWW-Authenticate"]
    realm = f"http://127.0.0.1:{port}/registry/token"
    assert challenge.startswith(f'Bearer realm="{realm}",service="swarmbinder-registry"')
    guessed = urllib.request.Request(
        f"{realm}?service=swarmbinder-registry&scope=repository:{name}:push",
        headers={"Authorization": "Basic " + base64.b64encode(b"hub-pull:guess").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(guessed, timeout=10)
    assert refused.value.code == 401


def stack_config(tmp_path: Path, git_url: str) -> Path:
    """The stack's own config, letting Binder reach this test's git server: it sits on a
    private address, which Binder's outbound requests refuse unless they are told."""
    host = git_url.split("://", 1)[1].split(":", 1)[0]
    config = tmp_path / "binder.yaml"
    config.write_text(
        (REPO_ROOT / "stack" / "config" / "binder.yaml").read_text()
        + f"\nallowed_outbound_networks: [{host}/32]\n"
    )
    return config


@contextmanager
def deployed_stack(
    prefix: str,
    tmp_path: Path,
    git_url: str,
    *up_args: str,
    kept_args: Sequence[str] = (),
    config_extra: str = "",
) -> Iterator[dict[str, Any]]:
    """``swarmbinder up`` of a new stack (named ``prefix`` and a random part) on free ports with
    :func:`stack_config` (and ``config_extra``), then ``down --purge`` and a check that nothing
    of it is left. Yields its name, ports, ``up``'s result and ``args``: what a later ``up`` of
    the same stack repeats (``kept_args`` included, ``up_args`` not)."""
    stack = f"{prefix}{uuid.uuid4().hex[:6]}"
    port, hub_port, registry_port = free_port(), free_port(), free_port()
    config = stack_config(tmp_path, git_url)
    config.write_text(config.read_text() + config_extra)
    args = ["--stack", stack, "--port", str(port), "--hub-port", str(hub_port)]
    args += ["--registry-port", str(registry_port), "--config", str(config), *kept_args]
    try:
        started = time.monotonic()
        up = swarmbinder("up", *args, *up_args, "--timeout", "300")
        print(f"up {' '.join(up_args)}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        assert up.returncode == 0, up.stderr[-2000:]
        yield {"stack": stack, "port": port, "hub_port": hub_port, "args": args, "up": up,
               "registry_port": registry_port}  # fmt: skip
    finally:
        started = time.monotonic()
        gone = swarmbinder("down", "--stack", stack, "--purge", timeout=240)
        print(f"down: {time.monotonic() - started:.1f} s", file=sys.stderr)
        assert gone.returncode == 0, gone.stderr[-2000:]
        assert stack_leftovers(stack) == []
        assert not docker("secret", "ls", "-q", "--filter", f"name={stack}-").split()
        assert not docker("volume", "ls", "-q", "--filter", f"name={stack}_").split()
        assert not docker("config", "ls", "-q", "--filter", f"name={stack}-").split()


REACH = """
import socket, sys
for host, port in (a.rsplit(":", 1) for a in sys.argv[1:]):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(host, "open")
    except OSError as exc:
        print(host, "closed", type(exc).__name__)
"""


def check_user_server_reach(stack: str, server_service: str) -> None:
    """From inside a user server (a repository's code runs there): the hub's API is reachable,
    Binder and the registry are not, and the server has no interface on the stack's network.
    (Only names are tried: an overlay address of a network the container is not on would be
    routed off this machine.)"""
    name = docker("service", "inspect", "--format", "{{.Spec.Name}}", server_service).strip()
    container = docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}"
    ).split()[0]
    networks = docker(
        "inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        container,
    ).split()  # fmt: skip
    assert f"{stack}-users" in networks and f"{stack}-net" not in networks, networks
    said = docker(
        "exec", container, "python3", "-c", REACH, "hub:8081", "binder:8585", "registry:5000"
    ).splitlines()
    reach = {line.split(" ")[0]: line.split(" ")[1] for line in said}
    assert reach == {"hub": "open", "binder": "closed", "registry": "closed"}, said


def test_up_launch_up_again_down(
    testground: dict[str, Any],
    git_for_containers: str,
    ssh_keys: dict[str, Path],
    tmp_path: Path,
) -> None:
    stack = f"sbe2e{uuid.uuid4().hex[:6]}"
    port, hub_port, registry_port = free_port(), free_port(), free_port()
    ssh_port = free_port()
    ports = ["--port", str(port), "--hub-port", str(hub_port)]
    ports += ["--registry-port", str(registry_port)]
    ports += ["--config", str(stack_config(tmp_path, git_for_containers))]
    console = ["--ssh-console", str(ssh_keys["authorized"]), "--ssh-port", str(ssh_port)]
    registry_auth_before = set(registry_auth_secrets())
    try:
        started = time.monotonic()
        first = swarmbinder("up", "--stack", stack, *ports, *console, "--timeout", "240")
        assert first.returncode == 0, first.stderr[-2000:]
        assert first.stdout.strip() == f"Binder is running at http://127.0.0.1:{port}/"
        assert f"deploying stack {stack}" in first.stderr
        assert f"created secret {stack}-hub-api-token" in first.stderr
        assert f"created secret {stack}-registry-token-key" in first.stderr
        assert f"created secret {stack}-registry-token-certificate" in first.stderr
        assert f"created secret {stack}-console-host-key" in first.stderr
        assert f"SSH console: port {ssh_port}, keys from {ssh_keys['authorized']}" in first.stderr
        print(f"up from nothing: {time.monotonic() - started:.1f} s", file=sys.stderr)

        # The console service runs and lets in the listed key only (the console itself, on a
        # terminal, is tested in test_ssh_console.py).
        started = time.monotonic()
        mounted = docker(
            "service",
            "inspect",
            "--format",
            "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}",
            f"{stack}_console",
        ).split()
        keys_secret = [s for s in mounted if s.startswith(f"{stack}-console-authorized-keys-")]
        assert len(keys_secret) == 1 and f"(secret {keys_secret[0]})" in first.stderr
        assert f"{stack}-console-host-key" in mounted
        refused = ssh(ssh_port, ssh_keys["stranger"])
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
        operator = ssh(ssh_port, ssh_keys["operator"])
        assert (operator.returncode, operator.stderr.strip()) == (2, NO_TERMINAL), operator
        print(f"ssh checks: {time.monotonic() - started:.1f} s", file=sys.stderr)

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
        check_registry_token_auth(port, registry_port, ready["image"])
        check_user_server_reach(stack, servers.split()[0])

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
        print(f"up again: {time.monotonic() - started:.1f} s", file=sys.stderr)
        current_image = docker("image", "inspect", "--format", "{{.Id}}", SERVICE_IMAGE)
        # Not named on this run, the console stays as it was.
        assert f"keeping the SSH console: port {ssh_port}" in again.stderr, again.stderr
        assert docker("service", "ls", "-q", "--filter", f"name={stack}_console").strip()
        if current_image.removeprefix("sha256:")[:12] == deployed_image:
            assert "deploying" not in again.stderr, again.stderr
            # The image tag is shared: a concurrent build of other inputs makes this run build
            # it back (to the deployed image); only then may it not say "nothing changed".
            if "built " not in again.stderr:
                assert f"nothing changed: stack {stack} is up to date" in again.stderr
            assert time.monotonic() - started < 30
        else:
            # Someone changed swarmbinder's code meanwhile (the service image is shared with
            # the test ground): the one right reason to deploy again.
            assert f"deploying stack {stack} (swarmbinder-image)" in again.stderr, again.stderr

        # Changed keys: a new secret, the console redeployed with it, the old secret removed.
        started = time.monotonic()
        stranger_pub = Path(f"{ssh_keys['stranger']}.pub").read_text()
        ssh_keys["authorized"].write_text(ssh_keys["authorized"].read_text() + stranger_pub)
        rotated = swarmbinder("up", "--stack", stack, *ports, *console)
        assert rotated.returncode == 0, rotated.stderr[-2000:]
        deploying = [ln for ln in rotated.stderr.splitlines() if "deploying stack" in ln]
        assert len(deploying) == 1 and "ssh-console-keys" in deploying[0], rotated.stderr
        now = docker(
            "secret", "ls", "--format", "{{.Name}}", "--filter", f"name={stack}-console-authorized"
        ).split()
        assert len(now) == 1 and now != keys_secret and f"(secret {now[0]})" in rotated.stderr
        let_in = ssh(ssh_port, ssh_keys["stranger"])
        assert (let_in.returncode, let_in.stderr.strip()) == (2, NO_TERMINAL), let_in
        print(f"keys changed: {time.monotonic() - started:.1f} s", file=sys.stderr)

        # Another stack on a port this one holds: refused in one line, nothing made.
        taken = swarmbinder("up", "--stack", f"{stack}x", "--port", str(port))
        assert taken.returncode == 2
        assert taken.stderr.strip().splitlines()[-1] == (
            f"swarmbinder: error: port {port} on 127.0.0.1 is already in use; "
            "choose another with --port / SWARMBINDER_PORT"
        )
        assert not docker("secret", "ls", "-q", "--filter", f"name={stack}x-").split()
        ssh_taken = swarmbinder(
            "up",
            "--stack",
            f"{stack}x",
            *("--port", str(free_port()), "--hub-port", str(free_port())),
            *("--registry-port", str(free_port()), *console),
        )
        assert ssh_taken.returncode == 2
        assert ssh_taken.stderr.strip().splitlines()[-1] == (
            f"swarmbinder: error: port {ssh_port} on 127.0.0.1 is already in use; "
            "choose another with --ssh-port / SWARMBINDER_SSH_PORT"
        )
        assert not docker("secret", "ls", "-q", "--filter", f"name={stack}x-").split()

        # Asked to, up removes the console and its keys; the host key stays for a next one.
        started = time.monotonic()
        removed = swarmbinder("up", "--stack", stack, *ports, "--no-ssh-console")
        assert removed.returncode == 0, removed.stderr[-2000:]
        assert "removing the SSH console (--no-ssh-console)" in removed.stderr
        assert "ssh-console removed" in removed.stderr
        assert not docker("service", "ls", "-q", "--filter", f"name={stack}_console").split()
        left = docker("secret", "ls", "--format", "{{.Name}}", "--filter", f"name={stack}-console")
        assert left.split() == [f"{stack}-console-host-key"]
        print(f"console removed: {time.monotonic() - started:.1f} s", file=sys.stderr)
    finally:
        started = time.monotonic()
        gone = swarmbinder("down", "--stack", stack, "--purge", timeout=180)
        print(f"down: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert "removing 1 user server(s)" in gone.stderr
    assert f"{stack}-console-host-key" in gone.stderr  # listed among the removed secrets
    assert stack_leftovers(stack) == []
    assert not docker("secret", "ls", "-q", "--filter", f"name={stack}-").split()
    assert not docker("volume", "ls", "-q", "--filter", f"name={stack}_").split()
    # The builder's credentials secret that Binder made is gone too (no other build uses one).
    assert not set(registry_auth_secrets()) - registry_auth_before
