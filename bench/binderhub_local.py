"""Real BinderHub in its local mode, as the peer a benchmark measures against.

BinderHub's release on PyPI is from 2018, so this installs a source archive of its repository
(a ``git archive`` tarball; its path is given by the caller) into a virtual environment of its
own under ``~/.cache/swarmbinder-bench/`` (XDG_CACHE_HOME is honoured), never into the
project's: JupyterHub 6.1.1, dockerspawner 14.0.0, repo2docker 2024.3.0 with chardet < 6 and
configurable-http-proxy 5 from npm. The setup is that of BinderHub's own
``testing/local-binder-local-hub``: JupyterHub with ``DockerSpawner`` plus BinderHub's spawner
mixin, BinderHub as a hub-managed service building with ``LocalRepo2dockerBuild`` and looking
for built images in the local engine (``use_registry = False``), the null authenticator (so a
user server is a plain Jupyter server with a token that never calls the hub). Everything
listens on 127.0.0.1 but BinderHub itself, which has no option for its address and binds
every interface: it gets a free high port. Its per-IP launch limit is off, or a series of
launches from 127.0.0.1 runs into its 10 per hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import benchlib as b

PINS = [
    "jupyterhub==6.1.1",
    "dockerspawner==14.0.0",
    "jupyter-repo2docker==2024.3.0",
    "chardet<6",
]
CHP = "configurable-http-proxy@5"
#: Image names BinderHub builds and looks for start with this (its ``image_prefix``).
IMAGE_PREFIX = "swarmbinder-bench-binderhub-"

HUB_CONFIG = """\
import os
from dockerspawner import DockerSpawner
from binderhub.binderspawner_mixin import BinderSpawnerMixin

class LocalContainerSpawner(BinderSpawnerMixin, DockerSpawner):
    pass

c.JupyterHub.spawner_class = LocalContainerSpawner
c.DockerSpawner.remove = True
c.DockerSpawner.allowed_images = "*"
c.DockerSpawner.host_ip = "127.0.0.1"
c.DockerSpawner.prefix = {container_prefix!r}
# the images have no jupyter-notebook; BinderHub passes the server its token and base URL
c.LocalContainerSpawner.cmd = "jupyter-server"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_ip = "127.0.0.1"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
c.JupyterHub.services = [
    {{
        "name": "binder",
        "admin": True,
        # its own log file: the hub's log would interleave it with the hub's and the proxy's
        "command": ["sh", "-c", 'exec "$0" "$@" >>{state}/binderhub.log 2>&1',
                    {python!r}, "-mbinderhub", "--config={state}/binderhub_config.py",
                    "--port={binder_port}"],
        "url": "http://127.0.0.1:{binder_port}",
        "environment": {{"DOCKER_HOST": os.environ.get("DOCKER_HOST", "")}},
    }},
    {{"name": "bench", "api_token": {bench_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "bench", "services": ["bench"], "scopes": ["admin:users", "admin:servers"]}},
]
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
"""

BINDER_CONFIG = """\
import os
from binderhub.build_local import LocalRepo2dockerBuild
from binderhub.quota import LaunchQuota

c.BinderHub.use_registry = False
c.BinderHub.builder_required = False
c.BinderHub.build_class = LocalRepo2dockerBuild
c.BinderHub.push_secret = ""
c.BinderHub.launch_quota_class = LaunchQuota
c.BinderHub.base_url = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
c.BinderHub.hub_url = "http://127.0.0.1:{proxy_port}/"
c.BinderHub.image_prefix = {image_prefix!r}
c.RateLimiter.limit = 0
"""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "swarmbinder-bench"


@dataclass(frozen=True)
class Install:
    python: Path
    chp_bin: Path


def install(archive: Path) -> Install:
    """BinderHub from ``archive`` with its pinned companions, once per archive and pins."""
    key = hashlib.sha256(archive.read_bytes() + repr((PINS, CHP)).encode()).hexdigest()[:12]
    home = cache_dir() / f"binderhub-{key}"
    done = home / ".installed"
    found = Install(
        python=home / "venv" / "bin" / "python", chp_bin=home / "npm" / "node_modules" / ".bin"
    )
    if done.exists():
        return found
    b.say(f"installing BinderHub from {archive.name} into {home} (once)")
    shutil.rmtree(home, ignore_errors=True)
    (home / "npm").mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(home / "src", filter="data")
    [source] = [p for p in (home / "src").iterdir() if (p / "pyproject.toml").exists()]
    steps = [
        [sys.executable, "-m", "venv", str(home / "venv")],
        # editable: a regular install builds BinderHub's JavaScript, which /build never uses
        [str(found.python), "-m", "pip", "install", "-q", "-e", str(source), *PINS],
        ["npm", "install", "--prefix", str(home / "npm"), "--no-fund", "--no-audit", CHP],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(step[:4])} failed:\n{proc.stderr[-2000:]}")
    done.write_text(key)
    return found


@dataclass
class BinderHub:
    """A running JupyterHub with BinderHub as its service."""

    url: str
    api: str
    token: str
    python: Path

    def image_name(self, repo_url: str, ref: str) -> str:
        """The image BinderHub looks for when asked for ``repo_url`` at ``ref``, by its code."""
        code = (
            "import sys\n"
            "from binderhub.builder import _safe_build_slug\n"
            "from binderhub.repoproviders import GitRepoProvider\n"
            "p = GitRepoProvider(spec=sys.argv[1] + '/' + sys.argv[2])\n"
            "prefix = sys.argv[3]\n"
            "slug = _safe_build_slug(p.get_build_slug(), limit=255 - len(prefix))\n"
            "print(f'{prefix}{slug}:{sys.argv[2]}'.replace('_', '-').lower())\n"
        )
        out = subprocess.run(
            [str(self.python), "-c", code, quote(repo_url, safe=""), ref, IMAGE_PREFIX],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    async def launch(self, session: aiohttp.ClientSession, repo_url: str, ref: str) -> float:
        """``/build`` to ``ready`` for a cached image; the server is stopped after, untimed."""
        spec = f"git/{quote(repo_url, safe='')}/{ref}"
        started = time.monotonic()
        decoder = b.SSEDecoder()
        last: dict[str, object] = {}
        async with session.get(
            f"{self.url}services/binder/build/{spec}",
            headers=b.SSE,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as resp:
            async for chunk in resp.content.iter_any():
                for event in decoder.feed(chunk):
                    last = event
                if last.get("phase") in ("ready", "failed"):
                    break
        elapsed = time.monotonic() - started
        if last.get("phase") != "ready":
            raise SystemExit(f"bench: a BinderHub launch did not get ready: {last}")
        await self.delete_user(session, str(last["url"]).rstrip("/").split("/")[-1])
        return elapsed

    async def delete_user(self, session: aiohttp.ClientSession, user: str) -> None:
        headers = {"Authorization": f"token {self.token}"}
        async with session.delete(f"{self.api}users/{user}/server", headers=headers):
            pass
        for _ in range(100):
            async with session.delete(f"{self.api}users/{user}", headers=headers) as r:
                if r.status in (204, 404):
                    return
            await asyncio.sleep(0.2)


def _binder_port() -> int:
    """BinderHub binds every interface: a free port there, above the kernel's range of
    ephemeral ports, so no connection's local port nor another ``free_port()`` (both drawn
    from that range) can take it in the seconds before BinderHub listens."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    top = int(ephemeral.read_text().split()[1]) if ephemeral.exists() else 60999
    low, high = (top + 1, 65535) if top < 65000 else (40000, 60000)
    for _ in range(50):
        port = low + secrets.randbelow(high - low + 1)
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("", port))
            return port
    raise SystemExit("bench: no free port for BinderHub")


def _start(found: Install, run: str, state: Path) -> tuple[BinderHub, subprocess.Popen[bytes]]:
    proxy_port = b.free_port()
    token = secrets.token_hex(32)
    values = {
        "proxy_port": proxy_port,
        "hub_port": b.free_port(),
        "proxy_api_port": b.free_port(),
        "binder_port": _binder_port(),
        "state": state,
        "python": str(found.python),
        "bench_token": token,
        "container_prefix": _container_prefix(run),
        "image_prefix": IMAGE_PREFIX,
    }
    (state / "jupyterhub_config.py").write_text(HUB_CONFIG.format(**values))
    (state / "binderhub_config.py").write_text(BINDER_CONFIG.format(**values))
    environment = {
        **os.environ,
        "PATH": f"{found.chp_bin}:{found.python.parent}:{os.environ['PATH']}",
    }
    with open(state / "jupyterhub.log", "wb") as log:
        proc = subprocess.Popen(
            [str(found.python), "-m", "jupyterhub", "-f", str(state / "jupyterhub_config.py")],
            cwd=state,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    hub = BinderHub(
        url=f"http://127.0.0.1:{proxy_port}/",
        api=f"http://127.0.0.1:{proxy_port}/hub/api/",
        token=token,
        python=found.python,
    )
    return hub, proc


def _container_prefix(run: str) -> str:
    return f"sbbench-bh-{run}"


def _stop(proc: subprocess.Popen[bytes], run: str) -> None:
    # JupyterHub stops its services on SIGTERM; the process group catches stragglers.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={_container_prefix(run)}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def running(archive: Path, run: str, state: Path) -> AsyncIterator[BinderHub]:
    """Install (once), configure and start BinderHub's local mode; stop it and its servers."""
    found = await asyncio.to_thread(install, archive)
    for attempt in (1, 2):
        hub, proc = await asyncio.to_thread(_start, found, run, state)
        if await _wait_up(hub, proc):
            break
        await asyncio.to_thread(_stop, proc, run)
        await asyncio.to_thread(keep_logs, state, f"{run}-start{attempt}")
        if attempt == 2:
            raise SystemExit("bench: BinderHub did not come up, twice (its logs are above)")
        # what failed is in the logs kept; a second start on other ports tells a clash
        # (a port taken meanwhile) from a setup that cannot work
        b.say("BinderHub did not come up; starting it once more, on other ports")
        (state / "binderhub.log").unlink(missing_ok=True)
    try:
        b.say(f"BinderHub (local mode) at {hub.url}services/binder/")
        yield hub
    except BaseException:
        await asyncio.to_thread(_stop, proc, run)
        await asyncio.to_thread(keep_logs, state, run)
        raise
    else:
        await asyncio.to_thread(_stop, proc, run)


LOGS = ("jupyterhub.log", "binderhub.log")


def keep_logs(state: Path, run: str) -> None:
    """The hub's and BinderHub's logs, copied out of ``state`` (a temporary directory) to
    ``<cache>/logs/<run>/``, and their tails on stderr: why a peer failed is in them."""
    kept = cache_dir() / "logs" / run
    kept.mkdir(parents=True, exist_ok=True)
    for name in LOGS:
        path = state / name
        if not path.exists():
            continue
        shutil.copy(path, kept / name)
        tail = path.read_text(errors="replace").splitlines()[-25:]
        b.say(f"--- the last lines of {name}:\n" + "\n".join(tail))
    b.say(f"BinderHub's logs kept in {kept}")


async def _wait_up(hub: BinderHub, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 180
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"{hub.url}services/binder/versions") as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.3)
    return False
