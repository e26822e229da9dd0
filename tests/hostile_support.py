"""Pieces of the hostile-repository corpus (tests/test_hostile_repos.py): git repositories
holding symlinks, submodules and very large files, served by the test ground's git server; a
stand-in for a cloud metadata service; node firewall rules; the probe a build's RUN step runs.

Every object gets a unique name and is removed afterwards: other test runs share the engine.
The metadata stand-in and the firewall rules change the node's network for as long as they
live, so they are made by one run at a time (a lock file) and always taken down again.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_fixtures import GitRepo, _git, docker

METADATA_ADDRESS = "169.254.169.254"
#: The node's end of the link to the stand-in: 169.254.169.252/30 holds both ends.
METADATA_PEER = "169.254.169.253"


@dataclass(frozen=True)
class Link:
    """A symlink to ``target``, committed as a link (git mode 120000)."""

    target: str


@dataclass(frozen=True)
class Filler:
    """A file of ``size`` bytes: ``line`` repeated (and cut at ``size``)."""

    size: int
    line: bytes = b"x\n"


@dataclass(frozen=True)
class Submodule:
    """A submodule at this path whose ``url`` the builder clones (``git submodule update``)."""

    url: str


Entry = str | Link | Filler | Submodule


def _write(path: Path, entry: Link | Filler | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(entry, Link):
        os.symlink(entry.target, path)
    elif isinstance(entry, Filler):
        # Blocks of about a megabyte: 100 MB is written in a fraction of a second.
        block = entry.line * max(1, (1 << 20) // len(entry.line))
        with path.open("wb") as out:
            left = entry.size
            while left > 0:
                out.write(block[:left])
                left -= len(block)
    else:
        path.write_text(entry)


@contextlib.contextmanager
def hostile_repo(
    ground: dict[str, Any], entries: Mapping[str, Entry], prefix: str
) -> Iterator[GitRepo]:
    """A one-commit bare repository with ``entries`` (path -> text, link, filler or
    submodule), served by the test ground's git server, removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    bare = Path(ground["state_dir"]) / "git" / f"{name}.git"
    submodules = {p: e for p, e in entries.items() if isinstance(e, Submodule)}
    with tempfile.TemporaryDirectory(prefix="sbtest-hostile-") as tmp:
        home, work = Path(tmp), Path(tmp) / "work"
        work.mkdir()
        for path, entry in entries.items():
            if not isinstance(entry, Submodule):
                _write(work / path, entry)
        if submodules:
            (work / ".gitmodules").write_text(
                "".join(
                    f'[submodule "{path}"]\n\tpath = {path}\n\turl = {sub.url}\n'
                    for path, sub in submodules.items()
                )
            )
        _git(["init", "-q", "-b", "main"], work, home)
        # Links are committed as links, whatever the local git config says.
        _git(["config", "core.symlinks", "true"], work, home)
        # Level 1: a large file of one repeated line compresses about as well, much faster.
        _git(["config", "core.compression", "1"], work, home)
        _git(["add", "-A"], work, home)
        for path in submodules:
            # A gitlink to a commit that exists nowhere: the clone fails after the fetch.
            _git(["update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},{path}"], work, home)
        _git(["commit", "-q", "-m", "hostile test repository"], work, home)
        _git(["clone", "-q", "--bare", str(work), str(bare)], home, home)
        _git(["update-server-info"], bare, home)
        sha = _git(["rev-parse", "HEAD"], work, home)
    try:
        yield GitRepo(name, f"{ground['git_base_url']}{name}.git", sha)
    finally:
        shutil.rmtree(bare, ignore_errors=True)


# -- the node's network ----------------------------------------------------------------------


def bridge_gateway() -> str:
    """The address of the node on Docker's default bridge: what a build's RUN step, which
    runs in a container on that bridge, reaches the node's own services at."""
    ipam = json.loads(docker("network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"))
    config = ipam[0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    # Docker leaves it out when it chose the default: the subnet's first address.
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def node_rule(chain: str, destination: str, target: str, tag: str) -> Iterator[None]:
    """``iptables -I <chain> -d <destination> -j <target>`` while the context lasts, marked
    with a comment naming ``tag`` so that exactly this rule is deleted afterwards."""
    rule = [chain, "-d", destination, "-m", "comment", "--comment", f"sbtest {tag}", "-j", target]
    _run("iptables", "-I", *rule)
    try:
        yield
    finally:
        _run("iptables", "-D", *rule)


#: The stand-in's server: answers every GET with its marker and notes who asked for what.
_STAND_IN_SERVER = """
import http.server, sys
address, log_path, marker = sys.argv[1], sys.argv[2], sys.argv[3].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log_path, "a") as log:
            log.write(f"{self.path} {self.headers.get('User-Agent', '')}\\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(marker)))
        self.end_headers()
        self.wfile.write(marker)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((address, 80), Handler).serve_forever()
"""


@dataclass(frozen=True)
class MetadataStandIn:
    """A cloud metadata service at 169.254.169.254, reached the way a real one is: routed off
    the node (into a network namespace), so container traffic to it is forwarded and passes
    Docker's ``DOCKER-USER`` chain, and the node's own traffic passes ``OUTPUT``."""

    marker: str
    log_path: Path

    def requests(self) -> list[str]:
        """``<path> <user agent>`` of every request it answered so far."""
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def fetch_from_node(self, path: str, timeout: float = 3) -> str:
        """What the node itself gets for ``path``: the marker, or the error's name."""
        try:
            with urllib.request.urlopen(f"http://{METADATA_ADDRESS}{path}", timeout=timeout) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError) as exc:
            return f"error {type(exc).__name__}"

    def fetch_from_container(self, image: str, path: str, timeout: float = 3) -> str:
        """What a container on the default bridge (as a build's RUN step) gets for ``path``."""
        script = (
            "import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen('http://{METADATA_ADDRESS}{path}', "
            f"timeout={timeout}).read().decode())\n"
            "except Exception as e:\n"
            "    print('error', type(e).__name__)\n"
        )
        return docker(
            "run", "--rm", "--network", "bridge", "--entrypoint", "python3", image, "-c", script
        ).strip()


@contextlib.contextmanager
def metadata_stand_in(state_dir: str, tag: str) -> Iterator[MetadataStandIn]:
    """The stand-in for as long as the context lasts (one at a time on a node: the address
    is fixed), then the namespace, its link and the route are gone again."""
    lock_path = Path(state_dir) / "hostile-metadata.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        namespace, host_end, far_end = f"sbtest-meta-{tag}", f"sbm{tag[:8]}", f"sbn{tag[:8]}"
        with tempfile.TemporaryDirectory(prefix="sbtest-meta-") as tmp:
            stand_in = MetadataStandIn(f"SBTEST-METADATA-{tag}", Path(tmp) / "requests.log")
            server: subprocess.Popen[bytes] | None = None
            _run("ip", "netns", "add", namespace)
            try:
                _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", far_end)
                _run("ip", "link", "set", far_end, "netns", namespace)
                _run("ip", "addr", "add", f"{METADATA_PEER}/30", "dev", host_end)
                _run("ip", "link", "set", host_end, "up")
                inside = ["ip", "netns", "exec", namespace]
                _run(*inside, "ip", "addr", "add", f"{METADATA_ADDRESS}/30", "dev", far_end)
                _run(*inside, "ip", "link", "set", far_end, "up")
                _run(*inside, "ip", "link", "set", "lo", "up")
                server = subprocess.Popen(
                    [*inside, sys.executable, "-c", _STAND_IN_SERVER, METADATA_ADDRESS,
                     str(stand_in.log_path), stand_in.marker],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                deadline = time.monotonic() + 15
                while stand_in.fetch_from_node("/ready", timeout=1) != stand_in.marker:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise AssertionError("the metadata stand-in did not come up")
                    time.sleep(0.2)
                yield stand_in
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(10)
                # Deleting the namespace deletes its end of the link, the other end with it,
                # and so the route to 169.254.169.252/30.
                _run("ip", "netns", "del", namespace)
                with contextlib.suppress(AssertionError):
                    _run("ip", "link", "del", host_end)


# -- registry pushes -------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_image() -> Iterator[str]:
    """A one-file image: pushes in a moment."""
    import io
    import tarfile

    name = f"sbtest-tiny-{uuid.uuid4().hex[:8]}:1"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = uuid.uuid4().bytes
        info = tarfile.TarInfo("hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(
        ["docker", "import", "-", name], input=archive.getvalue(), check=True, capture_output=True
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rmi", "-f", name], check=False, capture_output=True)


def push_with(
    registry_host: str, image: str, repository: str, login: tuple[str, str] | None
) -> tuple[bool, str]:
    """``docker push`` of ``image`` as ``registry_host/repository:<new tag>`` with ``login``
    (the engine fetches its token from the realm, as for a build); whether it worked, and what
    docker said."""
    target = f"{registry_host}/{repository}:t{uuid.uuid4().hex[:6]}"
    docker("tag", image, target)
    with tempfile.TemporaryDirectory(prefix="sbtest-docker-config-") as config_dir:
        if login is not None:
            auth = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            Path(config_dir, "config.json").write_text(
                json.dumps({"auths": {registry_host: {"auth": auth}}})
            )
        try:
            return True, docker("push", target, env={"DOCKER_CONFIG": config_dir})
        except AssertionError as failed:
            return False, str(failed)
        finally:
            docker("rmi", target)


# -- what a build's RUN step tries -----------------------------------------------------------

#: Run in a RUN step as ``python3 probe.py '<json>'``: one ``PROBE <name> <outcome>`` line per
#: attempt, then ``PROBE done``; then it waits until the test opens the gate (or a minute).
PROBE_SCRIPT = r"""
import json, os, socket, sys, time, urllib.error, urllib.request

cfg = json.loads(sys.argv[1])
gw = cfg["gateway"]


def say(name, outcome):
    print(f"PROBE {name} {outcome}", flush=True)


def failure(exc):
    reason = getattr(exc, "reason", None)
    return f"error {type(exc).__name__}" + (f" {type(reason).__name__}" if reason else "")


def http(name, url, headers=None, method="GET", data=None, timeout=15):
    # The answer is what counts, not its speed: on a loaded machine Binder, in the test's
    # process beside 200 MB of another build's log, has taken over 3 s to say 401.
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            say(name, f"http {reply.status} {reply.read(300)!r}")
    except urllib.error.HTTPError as exc:
        say(name, f"http {exc.code}")
    except Exception as exc:
        say(name, failure(exc))


def tcp(name, host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        say(name, "open")
    except Exception as exc:
        say(name, failure(exc))


say("docker-socket-file", "present" if os.path.exists("/var/run/docker.sock") else "absent")
try:
    unix = socket.socket(socket.AF_UNIX)
    unix.settimeout(3)
    unix.connect("/var/run/docker.sock")
    say("docker-socket-connect", "open")
except Exception as exc:
    say("docker-socket-connect", failure(exc))
for port in (2375, 2376):
    tcp(f"docker-tcp-{port}", gw, port)
    http(f"docker-http-{port}", f"http://{gw}:{port}/version")
http("swarm-manager-2377", f"http://{gw}:2377/version")
admin = f"http://{gw}:{cfg['binder_port']}/api/admin"
http("admin-no-token", f"{admin}/builds")
http("admin-wrong-token", f"{admin}/snapshot", {"Authorization": "Bearer not-the-token"})
http("hub-users", f"http://{gw}:{cfg['hub_port']}/hub/api/users")
registry = f"http://{gw}:{cfg['registry_port']}/v2"
http("registry-catalog", f"{registry}/_catalog")
http("registry-push-other", f"{registry}/{cfg['other_repository']}/blobs/uploads/", method="POST",
     data=b"")
http("realm-anonymous-push", f"http://{gw}:{cfg['binder_port']}/registry/token"
     f"?service=swarmbinder-registry&scope=repository:{cfg['other_repository']}:push,pull")
http("metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/run-step",
     timeout=3)
say("done", cfg["run"])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://{gw}:{cfg['gate_port']}/open", timeout=2) as reply:
            if reply.status == 200:
                say("released", cfg["run"])
                break
    except Exception:
        pass
    time.sleep(0.5)
"""
