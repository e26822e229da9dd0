"""The admin console in a plain terminal over a real ``ssh -t``, as an operator runs it.

A private sshd on a free 127.0.0.1 port (its own host key and authorized key, in a temporary
directory; no system config is touched) runs ``swarmbinder admin`` for an ssh client inside a
tmux session. The test starts a build of a test repository and reads tmux's screen until the
Builds tab shows it: the row can only get there through the live stream.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints
from test_build_api import read_events, spec_for

from swarmbinder.app import create_app
from swarmbinder.config import load_config

pytestmark = pytest.mark.swarm

SSHD = "/usr/sbin/sshd"
TOKEN = "ssh-console-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def ssh_tools() -> None:
    """sshd, ssh and tmux, from Debian's packages when missing."""
    if os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("tmux"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server",
               "openssh-client", "tmux"]  # fmt: skip
    install = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if install.returncode != 0:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        install = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if install.returncode != 0:
        pytest.fail(f"cannot install openssh-server and tmux: {install.stderr[-500:]}")


@pytest.fixture
def sshd(ssh_tools: None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A private sshd that lets our temporary key in as the current user."""
    home = tmp_path / "ssh"
    home.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True
        )
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
    )
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"sshd did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
                subprocess.run(["sleep", "0.05"], check=False)
        yield {"port": port, "key": home / "client_key", "user": getpass.getuser()}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def service(
    testground: dict[str, Any], tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    run = uuid.uuid4().hex[:8]
    config = load_config(
        env={},
        overrides={
            "image_prefix": f"{testground['image_prefix']}ssh{run}-",
            **ground_endpoints(testground, tmp_path),
            "enable_api_only_mode": True,
            "admin_token": TOKEN,
        },
    )
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        yield client


async def tmux(socket_name: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "tmux", "-L", socket_name, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def screen_until(socket_name: str, wanted: list[str], seconds: float) -> str:
    """The tmux pane's text once it shows every string in ``wanted``."""
    screen = ""
    for _ in range(int(seconds * 5)):
        screen = await tmux(socket_name, "capture-pane", "-p", "-t", "console")
        if all(text in screen for text in wanted):
            return screen
        await asyncio.sleep(0.2)
    raise AssertionError(f"the console never showed {wanted}; last screen:\n{screen}")


async def test_console_over_ssh_shows_a_live_build(
    sshd: dict[str, Any],
    service: TestClient[Any, Any],
    testground: dict[str, Any],
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    url = f"http://127.0.0.1:{service.port}/"
    swarmbinder = Path(sys.executable).with_name("swarmbinder")
    remote = f"{swarmbinder} admin --url {url} --token-file {token_file}"
    ssh = (
        f"ssh -t -p {sshd['port']} -i {sshd['key']} -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {sshd['user']}@127.0.0.1 {remote}"
    )
    socket_name = "swarmbinder-test-" + uuid.uuid4().hex[:8]
    await tmux(socket_name, "new-session", "-d", "-s", "console", "-x", "160", "-y", "45", ssh)
    build: asyncio.Task[list[dict[str, Any]]] | None = None
    try:
        before = await screen_until(socket_name, ["Connected to", "Builds"], 30)
        # The swarm is shared: builds of other runs may be listed already (the manager adopts
        # every build service). Ours is a new service, so a new row.
        repo = "binder-dockerfile.git"
        rows_before = [line for line in before.splitlines() if repo in line]

        path = f"/build/{spec_for(testground, 'binder-dockerfile')}?build_only=true"
        build = asyncio.create_task(read_events(service, path))
        for _ in range(300):
            during = await tmux(socket_name, "capture-pane", "-p", "-t", "console")
            rows = [line for line in during.splitlines() if repo in line]
            new = [line for line in rows if line not in rows_before]
            if len(rows) > len(rows_before) and new:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no new build row appeared:\n{during}")
        assert any(phase in row for row in new for phase in ("running", "queued", "built")), new

        events = await asyncio.wait_for(build, 180)
        assert events[-1]["phase"] == "ready", events[-3:]
        after = await screen_until(socket_name, ["binder-dockerfile.git", "built"], 30)
        assert "● Connected" in after
    finally:
        if build is not None and not build.done():
            build.cancel()
        await tmux(socket_name, "kill-server")
