"""What every benchmark shares: the test ground, a ``swarmbinder serve`` of its own, /build
streams, the hub's REST API, throwaway git repositories, statistics and the results file.

Each benchmark runs the real service as a subprocess (``swarmbinder serve``), so its memory
and CPU are its own and the load generators and floors in this process do not share its event
loop. Everything a benchmark creates carries a unique run id and is removed at the end: the
hub users it launched, the images it built (from this engine only), its git repositories.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from swarmbinder.events import SSEDecoder  # noqa: E402

SSE = {"Accept": "text/event-stream"}
VENV_BIN = Path(sys.executable).parent


def say(message: str) -> None:
    """Progress goes to stderr: stdout carries only the JSON result."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- test ground


def ground() -> dict[str, Any]:
    """``stack/testground up --quiet`` (idempotent; seconds when warm) and its JSON; or, when
    SWARMBINDER_BENCH_GROUND names a file holding that JSON, the file (the ground is left as
    it is: its hub is not redeployed from this checkout's config)."""
    saved = os.environ.get("SWARMBINDER_BENCH_GROUND")
    if saved:
        data: dict[str, Any] = json.loads(Path(saved).read_text().strip().splitlines()[-1])
        os.environ.setdefault("DOCKER_HOST", data["docker_host"])
        return data
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "testground"), "up", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: stack/testground up failed with exit code {proc.returncode}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    os.environ.setdefault("DOCKER_HOST", data["docker_host"])
    return data


def service_config(g: Mapping[str, Any], run: str, store_dir: Path, **extra: Any) -> dict[str, Any]:
    """The service's options for the test ground, under an image prefix of this run only (so a
    first build really builds), with the per-IP rate limit off (every client is 127.0.0.1)."""
    config: dict[str, Any] = {
        "image_prefix": f"{g['image_prefix']}bench{run}-",
        "registry_url": g["registry_url"],
        "hub_url": g["hub_url"],
        "hub_api_token": g["hub_api_token"],
        "hub_id": g["hub_service"],
        "docker_host": g["docker_host"],
        "build_image": g["images"]["builder"],
        "store_path": str(store_dir / "store.sqlite"),
        "launch_timeout": 120,
        "rate_limit": 0,
        # the ground's git server is on loopback, which the service refuses by default
        "allowed_outbound_networks": ["127.0.0.0/8", "::1/128"],
        "admin_token": f"bench-admin-{run}-{uuid.uuid4().hex}",
        "log_level": "WARNING",
    }
    config.update(extra)
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running ``swarmbinder serve``."""

    url: str
    proc: subprocess.Popen[bytes]
    config: dict[str, Any]
    rss_samples: list[int] = field(default_factory=list)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config['admin_token']}"}

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS since start) in KiB, from /proc."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out


def _start(config: Mapping[str, Any], tmp: Path) -> tuple[subprocess.Popen[bytes], Any, int]:
    path = tmp / "config.yaml"
    path.write_text(json.dumps(dict(config)))  # YAML is a superset of JSON
    port = free_port()
    # Only our config file: options from the caller's environment would skew the numbers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 (closed by serve())
    proc = subprocess.Popen(
        [str(VENV_BIN / "swarmbinder"), "serve", "--config", str(path)]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, log, port


@contextlib.asynccontextmanager
async def serve(config: Mapping[str, Any]) -> AsyncIterator[Server]:
    """Start ``swarmbinder serve`` with ``config`` on a free port of 127.0.0.1; stop it after."""
    with tempfile.TemporaryDirectory(prefix="swarmbinder-bench-") as tmp:
        proc, log, port = _start(config, Path(tmp))
        server = Server(url=f"http://127.0.0.1:{port}", proc=proc, config=dict(config))
        try:
            await _wait_up(server, Path(tmp) / "serve.log")
            say(f"swarmbinder serve pid {proc.pid} at {server.url}")
            yield server
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            log.close()


def _tail(log: Path) -> str:
    return log.read_text()[-2000:]


async def _wait_up(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise SystemExit(f"bench: swarmbinder serve exited:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(server.url + "/versions") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("bench: swarmbinder serve did not answer within 30 s")


# --------------------------------------------------------------------------- /build


def git_spec(url: str, ref: str) -> str:
    return f"git/{quote(url, safe='')}/{ref}"


@dataclass
class Stream:
    """One /build stream as a client saw it: events with their arrival times."""

    started: float
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1][1] if self.events else {}

    @property
    def ok(self) -> bool:
        return self.last.get("phase") == "ready"

    @property
    def first_event_seconds(self) -> float:
        return self.events[0][0] - self.started

    @property
    def total_seconds(self) -> float:
        return self.events[-1][0] - self.started


async def build_stream(
    session: aiohttp.ClientSession,
    server: Server,
    spec: str,
    *,
    build_only: bool = False,
    first_only: bool = False,
    limit_seconds: float = 300,
) -> Stream:
    """Read one /build stream to ``ready`` or ``failed`` (or its first event), then close it,
    as a well-behaved client does."""
    query = "?build_only=true" if build_only else ""
    headers = {**SSE, **(server.admin if build_only else {})}
    decoder = SSEDecoder()
    stream = Stream(started=time.monotonic())
    async with session.get(
        f"{server.url}/build/{spec}{query}",
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=limit_seconds),
    ) as resp:
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            for event in decoder.feed(chunk):
                stream.events.append((now, event))
            if stream.events and (
                first_only or stream.events[-1][1].get("phase") in ("ready", "failed")
            ):
                break
    return stream


# --------------------------------------------------------------------------- the hub


class Hub:
    """The test ground hub's REST API, as the raw floor and the cleanup use it."""

    def __init__(self, g: Mapping[str, Any], session: aiohttp.ClientSession) -> None:
        self.api = g["hub_api_url"].rstrip("/")
        self.headers = {"Authorization": f"token {g['hub_api_token']}"}
        self.session = session

    async def spawn(self, user: str, image: str) -> float:
        """The floor: create a user, start its server with ``image``, follow the progress to
        ready. Seconds from the first request to ready."""
        started = time.monotonic()
        async with self.session.post(f"{self.api}/users/{user}", headers=self.headers) as r:
            if r.status != 201:
                raise RuntimeError(f"creating {user}: {r.status} {await r.text()}")
        async with self.session.post(
            f"{self.api}/users/{user}/server",
            headers=self.headers,
            # the test ground's hub wants the server's token, as swarmbinder sends it
            json={"image": image, "token": secrets.token_urlsafe(24)},
        ) as r:
            if r.status not in (201, 202):
                raise RuntimeError(f"spawning {user}: {r.status} {await r.text()}")
            pending = r.status == 202
        if pending:
            decoder = SSEDecoder()
            async with self.session.get(
                f"{self.api}/users/{user}/server/progress", headers={**self.headers, **SSE}
            ) as r:
                async for chunk in r.content.iter_any():
                    for event in decoder.feed(chunk):
                        if event.get("failed"):
                            raise RuntimeError(f"spawn of {user} failed: {event}")
                        if event.get("ready"):
                            return time.monotonic() - started
            raise RuntimeError(f"progress of {user} ended before ready")
        return time.monotonic() - started

    async def delete_user(self, user: str) -> None:
        """Stop the user's server and delete the user (the hub refuses while it stops)."""
        url = f"{self.api}/users/{user}"
        async with self.session.delete(f"{url}/server", headers=self.headers):
            pass
        for _ in range(100):
            async with self.session.delete(url, headers=self.headers) as r:
                if r.status in (204, 404):
                    return
            await asyncio.sleep(0.2)
        say(f"could not delete hub user {user}")


def user_of(ready: Mapping[str, Any]) -> str:
    """The temporary user of a launch, from the ``ready`` event's server URL."""
    return str(ready["url"]).rstrip("/").split("/")[-1]


# --------------------------------------------------------------------------- repositories


class Repo:
    """A throwaway bare repository served by the test ground's git server."""

    def __init__(self, g: Mapping[str, Any], name: str) -> None:
        self.name = name
        self.state = Path(g["state_dir"])
        self.bare = self.state / "git" / f"{name}.git"
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.url = f"{g['git_base_url']}{name}.git"
        self._git("init", "-q", "-b", "main")

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "swarmbinder bench",
            "GIT_AUTHOR_EMAIL": "bench@swarmbinder.invalid",
            "GIT_COMMITTER_NAME": "swarmbinder bench",
            "GIT_COMMITTER_EMAIL": "bench@swarmbinder.invalid",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.work),
        }
        out = subprocess.run(
            ["git", *args], cwd=cwd or self.work, env=env, check=True, capture_output=True
        )
        return out.stdout.decode().strip()

    def commit(self, files: Mapping[str, str], message: str = "change") -> str:
        """Write ``files``, commit (empty commits allowed), publish; the new sha."""
        for path, content in files.items():
            (self.work / path).write_text(content)
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", message)
        if not self.bare.exists():
            self._git("clone", "-q", "--bare", str(self.work), str(self.bare), cwd=self.work)
        else:
            self._git("push", "-q", str(self.bare), "main", cwd=self.work)
        return self._git("rev-parse", "HEAD")

    def remove(self) -> None:
        shutil.rmtree(self.bare, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------- images


def remove_images(prefix: str) -> int:
    """Remove this engine's images tagged under ``prefix`` (this run's prefix only), and with
    them their untagged parent layers that no other image uses. How many tags went."""
    out = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    tags = [t for t in out.stdout.split() if t.startswith(prefix)]
    # A user server stopped a moment ago may still hold its image: Swarm removes the
    # container shortly after the service, so try again for a while.
    left = tags
    for _ in range(30):
        if not left:
            break
        subprocess.run(["docker", "image", "rm", *left], capture_output=True, check=False)
        listed = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        left = [t for t in listed if t.startswith(prefix)]
        if left:
            time.sleep(1)
    if left:
        say(f"could not remove {len(left)} image(s) under {prefix}")
    return len(tags)


def build_services(prefix: str) -> list[str]:
    """Names of the build services whose image is under ``prefix`` (this run's)."""
    out = subprocess.run(
        ["docker", "service", "ls", "-q", "--filter", "label=swarmbinder.kind=build"],
        capture_output=True,
        text=True,
        check=False,
    )
    names = []
    for service in out.stdout.split():
        name, _, image = (
            subprocess.run(
                ["docker", "service", "inspect", service, "--format",
                 '{{.Spec.Name}} {{index .Spec.Labels "swarmbinder.image"}}'],
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.strip()
            .partition(" ")
        )  # fmt: skip
        if image.startswith(prefix):
            names.append(name)
    return names


def remove_build_services(prefix: str) -> None:
    """Build services of this run: the build manager keeps a finished build's service for a
    while, and the benchmark's service is gone by then."""
    for name in build_services(prefix):
        subprocess.run(["docker", "service", "rm", name], capture_output=True, check=False)
        # A job's exited container stays behind after the service is gone.
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={name}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)


async def remove_from_registry(registry_url: str, images: Sequence[str]) -> None:
    """Delete ``images`` (this run's, under its own prefix) from the ground's registry, so a
    run leaves no repository behind there either."""
    from swarmbinder.errors import SwarmbinderError
    from swarmbinder.registry import RegistryClient

    async with aiohttp.ClientSession() as session:
        registry = RegistryClient(registry_url, session=session)
        for image in images:
            name, _, tag = image.rpartition(":")
            try:
                await registry.delete_tag(name, tag)
            except SwarmbinderError as exc:
                say(f"could not delete {image} from the registry: {exc}")


def clean_up(prefix: str) -> None:
    """Everything a run left on the engine under its image prefix."""
    remove_build_services(prefix)
    remove_images(prefix)


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, p50, p95, p99, min, max, mean of ``values`` times ``scale``."""
    if not values:
        return {"n": 0}
    v = [x * scale for x in values]
    return {
        "n": len(v),
        "p50": round(percentile(v, 50), digits),
        "p95": round(percentile(v, 95), digits),
        "p99": round(percentile(v, 99), digits),
        "min": round(min(v), digits),
        "max": round(max(v), digits),
        "mean": round(statistics.fmean(v), digits),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_engine": docker,
        "hostname": platform.node(),
    }


def stamp(now: dt.datetime) -> str:
    """A results file's name stem: to the second, so a later run never overwrites one that a
    README row points at."""
    return now.strftime("%Y-%m-%dT%H%M%S")


def emit(name: str, result: Mapping[str, Any], *, started: float, load_before: list[float]) -> None:
    """Print the result as JSON on stdout and write it to
    ``bench/results/<date>T<time>-<name>.json`` (a later run the same day keeps this one)."""
    now = dt.datetime.now(dt.UTC)
    out = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "load_before": load_before,
        "load_after": loadavg(),
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp(now)}-{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out), flush=True)


def mark_numbers(text: str, pattern: re.Pattern[str]) -> Iterator[int]:
    for match in pattern.finditer(text):
        yield int(match.group(1))


async def cached_image(
    session: aiohttp.ClientSession, server: Server, g: Mapping[str, Any]
) -> tuple[str, str]:
    """The test repository binder-dockerfile built into the registry under this run's prefix
    (a build the first time): its /build spec (at its full sha, so no ref lookup) and image."""
    repo = g["repos"]["binder-dockerfile"]
    spec = git_spec(repo["url"], repo["head"])
    stream = await build_stream(session, server, spec, build_only=True)
    if not stream.ok:
        raise SystemExit(f"bench: building the cached image failed: {stream.last}")
    return spec, str(stream.last.get("imageName") or stream.last.get("image"))
