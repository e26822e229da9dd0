"""Bring a machine to a working Docker Swarm with swarmbinder's images built.

Used by ``stack/testground`` and by ``swarmbinder up``. Standard library only, and it drives the
``docker`` CLI, so it runs before the package's dependencies are installed and on any Docker
client version. Everything here is idempotent: a second call finds what exists and reuses it.

Image builds are cached by their inputs: every file of the staged build context, the build
arguments and the base image's ID are hashed into the label ``swarmbinder.inputs``; an image
whose label matches is not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SwarmbinderError
from .labels import LABEL_INPUTS

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO_ROOT / "stack" / "images"
INPUTS_LABEL = LABEL_INPUTS
#: The Debian base made with debootstrap when no image registry can be pulled from.
LOCAL_BASE_IMAGE = "swarmbinder/debian:bookworm"
DOCKERHUB_PYTHON_BASE = "python:3.11-slim-bookworm"
DOCKERHUB_DEBIAN_BASE = "debian:bookworm-slim"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

Log = Callable[[str], None]


class SetupError(SwarmbinderError):
    """A setup step failed; the message is one line meant for the user."""


def _quiet(_: str) -> None:
    pass


def run(
    args: list[str],
    *,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure raise SetupError with its last stderr line."""
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SetupError(f"{args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{' '.join(args[:3])} did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise SetupError(f"{' '.join(args[:3])} failed: {_last_line(proc.stderr or proc.stdout)}")
    return proc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- engine


def docker_answers(timeout: float = 10) -> bool:
    try:
        return (
            run(
                ["docker", "info", "--format", "{{.ServerVersion}}"], timeout=timeout, check=False
            ).returncode
            == 0
        )
    except SetupError:
        return False


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def ensure_engine(log: Log = _quiet, state_dir: Path | None = None) -> str:
    """Use the engine at DOCKER_HOST or the default socket; install and start one if allowed.

    Installing needs root on Debian (apt). An explicit DOCKER_HOST that does not answer is an
    error: we never start a local engine behind the user's back in that case.
    """
    if docker_answers():
        return docker_host()
    if os.environ.get("DOCKER_HOST"):
        raise SetupError(
            f"the Docker engine at DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer"
        )
    if not shutil.which("dockerd"):
        _install_debian_packages(["docker.io", "iptables"], log)
    log("starting dockerd in the background")
    log_dir = state_dir or Path(tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "dockerd.log", "ab") as out:
        # A session of its own, so the engine outlives the command that started it.
        subprocess.Popen(
            ["dockerd"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if docker_answers(timeout=5):
            return docker_host()
        time.sleep(0.5)
    raise SetupError(f"dockerd did not answer within 90 s (see {log_dir / 'dockerd.log'})")


def postgres_bin_dir(log: Log = _quiet) -> Path:
    """The directory of Debian's PostgreSQL server programs (``initdb``, ``pg_ctl``,
    ``postgres``), installing the ``postgresql`` package first when there is none (root on
    Debian). The tests run a throwaway server from it to test the PostgreSQL store for real."""
    found = _postgres_bin_dirs()
    if not found:
        _install_debian_packages(["postgresql"], log)
        found = _postgres_bin_dirs()
    if not found:
        raise SetupError("PostgreSQL's initdb is not under /usr/lib/postgresql/*/bin")
    return found[-1]


def _postgres_bin_dirs() -> list[Path]:
    dirs = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    # The newest major version last; "9.6" < "15" compares as numbers.
    return sorted(dirs, key=lambda d: [int(x) for x in d.parent.name.split(".") if x.isdigit()])


def _install_debian_packages(packages: list[str], log: Log) -> None:
    missing = [p for p in packages if not _deb_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(
            f"{', '.join(missing)} missing and cannot be installed here "
            "(needs root on Debian/Ubuntu); install them, or point DOCKER_HOST at an engine"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=900)


def _deb_installed(package: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    proc = run(["dpkg-query", "-W", "-f=${Status}", package], check=False)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def ensure_swarm(advertise_addr: str = "127.0.0.1", log: Log = _quiet) -> str:
    """Make the engine a swarm manager if it is not part of a swarm; return the node id."""
    info = json.loads(run(["docker", "info", "--format", "{{json .Swarm}}"]).stdout)
    state = info.get("LocalNodeState")
    if state == "active":
        if not info.get("ControlAvailable"):
            raise SetupError(
                "this engine is a swarm worker; run on a manager or point DOCKER_HOST at one"
            )
        return str(info["NodeID"])
    log("initialising a single-node swarm")
    run(["docker", "swarm", "init", "--advertise-addr", advertise_addr])
    info = json.loads(run(["docker", "info", "--format", "{{json .Swarm}}"]).stdout)
    return str(info["NodeID"])


# --------------------------------------------------------------------------- base image


def image_id(tag: str, engine: str | None = None) -> str | None:
    """The image's ID on the engine (DOCKER_HOST's, or the ``engine`` address given)."""
    where = ["-H", engine] if engine else []
    proc = run(["docker", *where, "image", "inspect", "--format", "{{.Id}}", tag], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_label(tag: str, label: str) -> str | None:
    proc = run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', tag],
        check=False,
    )
    value = proc.stdout.strip()
    return value if proc.returncode == 0 and value not in ("", "<no value>") else None


@dataclass(frozen=True)
class Bases:
    """Which base images the Dockerfiles are built FROM on this machine."""

    python: str
    debian: str


def ensure_bases(log: Log = _quiet, mode: str = "auto") -> Bases:
    """Pick Docker Hub bases when they can be pulled, else make a Debian base with debootstrap.

    mode: ``auto`` (local base if already made, else try Docker Hub, else debootstrap),
    ``dockerhub`` or ``debootstrap``.
    """
    if mode not in ("auto", "dockerhub", "debootstrap"):
        raise SetupError(f"unknown base mode {mode!r} (auto, dockerhub or debootstrap)")
    if mode == "auto" and image_id(LOCAL_BASE_IMAGE):
        return Bases(LOCAL_BASE_IMAGE, LOCAL_BASE_IMAGE)
    if mode in ("auto", "dockerhub"):
        if all(
            image_id(t) or _try_pull(t, log) for t in (DOCKERHUB_PYTHON_BASE, DOCKERHUB_DEBIAN_BASE)
        ):
            return Bases(DOCKERHUB_PYTHON_BASE, DOCKERHUB_DEBIAN_BASE)
        if mode == "dockerhub":
            raise SetupError("cannot pull base images from Docker Hub")
    make_debian_base(log)
    return Bases(LOCAL_BASE_IMAGE, LOCAL_BASE_IMAGE)


def _try_pull(tag: str, log: Log) -> bool:
    log(f"trying to pull {tag}")
    try:
        return run(["docker", "pull", "-q", tag], timeout=120, check=False).returncode == 0
    except SetupError:
        return False


def debian_mirror() -> str:
    """The Debian mirror apt on this machine uses (deb822 or one-line sources)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "URIs:" and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[0] == "deb" and "security" not in line:
                url = next((w for w in words[1:] if "://" in w), None)
                if url:
                    return url
    return "http://deb.debian.org/debian"


def make_debian_base(log: Log = _quiet, suite: str = "bookworm") -> str:
    if image_id(LOCAL_BASE_IMAGE):
        return LOCAL_BASE_IMAGE
    _install_debian_packages(["debootstrap"], log)
    mirror = debian_mirror()
    log(f"making {LOCAL_BASE_IMAGE} with debootstrap from {mirror} (about 30 s)")
    with tempfile.TemporaryDirectory(prefix="swarmbinder-rootfs-") as root:
        run(["debootstrap", "--variant=minbase", suite, root, mirror], timeout=900)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            ["docker", "import", "-", LOCAL_BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise SetupError(
                f"docker import of the Debian base failed: {_last_line(imported.stderr)}"
            )
    return LOCAL_BASE_IMAGE


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageSpec:
    """One image the project builds: a folder under stack/images plus staged extras."""

    name: str
    tag: str
    #: "python" or "debian": which base the BASE_IMAGE build argument gets.
    base: str = "python"
    build_args: Mapping[str, str] = field(default_factory=dict)
    #: paths (relative to the repository root) copied into the context under ``src/``.
    source_paths: tuple[str, ...] = ()
    #: whether common-setup.sh and extra-ca/ go into the context.
    common_setup: bool = True


def project_images(version: str) -> list[ImageSpec]:
    return [
        ImageSpec("singleuser", f"swarmbinder/singleuser:{version}"),
        ImageSpec("builder", f"swarmbinder/builder:{version}"),
        ImageSpec("hub", f"swarmbinder/hub:{version}"),
        ImageSpec("registry", f"swarmbinder/registry:{version}", base="debian", common_setup=False),
        ImageSpec("postgres", f"swarmbinder/postgres:{version}", base="debian", common_setup=False),
        ImageSpec("front", f"swarmbinder/front:{version}", base="debian", common_setup=False),
        ImageSpec("tls", f"swarmbinder/tls:{version}", base="debian", common_setup=False),
        ImageSpec(
            "swarmbinder",
            f"swarmbinder/swarmbinder:{version}",
            source_paths=("pyproject.toml", "README.md", "swarmbinder", "tui"),
        ),
    ]


def extra_ca_files() -> list[Path]:
    """CA bundles to trust inside images: SWARMBINDER_EXTRA_CA (colon-separated files), else the
    host bundle when this machine's HTTPS goes through an intercepting proxy, which we cannot
    detect cheaply: the host bundle is a superset of a normal image's, so copying it is harmless.
    Set SWARMBINDER_EXTRA_CA= (empty) to copy nothing."""
    configured = os.environ.get("SWARMBINDER_EXTRA_CA")
    if configured is not None:
        return [Path(p) for p in configured.split(":") if p]
    return [HOST_CA_BUNDLE] if HOST_CA_BUNDLE.is_file() else []


def _stage_context(spec: ImageSpec, dest: Path) -> None:
    shutil.copytree(IMAGES_DIR / spec.name, dest, ignore=shutil.ignore_patterns("*.crt"))
    if spec.common_setup:
        shutil.copy2(IMAGES_DIR / "common-setup.sh", dest / "common-setup.sh")
        (dest / "extra-ca").mkdir(exist_ok=True)
        for i, ca in enumerate(extra_ca_files()):
            if not ca.is_file():
                raise SetupError(f"extra CA file {ca} does not exist")
            shutil.copy2(ca, dest / "extra-ca" / f"extra-{i}.crt")
    if spec.source_paths:
        # The runtime dependencies alone, so the image can install them in a cached layer.
        import tomllib

        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
        (dest / "requirements.txt").write_text("\n".join(project["dependencies"]) + "\n")
    for rel in spec.source_paths:
        src = REPO_ROOT / rel
        target = dest / "src" / rel
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _hash_tree(root: Path, extra: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for item in extra:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    rebuilt: bool
    seconds: float


def _build_inputs(context: Path, args: Mapping[str, str], base_id: str) -> str:
    return _hash_tree(context, [f"{k}={v}" for k, v in sorted(args.items())] + [base_id])


def current_image(spec: ImageSpec, fallback_engine: str | None = None) -> str | None:
    """The ID of ``spec``'s image when a build would make the same one (its inputs label is
    what this tree and one of the known bases give), else None; needs no base image where
    the image is: a base missing from the engine is looked up on ``fallback_engine`` (a
    DOCKER_HOST value), where an image store's images were built."""
    existing = image_id(spec.tag)
    label = image_label(spec.tag, INPUTS_LABEL) if existing else None
    if not existing or not label:
        return None
    hub_base = DOCKERHUB_PYTHON_BASE if spec.base == "python" else DOCKERHUB_DEBIAN_BASE
    candidates = (LOCAL_BASE_IMAGE, hub_base)  # what ensure_bases may pick
    with tempfile.TemporaryDirectory(prefix=f"swarmbinder-ctx-{spec.name}-") as tmp:
        context = Path(tmp) / "ctx"
        _stage_context(spec, context)
        for base in candidates:
            base_id = image_id(base) or (fallback_engine and image_id(base, fallback_engine))
            args = {"BASE_IMAGE": base, **spec.build_args}
            if base_id and _build_inputs(context, args, base_id) == label:
                return existing
    return None


def build_image(
    spec: ImageSpec, bases: Bases, log: Log = _quiet, force: bool = False
) -> BuiltImage:
    """Build spec unless an image with the same inputs hash exists."""
    base = bases.python if spec.base == "python" else bases.debian
    base_id = image_id(base)
    if base_id is None:
        raise SetupError(f"base image {base} is missing")
    args = {"BASE_IMAGE": base, **spec.build_args}
    with tempfile.TemporaryDirectory(prefix=f"swarmbinder-ctx-{spec.name}-") as tmp:
        context = Path(tmp) / "ctx"
        _stage_context(spec, context)
        inputs = _build_inputs(context, args, base_id)
        existing = image_id(spec.tag)
        if not force and existing and image_label(spec.tag, INPUTS_LABEL) == inputs:
            return BuiltImage(spec.tag, existing, rebuilt=False, seconds=0.0)
        log(f"building {spec.tag}")
        started = time.monotonic()
        # --force-rm: the legacy builder keeps a failed step's container otherwise.
        cmd = ["docker", "build", "--force-rm", "--label", f"{INPUTS_LABEL}={inputs}"]
        cmd += ["-t", spec.tag]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd.append(str(context))
        # The legacy builder works with every client and engine we meet; BuildKit needs buildx
        # on new clients and a frontend image pull on old ones.
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=1800, check=False
        )
        if proc.returncode != 0:
            tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-8:]
            raise SetupError(f"building {spec.tag} failed: " + " | ".join(tail))
        new_id = image_id(spec.tag)
        assert new_id is not None
        return BuiltImage(spec.tag, new_id, rebuilt=True, seconds=time.monotonic() - started)


# --------------------------------------------------------------------------- ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_http(url: str, timeout: float, ok_statuses: tuple[int, ...] = (200,)) -> bool:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status in ok_statuses:
                    return True
        except urllib.error.HTTPError as err:
            if err.code in ok_statuses:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    return False


# --------------------------------------------------------------------------- swarm objects


def ensure_overlay_network(name: str, labels: Mapping[str, str] | None = None) -> str:
    """An attachable overlay network called ``name`` (created if missing); returns its id.

    Attachable, so a standalone container (a test, a debugging shell) can join the services
    on it. A network of that name with another driver is an error, not something to replace:
    services may be using it.
    """
    inspect = run(
        ["docker", "network", "inspect", "--format", "{{.Id}} {{.Driver}} {{.Scope}}", name],
        check=False,
    )
    if inspect.returncode == 0:
        net_id, driver, scope = (inspect.stdout.split() + ["", "", ""])[:3]
        if driver != "overlay" or scope != "swarm":
            raise SetupError(
                f"network {name} exists as a {scope} {driver} network, not a swarm overlay; "
                "remove it or choose another name"
            )
        return net_id
    cmd = ["docker", "network", "create", "--driver", "overlay", "--attachable"]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    created = run([*cmd, name], check=False)
    if created.returncode != 0:
        # Another process may have created it meanwhile: that one is as good as ours.
        again = run(["docker", "network", "inspect", "--format", "{{.Id}}", name], check=False)
        if again.returncode == 0:
            return again.stdout.strip()
        raise SetupError(f"creating network {name} failed: {_last_line(created.stderr)}")
    return created.stdout.strip()


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A random hex secret kept in ``path`` (mode 0600), made on first use."""
    import secrets

    if path.is_file():
        value = path.read_text().strip()
        if len(value) >= 16:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def ensure_swarm_config(name_prefix: str, content: bytes, labels: Mapping[str, str]) -> str:
    """A Swarm config holding ``content``, named ``{name_prefix}{hash}``; returns the name.

    Swarm configs cannot be changed, so new content gets a new name; the old one is removed
    once nothing uses it (:func:`remove_unused_configs`).
    """
    name = name_prefix + hashlib.sha256(content).hexdigest()[:12]
    if run(["docker", "config", "inspect", name], check=False).returncode == 0:
        return name
    cmd = ["docker", "config", "create"]
    for key, value in labels.items():
        cmd += ["--label", f"{key}={value}"]
    with tempfile.NamedTemporaryFile(prefix="swarmbinder-config-") as tmp:
        tmp.write(content)
        tmp.flush()
        created = run([*cmd, name, tmp.name], check=False)
    exists = run(["docker", "config", "inspect", name], check=False).returncode == 0
    if created.returncode != 0 and not exists:
        raise SetupError(f"creating config {name} failed: {_last_line(created.stderr)}")
    return name


def remove_unused_configs(name_prefix: str, keep: str | None = None) -> None:
    """Remove configs named ``{name_prefix}*`` except ``keep``; ones still in use stay."""
    listed = run(["docker", "config", "ls", "--format", "{{.Name}}"], check=False)
    for name in listed.stdout.split():
        if name.startswith(name_prefix) and name != keep:
            run(["docker", "config", "rm", name], check=False)


def ensure_secret(name: str, make_value: Callable[[], str], labels: Mapping[str, str]) -> bool:
    """Create the Swarm secret ``name`` holding ``make_value()`` unless it exists; never
    overwrite one (services may be using it, and Swarm secrets cannot change anyway).

    Returns True if this call created it. The value goes through stdin, never the command line.
    """
    if run(["docker", "secret", "inspect", name], check=False).returncode == 0:
        return False
    cmd = ["docker", "secret", "create"]
    for key, value in labels.items():
        cmd += ["--label", f"{key}={value}"]
    try:
        proc = subprocess.run(
            [*cmd, name, "-"],
            input=make_value(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SetupError("docker is not installed") from exc
    if proc.returncode == 0:
        return True
    # Made by someone else meanwhile: theirs stands.
    if run(["docker", "secret", "inspect", name], check=False).returncode == 0:
        return False
    raise SetupError(f"creating secret {name} failed: {_last_line(proc.stderr)}")
