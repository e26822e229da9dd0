"""``swarmbinder admin-ssh``: the admin console served to SSH clients, and nothing else.

The server runs as a real process on a free 127.0.0.1 port; OpenSSH's own client connects to
it, inside tmux where a terminal is needed, so what is checked is what an operator sees. The
stack service is checked by docker stack config (the optional file merged over the main one)
and by a real Swarm service made from the test ground's swarmbinder image.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from test_build_api import read_events, spec_for
from test_tui_ssh import TOKEN, free_port, screen_until, service, ssh_tools, tmux  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes"]  # fmt: skip
NO_TERMINAL = "the swarmbinder console needs a terminal: use ssh -t"


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def keys(ssh_tools: None, tmp_path: Path) -> dict[str, Path]:  # noqa: F811
    """An authorized client key, a stranger's key, the authorized_keys file and a token file."""
    home = tmp_path / "keys"
    home.mkdir()
    client = keygen(home / "client")
    stranger = keygen(home / "stranger")
    authorized = home / "authorized_keys"
    authorized.write_text("# operators\n" + (home / "client.pub").read_text())
    token = home / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return {"client": client, "stranger": stranger, "authorized": authorized, "token": token,
            "host": home / "host_key"}  # fmt: skip


def admin_ssh(url: str, keys: dict[str, Path], port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "swarmbinder", "admin-ssh", "--url", url,
            "--token-file", str(keys["token"]), "--authorized-keys", str(keys["authorized"]),
            "--host-key", str(keys["host"]), "--listen", "127.0.0.1", "--port", str(port),
            *extra]  # fmt: skip


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(8).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"admin-ssh exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"admin-ssh never listened: {log.read_text()}")


class Console:
    """A running ``swarmbinder admin-ssh`` and how to reach it."""

    def __init__(self, keys: dict[str, Path], tmp_path: Path) -> None:
        self.keys = keys
        self.port = free_port()
        self.log = tmp_path / f"admin-ssh-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, url: str, *extra: str) -> Console:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                admin_ssh(url, self.keys, self.port, *extra), stdout=out, stderr=out
            )
        wait_for_port(self.port, self.proc, self.log)
        return self

    def ssh(self, *args: str, key: str = "client") -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.keys[key]), *SSH_OPTIONS, *args]

    def command_line(self, *args: str) -> str:
        """The ssh command as one shell line, for tmux."""
        return " ".join(self.ssh(*args))

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def console(keys: dict[str, Path], tmp_path: Path) -> Iterator[Console]:
    running = Console(keys, tmp_path)
    try:
        yield running
    finally:
        if running.proc is not None:
            assert running.stop() == 0, running.log.read_text()
            # The server reads the token only through the console's --token-file.
            assert TOKEN not in running.log.read_text()


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


# --- without a swarmbinder: what the server refuses ------------------------------------------


def test_without_a_terminal_one_line_and_status_2(console: Console) -> None:
    console.start("http://127.0.0.1:9/")
    for command in ([], ["bash", "-c", "id"]):
        proc = subprocess.run(
            console.ssh("admin@127.0.0.1", *command),
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == NO_TERMINAL
        assert "uid=" not in proc.stdout + proc.stderr
    log = console.log.read_text()
    assert "asked to run 'bash -c id'; it gets the console instead" in log


def test_a_key_not_authorized_is_refused(console: Console) -> None:
    console.start("http://127.0.0.1:9/")
    proc = subprocess.run(
        console.ssh("-t", "admin@127.0.0.1", key="stranger"),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr
    stranger = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(console.keys["stranger"])],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert f"offered a key not authorized: {stranger}" in console.log.read_text()


def test_forwarding_sftp_and_scp_are_refused(console: Console, tmp_path: Path) -> None:
    console.start("http://127.0.0.1:9/")
    # Remote forwarding is refused when asked for.
    remote = subprocess.run(
        console.ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9",
                    "admin@127.0.0.1"),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert remote.returncode == 255
    assert "remote port forwarding failed" in remote.stderr

    # A local forward listens on the client's side; each connection through it is refused.
    local_port = free_port()
    forward = subprocess.Popen(
        console.ssh("-N", "-L", f"{local_port}:127.0.0.1:{console.port}", "admin@127.0.0.1"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", local_port), timeout=0.5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the local forward never listened")
        with sock:
            sock.settimeout(10)
            # Were it forwarded, the console server's own banner would come back.
            assert sock.recv(64) == b""
    finally:
        forward.kill()  # a client with -N waits out SIGTERM while its connection is open
        forward.communicate(timeout=10)
    assert f"refused a forward to 127.0.0.1:{console.port}" in console.log.read_text()

    sftp = subprocess.run(
        ["sftp", "-P", str(console.port), "-i", str(console.keys["client"]), *SSH_OPTIONS,
         "-b", "-", "admin@127.0.0.1"],
        input="ls\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert sftp.returncode != 0
    assert "subsystem request failed" in sftp.stderr

    # Legacy scp runs "scp -f FILE" as a command: it gets the refusal, never the file.
    copied = tmp_path / "copied"
    scp = subprocess.run(
        ["scp", "-O", "-P", str(console.port), "-i", str(console.keys["client"]), *SSH_OPTIONS,
         "admin@127.0.0.1:/etc/hostname", str(copied)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert scp.returncode != 0
    assert not copied.exists()


async def test_session_limit_and_clean_shutdown(console: Console) -> None:
    # Off the loop: starting waits (blocking) until the console listens.
    await asyncio.to_thread(console.start, "http://127.0.0.1:9/", "--max-sessions", "1")
    assert console.proc is not None
    socket_name = "swarmbinder-test-" + uuid.uuid4().hex[:8]
    line = console.command_line("-t", "admin@127.0.0.1") + "; echo ssh-exit-$?; sleep 60"
    await tmux(socket_name, "new-session", "-d", "-s", "console", "-x", "120", "-y", "30", line)
    try:
        # The service is not there: the console says so, and keeps trying.
        await screen_until(socket_name, ["Cannot reach http://127.0.0.1:9/", "Builds"], 30)
        (consoles,) = children(console.proc.pid)

        second = await asyncio.to_thread(
            subprocess.run, console.ssh("-tt", "admin@127.0.0.1"),
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert "too many admin consoles open (1); try again later" in second.stdout

        # SIGTERM: the open console is stopped and its client told why.
        assert console.stop() == 0
        screen = await screen_until(
            socket_name, ["the admin console service is stopping", "ssh-exit-1"], 10
        )
        assert not await asyncio.to_thread(os.path.exists, f"/proc/{consoles}"), screen
    finally:
        await tmux(socket_name, "kill-server")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing-keys", "cannot read the authorized keys file"),
        ("empty-keys", "no public keys in the authorized keys file"),
        ("bad-host-key", "is not an unencrypted private key"),
        ("no-token", "cannot read the token file"),
        ("port-in-use", "is already in use"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    keys: dict[str, Path], tmp_path: Path, change: str, message: str
) -> None:
    port = free_port()
    taken: socket.socket | None = None
    if change == "missing-keys":
        keys["authorized"] = tmp_path / "nowhere"
    elif change == "empty-keys":
        keys["authorized"].write_text("# nobody yet\n\n")
    elif change == "bad-host-key":
        keys["host"].write_text("not a key\n")
    elif change == "no-token":
        keys["token"] = tmp_path / "no-token"
    else:
        taken = socket.create_server(("127.0.0.1", port))
    try:
        proc = subprocess.run(
            admin_ssh("http://127.0.0.1:9/", keys, port),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        if taken is not None:
            taken.close()
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_a_missing_host_key_is_generated_once(console: Console) -> None:
    console.start("http://127.0.0.1:9/")
    first = console.keys["host"].read_bytes()
    assert console.keys["host"].stat().st_mode & 0o777 == 0o600
    assert console.stop() == 0
    console.start("http://127.0.0.1:9/")
    assert console.keys["host"].read_bytes() == first


# --- against a real swarmbinder on the test ground --------------------------------------------


@pytest.mark.swarm
async def test_ssh_gets_the_console_with_a_live_build(
    console: Console,
    service: TestClient[Any, Any],  # noqa: F811
    testground: dict[str, Any],
) -> None:
    await asyncio.to_thread(console.start, f"http://127.0.0.1:{service.port}/")
    socket_name = "swarmbinder-test-" + uuid.uuid4().hex[:8]
    build: asyncio.Task[list[dict[str, Any]]] | None = None
    try:
        # Asking for a shell command with a terminal still gets the console.
        line = console.command_line("-t", "admin@127.0.0.1", "bash", "-c", "id")
        await tmux(socket_name, "new-session", "-d", "-s", "console", "-x", "160", "-y", "45", line)
        screen = await screen_until(socket_name, ["Connected to", "Builds"], 30)
        assert "uid=" not in screen
        # screen_until reads the session called console: the next one takes its name. It is
        # made before the first one goes, since tmux's server exits with its last session.
        line = console.command_line("-t", "admin@127.0.0.1")
        await tmux(socket_name, "new-session", "-d", "-s", "next", "-x", "160", "-y", "45", line)
        await tmux(socket_name, "kill-session", "-t", "console")
        await tmux(socket_name, "rename-session", "-t", "next", "console")
        before = await screen_until(socket_name, ["Connected to", "Builds"], 30)
        # The swarm is shared: other runs' builds may be listed. Ours is a new row.
        repo = "binder-dockerfile.git"
        rows_before = {line for line in before.splitlines() if repo in line}
        path = f"/build/{spec_for(testground, 'binder-dockerfile')}?build_only=true"
        build = asyncio.create_task(read_events(service, path))
        new: list[str] = []
        for _ in range(300):
            during = await tmux(socket_name, "capture-pane", "-p", "-t", "console")
            new = [line for line in during.splitlines() if repo in line and line not in rows_before]
            if new:
                break
            await asyncio.sleep(0.2)
        assert new, f"no new build row appeared:\n{during}"
        assert any(phase in row for row in new for phase in ("running", "queued", "built")), new
        events = await asyncio.wait_for(build, 180)
        assert events[-1]["phase"] == "ready", events[-3:]
        await screen_until(socket_name, [repo, "built"], 30)
    finally:
        if build is not None and not build.done():
            build.cancel()
        await tmux(socket_name, "kill-server")
    log = console.log.read_text()
    assert re.search(r"user admin logged in from 127\.0\.0\.1:\d+ with key SHA256:", log), log


# --- the stack service -----------------------------------------------------------------------


def stack_config(env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        ["docker", "stack", "config", "-c", "docker-stack.yml", "-c", "stack/ssh-console.yml"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
        env={"PATH": os.environ["PATH"], **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = yaml.safe_load(proc.stdout)
    return data


def test_stack_file_adds_the_console_service_to_the_stack() -> None:
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed")
    merged = stack_config({"SWARMBINDER_STACK": "lab", "SWARMBINDER_CONSOLE_KEYS_VERSION": "3"})
    console = merged["services"]["console"]
    assert console["command"][0] == "admin-ssh"
    assert console["image"] == merged["services"]["binder"]["image"]
    assert console["ports"] == [{"mode": "host", "target": 2222, "published": 2222}]
    assert console["networks"] == {"binder": None}
    assert merged["networks"]["binder"]["name"] == "lab-net"
    # Every file the command reads is a secret the merged stack defines.
    mounted = {secret["source"] for secret in console["secrets"]}
    for flag in ("--token-file", "--authorized-keys", "--host-key"):
        path = console["command"][console["command"].index(flag) + 1]
        assert path.startswith("/run/secrets/") and path.rsplit("/", 1)[1] in mounted, flag
    names = {source: merged["secrets"][source]["name"] for source in mounted}
    assert names == {
        "admin_token": "lab-admin-token",
        "console_authorized_keys": "lab-console-authorized-keys-3",
        "console_host_key": "lab-console-host-key",
    }
    assert console["healthcheck"]["test"][0] == "CMD"
    assert console["deploy"]["restart_policy"]["condition"] == "any"
    assert console["deploy"]["resources"]["limits"]["memory"]
    # The main stack is unchanged by the extra file.
    assert set(merged["services"]) - {"console"} == {"binder", "hub", "proxy", "registry"}


async def adocker(*args: str, check: bool = True) -> str:
    """docker, off the event loop: the test's swarmbinder serves on the same loop."""
    return await asyncio.to_thread(docker, *args, check=check)


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture
async def console_service(
    keys: dict[str, Path],
    service: TestClient[Any, Any],  # noqa: F811
    testground: dict[str, Any],
) -> AsyncIterator[dict[str, Any]]:
    """The stack's console service, as a Swarm service from the test ground's image: its
    secrets, its healthcheck, pointed at the swarmbinder this test serves."""
    run = uuid.uuid4().hex[:8]
    name = f"swarmbinder-test-console-{run}"
    keygen(keys["host"])
    files = {"admin_token": keys["token"], "console_authorized_keys": keys["authorized"],
             "console_host_key": keys["host"]}  # fmt: skip
    secrets = {target: f"{name}-{target}" for target in files}
    port = free_port()
    stack = yaml.safe_load((REPO_ROOT / "stack" / "ssh-console.yml").read_text())
    spec = stack["services"]["console"]
    # The stack's command and healthcheck, on a free port and with the test's URL: the
    # service runs on the host network, where the test's swarmbinder listens on 127.0.0.1.
    command = [
        {"2222": str(port), "http://binder:8585/": f"http://127.0.0.1:{service.port}/"}.get(a, a)
        for a in spec["command"]
    ]
    health = spec["healthcheck"]["test"][1:]
    health = [a.replace("2222", str(port)) for a in health]
    assert spec["healthcheck"]["test"][0] == "CMD"  # exec form; --health-cmd takes a shell line
    try:
        for target, path in files.items():
            await adocker("secret", "create", secrets[target], str(path))
        await adocker(
            "service", "create", "--detach", "--name", name, "--no-resolve-image",
            "--network", "host", "--restart-condition", "none",
            *(f"--secret=source={secrets[t]},target={t}" for t in spec["secrets"]),
            "--health-cmd", shlex.join(health), "--health-interval", "1s",
            "--health-timeout", "5s", "--health-retries", "3", "--stop-grace-period", "15s",
            testground["images"]["swarmbinder"], *command,
        )  # fmt: skip
        yield {"name": name, "port": port}
    finally:
        await adocker("service", "rm", name, check=False)
        for secret in secrets.values():
            for _ in range(100):  # a secret stays in use until the service's task is gone
                await adocker("secret", "rm", secret, check=False)
                if secret not in await adocker(
                    "secret", "ls", "--format", "{{.Name}}", check=False
                ):
                    break
                await asyncio.sleep(0.2)
        leftovers = await adocker(
            "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={name}", check=False
        )
        for container in leftovers.split():
            await adocker("rm", "-f", container, check=False)


@pytest.mark.swarm
async def test_the_stack_service_serves_the_console(
    console_service: dict[str, Any], keys: dict[str, Path], tmp_path: Path
) -> None:
    name, port = console_service["name"], console_service["port"]
    filters = ["--filter", f"label=com.docker.swarm.service.name={name}"]
    health = ""
    for _ in range(300):
        container = await adocker("ps", "-q", *filters)
        if container:
            health = await adocker("inspect", "--format", "{{.State.Health.Status}}", container)
            if health == "healthy":
                break
        await asyncio.sleep(0.1)
    assert health == "healthy", await adocker("service", "ps", "--no-trunc", name)

    reach = Console(keys, tmp_path)
    reach.port = port
    refused = await asyncio.to_thread(
        subprocess.run, reach.ssh("-t", "admin@127.0.0.1", key="stranger"),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    socket_name = "swarmbinder-test-" + uuid.uuid4().hex[:8]
    line = reach.command_line("-t", "admin@127.0.0.1")
    await tmux(socket_name, "new-session", "-d", "-s", "console", "-x", "160", "-y", "45", line)
    try:
        await screen_until(socket_name, ["● Connected to", "Builds"], 30)
    finally:
        await tmux(socket_name, "kill-server")
    # The container's log, not docker service logs, which can hang on this engine.
    container = await adocker("ps", "-q", *filters)
    logs = await asyncio.to_thread(
        subprocess.run, ["docker", "logs", container],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "logged in from" in logs.stderr
    assert TOKEN not in logs.stdout + logs.stderr
