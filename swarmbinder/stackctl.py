"""``swarmbinder up`` and ``swarmbinder down``: the stack of docker-stack.yml on this machine.

``up`` goes from a machine with (or, on Debian as root, without) Docker to a running Binder:
engine, single-node swarm if the engine is in none, the project's images (rebuilt only when
their inputs changed), the stack's secrets (created once, never overwritten), its configs
(named by content hash, since Swarm configs cannot change), ``docker stack deploy``, then a
wait until Binder's ``/health`` and the proxy answer. Everything the stack depends on is hashed
into the label ``swarmbinder.stack-inputs`` on the binder service: when a second run finds the
same hashes on a stack that is up, it deploys nothing and says so; otherwise it says which
input changed.

The optional SSH console (stack/ssh-console.yml) is deployed on top when asked for with an
authorized_keys file, kept as it is (same keys secret, same port) by an ``up`` that does not
mention it, and removed only when asked to: ``--prune`` would otherwise drop it silently.

``down`` removes the stack, the user servers its hub started (SwarmSpawner makes them as
services outside the stack, and they hold the stack's network), the build services its Binder
left, and the network; volumes and secrets stay unless ``purge``.

Standard library and the docker CLI (through :mod:`hostsetup`), like ``stack/testground``:
every step is a short CLI call, and the CLI works with whichever engine version it meets.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import secrets
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from . import __version__
from . import hostsetup as hs
from .errors import SwarmbinderError
from .registrytokens import TOKEN_PATH, make_signing_pair

STACK_FILE = hs.REPO_ROOT / "docker-stack.yml"
CONSOLE_FILE = hs.REPO_ROOT / "stack" / "ssh-console.yml"
DEFAULT_BINDER_CONFIG = hs.REPO_ROOT / "stack" / "config" / "binder.yaml"
HUB_CONFIG = hs.REPO_ROOT / "stack" / "hub" / "jupyterhub_config.py"
STATE_DIR = Path("/var/tmp/swarmbinder")
#: The stack's services, in the order they come up.
SERVICES = ("registry", "hub", "proxy", "binder")
#: Secrets the stack mounts (``{stack}-{name}``); all random, made once.
SECRETS = (
    "hub-api-token",
    "proxy-auth-token",
    "registry-password",
    "registry-pull-password",
    "build-token-secret",
    "admin-token",
)
#: The registry token issuer's key and its certificate (``{stack}-{name}``): one pair, made
#: together, since neither can be read back to make the other.
TOKEN_PAIR = ("registry-token-key", "registry-token-certificate")
#: The hub's registry login, which may only pull.
PULL_USER = "hub-pull"
#: Images the stack runs (singleuser is a base for repositories, not a service).
STACK_IMAGES = {"swarmbinder": "SWARMBINDER_IMAGE_ID", "hub": "SWARMBINDER_HUB_IMAGE_ID"}
STACK_IMAGES |= {"registry": "SWARMBINDER_REGISTRY_IMAGE_ID", "builder": ""}
#: The SSH console's service and secrets (``{stack}-{name}``); the keys secret's name ends in a
#: digest of the keys, since a Swarm secret cannot change.
CONSOLE_SERVICE = "console"
CONSOLE_HOST_KEY = "console-host-key"
CONSOLE_KEYS = "console-authorized-keys-"
DEFAULT_SSH_PORT = 2222
STACK_LABEL = "swarmbinder.stack"
INPUTS_LABEL = "swarmbinder.stack-inputs"
NAMESPACE_LABEL = "com.docker.stack.namespace"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")

T = TypeVar("T")


class StackError(SwarmbinderError):
    """A step of ``up`` or ``down`` failed; the message is one line for the user."""


class StackInputError(StackError):
    """The command was asked for something impossible (a bad name, a port in use)."""


class Progress(Protocol):
    """Where ``up`` and ``down`` report what they are doing."""

    def step(self, message: str) -> None:
        """A line that stays: a step starts or something was done."""

    def status(self, message: str) -> None:
        """A transient line for a long step (replaced by the next one)."""


class _Silent:
    def step(self, message: str) -> None:
        pass

    def status(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class StackOptions:
    """What to deploy where; each field is also a docker-stack.yml variable."""

    name: str = "swarmbinder"
    port: int = 8585
    hub_port: int = 8000
    registry_port: int = 5000
    public_host: str = "127.0.0.1"
    registry_host: str = "127.0.0.1"
    config_file: Path = DEFAULT_BINDER_CONFIG
    #: where base images come from: auto, dockerhub or debootstrap (see hostsetup.ensure_bases)
    base: str = "auto"
    #: seconds to wait for the stack to become healthy
    timeout: float = 300
    #: an OpenSSH authorized_keys file: deploy the SSH console with these keys
    ssh_console_keys: Path | None = None
    #: remove the SSH console; with neither, ``up`` keeps a console that runs
    no_ssh_console: bool = False
    #: the console's published port (None: the running console's, else DEFAULT_SSH_PORT)
    ssh_port: int | None = None
    #: Binder's base_url, as its config file says (``up`` reads it): the token realm is under it
    base_url: str = "/"

    @property
    def url(self) -> str:
        return f"http://{self.public_host}:{self.port}/"

    @property
    def token_realm(self) -> str:
        """Binder's registry token endpoint as every node's engine reaches it."""
        return f"http://{self.public_host}:{self.port}{self.base_url}{TOKEN_PATH}"

    @property
    def hub_id(self) -> str:
        """The hub's service name, which labels its user servers (``swarmbinder.hub``)."""
        return f"{self.name}_hub"

    @property
    def network(self) -> str:
        return f"{self.name}-net"

    @property
    def user_network(self) -> str:
        """Where user servers run, with the hub and the proxy only."""
        return f"{self.name}-users"

    @property
    def image_prefix(self) -> str:
        return f"{self.registry_host}:{self.registry_port}/binder-"

    def check(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise StackInputError(
                f"stack name {self.name!r}: use 1-30 lower-case letters, digits and '-', "
                "starting with a letter"
            )
        if self.no_ssh_console and (self.ssh_console_keys or self.ssh_port is not None):
            what = "--ssh-console" if self.ssh_console_keys else "--ssh-port"
            raise StackInputError(f"--no-ssh-console removes the SSH console: drop {what}")
        ssh_port = self.ssh_port
        if ssh_port is None and self.ssh_console_keys:
            ssh_port = DEFAULT_SSH_PORT
        self.check_ports(ssh_port)
        if self.base not in ("auto", "dockerhub", "debootstrap"):
            raise StackInputError(f"unknown base {self.base!r} (auto, dockerhub or debootstrap)")

    def check_ports(self, ssh_port: int | None) -> None:
        """Each port is a TCP port and none is used twice (the console's too, if any)."""
        ports = {"port": self.port, "hub port": self.hub_port, "registry port": self.registry_port}
        if ssh_port is not None:
            ports["ssh port"] = ssh_port
        for what, port in ports.items():
            if not 0 < port < 65536:
                raise StackInputError(f"{what} {port} is not a TCP port")
        if len(set(ports.values())) != len(ports):
            raise StackInputError(f"the stack's ports must differ: {ports}")

    def variables(self) -> dict[str, str]:
        """docker-stack.yml's variables for these options."""
        return {
            "SWARMBINDER_STACK": self.name,
            "SWARMBINDER_PORT": str(self.port),
            "SWARMBINDER_HUB_PORT": str(self.hub_port),
            "SWARMBINDER_REGISTRY_PORT": str(self.registry_port),
            "SWARMBINDER_PUBLIC_HOST": self.public_host,
            "SWARMBINDER_REGISTRY_HOST": self.registry_host,
            "SWARMBINDER_REGISTRY_TOKEN_REALM": self.token_realm,
            "SWARMBINDER_VERSION": __version__,
            "SWARMBINDER_IMAGES": "swarmbinder",
        }


@dataclass(frozen=True)
class Console:
    """The SSH console a deploy includes: the version of its keys secret and its port."""

    keys_version: str
    port: int
    #: the authorized_keys text, when this ``up`` was given the file (None: a kept console)
    keys: str | None = None

    def keys_secret(self, stack: str) -> str:
        return f"{stack}-{CONSOLE_KEYS}{self.keys_version}"


@dataclass
class UpResult:
    url: str
    changed: bool
    rebuilt: list[str] = field(default_factory=list)
    created_secrets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the SSH console the stack runs now, if any
    console: Console | None = None


@dataclass
class DownResult:
    removed_stack: bool
    user_servers: int = 0
    builds: int = 0
    purged: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- up


def up(options: StackOptions, progress: Progress | None = None) -> UpResult:
    """Bring the stack up (idempotent); raises StackError with one line on failure."""
    report = progress or _Silent()
    started = time.monotonic()
    options.check()
    base_url = check_binder_config(options.config_file, binder_environment(options))
    options = dataclasses.replace(options, base_url=base_url)
    keys = read_console_keys(options.ssh_console_keys) if options.ssh_console_keys else None
    try:
        return _up(options, keys, report, started)
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def _up(options: StackOptions, keys: str | None, report: Progress, started: float) -> UpResult:
    report.step("checking the Docker engine")
    hs.ensure_engine(report.step, STATE_DIR)
    hs.ensure_swarm("127.0.0.1", report.step)
    deployed = deployed_ports(options.name)
    running_console = deployed_console(options.name)
    console = plan_console(options, keys, running_console)
    if running_console:
        deployed[CONSOLE_SERVICE] = running_console.port
    checked = [
        ("binder", options.port, "--port / SWARMBINDER_PORT"),
        ("proxy", options.hub_port, "--hub-port / SWARMBINDER_HUB_PORT"),
        ("registry", options.registry_port, "--registry-port / SWARMBINDER_REGISTRY_PORT"),
    ]
    if console:
        options.check_ports(console.port)  # a kept console's port against the new ones
        checked.append((CONSOLE_SERVICE, console.port, "--ssh-port / SWARMBINDER_SSH_PORT"))
    for service, port, variable in checked:
        # Our own running stack holds its ports; anything else holding one is a conflict.
        if deployed.get(service) != port and not hs.port_is_free(port):
            raise StackInputError(
                f"port {port} on 127.0.0.1 is already in use; choose another with {variable}"
            )

    report.step("checking the images")
    bases = hs.ensure_bases(report.step, options.base)
    image_ids: dict[str, str] = {}
    rebuilt: list[str] = []
    for spec in hs.project_images(__version__):
        if spec.name not in STACK_IMAGES:
            continue
        build = functools.partial(hs.build_image, spec, bases, report.step)
        built = _with_ticker(report, f"building {spec.tag}", build)
        if built.rebuilt:
            report.step(f"built {spec.tag} in {built.seconds:.0f} s")
            rebuilt.append(spec.name)
        image_ids[spec.name] = built.image_id

    created = ensure_secrets(options.name)
    if console:
        created += ensure_console_secrets(options.name, console)
    for name in created:
        report.step(f"created secret {name}")

    report.step(_console_plan_line(options, console, running_console))
    variables = stack_variables(options, image_ids, console)
    services = SERVICES + ((CONSOLE_SERVICE,) if console else ())
    deployed_inputs = current_inputs(options.name)
    reasons = changed_inputs(deployed_inputs, variables["SWARMBINDER_STACK_INPUTS"])
    if running_console and not console:
        # Also when the label never named it (a console deployed by hand).
        reasons = [r for r in reasons if not r.startswith("ssh-")] + ["ssh-console removed"]
    if deployed_inputs is None:
        reasons = ["not deployed"]
    elif not reasons and not stack_converged(options.name, services):
        reasons = ["a service is not running"]
    changed = bool(reasons)
    if changed:
        files = [STACK_FILE, *([CONSOLE_FILE] if console else [])]
        report.step(f"deploying stack {options.name} ({', '.join(reasons)})")
        hs.run(
            [
                "docker",
                "stack",
                "deploy",
                *(arg for path in files for arg in ("--compose-file", str(path))),
                # No registry has the project's images: use the engine's own.
                "--resolve-image",
                "never",
                "--prune",
                options.name,
            ],
            env={**_environ(), **variables},
            cwd=STACK_FILE.parent,
            timeout=300,
        )
    wait_healthy(options, report, console=console)
    if changed:
        for kind in ("binder", "hub"):
            prefix = f"{options.name}-{kind}-config-"
            current = variables[f"SWARMBINDER_{kind.upper()}_CONFIG_VERSION"]
            hs.remove_unused_configs(prefix, keep=prefix + current)
        # Replaced keys (or a removed console): the old secret is used by nothing now.
        remove_unused_console_keys(
            options.name, keep=console.keys_secret(options.name) if console else None
        )
    if console:
        report.step(
            f"the SSH console listens on port {console.port}: "
            f"ssh -t -p {console.port} admin@{options.public_host}"
        )
    return UpResult(
        url=options.url,
        changed=changed or bool(rebuilt) or bool(created),
        rebuilt=rebuilt,
        created_secrets=created,
        seconds=time.monotonic() - started,
        console=console,
    )


def _environ() -> dict[str, str]:
    import os

    # The stack file's variables come from us only, never from a stray shell variable.
    return {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}


def binder_environment(options: StackOptions) -> dict[str, str]:
    """The options docker-stack.yml sets in the binder service's environment."""
    return {
        "SWARMBINDER_HUB_URL": f"http://{options.public_host}:{options.hub_port}/",
        "SWARMBINDER_HUB_URL_LOCAL": "http://hub:8081/",
        "SWARMBINDER_HUB_ID": options.hub_id,
        "SWARMBINDER_IMAGE_PREFIX": options.image_prefix,
        "SWARMBINDER_REGISTRY_URL": "http://registry:5000",
        "SWARMBINDER_REGISTRY_USERNAME": "binder",
        "SWARMBINDER_REGISTRY_PULL_USERNAME": PULL_USER,
        "SWARMBINDER_BUILD_IMAGE": f"swarmbinder/builder:{__version__}",
        "SWARMBINDER_STORE_PATH": "/srv/swarmbinder/swarmbinder.sqlite",
    }


def check_binder_config(path: Path, environment: Mapping[str, str]) -> str:
    """Refuse a config file Binder would refuse at start, before anything is deployed, with
    the stack's ``environment`` applied over it as in the service; returns its base_url.

    Secret ``*_file`` options name files that exist only inside the service: they are checked
    against stand-in files (a random token, or a key pair where the option wants one), so the
    rest of the file is checked as the service will load it.
    """
    import yaml

    from .config import load_config
    from .errors import ConfigError

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StackInputError(f"cannot read the config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StackInputError(f"the config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StackInputError(f"the config file {path} must be a mapping of option names")
    with tempfile.TemporaryDirectory(prefix="swarmbinder-check-") as tmp:
        stand_in = Path(tmp) / "secret"
        stand_in.write_text(secrets.token_hex(32))
        pair = make_signing_pair()
        stand_ins = {
            "registry_token_key_file": Path(tmp) / "key.pem",
            "registry_token_certificate_file": Path(tmp) / "certificate.pem",
        }
        stand_ins["registry_token_key_file"].write_bytes(pair.key_pem)
        stand_ins["registry_token_certificate_file"].write_bytes(pair.certificate_pem)
        checked = {
            k: (str(stand_ins.get(k, stand_in)) if k.endswith("_file") else v)
            for k, v in raw.items()
        }
        copy = Path(tmp) / "binder.yaml"
        copy.write_text(json.dumps(checked))
        try:
            config = load_config(copy, env=environment)
        except ConfigError as exc:
            raise StackInputError(f"{path}: {exc}") from None
    return config.server.base_url


def stack_variables(
    options: StackOptions, image_ids: Mapping[str, str], console: Console | None = None
) -> dict[str, str]:
    """Every variable of docker-stack.yml (and of stack/ssh-console.yml with a ``console``),
    with config versions and the inputs label."""
    binder_config = options.config_file.read_bytes()
    variables = options.variables()
    variables["SWARMBINDER_BINDER_CONFIG"] = str(options.config_file.resolve())
    variables["SWARMBINDER_BINDER_CONFIG_VERSION"] = _digest(binder_config)
    variables["SWARMBINDER_HUB_CONFIG_VERSION"] = _digest(HUB_CONFIG.read_bytes())
    for name, variable in STACK_IMAGES.items():
        if variable:
            # A rebuilt image under the same tag changes the service, so Swarm rolls it.
            variables[variable] = image_ids[name].removeprefix("sha256:")[:12]
    parts = {
        "settings": _digest(json.dumps(options.variables(), sort_keys=True).encode()),
        "stack-file": _digest(STACK_FILE.read_bytes()),
        "binder-config": variables["SWARMBINDER_BINDER_CONFIG_VERSION"],
        "hub-config": variables["SWARMBINDER_HUB_CONFIG_VERSION"],
        **{f"{name}-image": image_ids[name].removeprefix("sha256:")[:12] for name in STACK_IMAGES},
    }
    if console:
        # Absent without a console, so a stack that never had one keeps its label as it was.
        variables["SWARMBINDER_SSH_PORT"] = str(console.port)
        variables["SWARMBINDER_CONSOLE_KEYS_VERSION"] = console.keys_version
        parts["ssh-console-file"] = _digest(CONSOLE_FILE.read_bytes())
        parts["ssh-console-keys"] = console.keys_version
        parts["ssh-port"] = str(console.port)
    variables["SWARMBINDER_STACK_INPUTS"] = ",".join(f"{k}={v}" for k, v in parts.items())
    return variables


def changed_inputs(deployed: str | None, wanted: str) -> list[str]:
    """The parts of the stack's inputs label that differ (all of them when none is deployed),
    including parts that are gone (the SSH console's, when it is removed)."""
    before = dict(item.partition("=")[::2] for item in (deployed or "").split(",") if item)
    after = dict(item.partition("=")[::2] for item in wanted.split(","))
    changed = [part for part, digest in after.items() if before.get(part) != digest]
    return changed + [part for part in before if part not in after]


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]


def ensure_secrets(stack: str) -> list[str]:
    """Create the stack's secrets that do not exist; returns the names created."""
    created = []
    for name in SECRETS:
        full = f"{stack}-{name}"
        # Hex: build_token_secret must be hex, and none may hold a newline.
        if hs.ensure_secret(full, lambda: secrets.token_hex(32), {STACK_LABEL: stack}):
            created.append(full)
    return created + ensure_token_pair(stack)


def ensure_token_pair(stack: str) -> list[str]:
    """The registry token issuer's key and certificate, made together when either is missing
    (a half-made pair, left by an ``up`` that was stopped between the two, is replaced)."""
    key, certificate = (f"{stack}-{name}" for name in TOKEN_PAIR)
    exists = {
        name: hs.run(["docker", "secret", "inspect", name], check=False).returncode == 0
        for name in (key, certificate)
    }
    if all(exists.values()):
        return []
    for name in (n for n, there in exists.items() if there):
        if hs.run(["docker", "secret", "rm", name], check=False).returncode != 0:
            raise StackError(
                f"secret {name} exists without its pair and is in use: remove the stack "
                "(swarmbinder down) and run up again"
            )
    pair = make_signing_pair()
    labels = {STACK_LABEL: stack}
    hs.ensure_secret(key, pair.key_pem.decode, labels)
    hs.ensure_secret(certificate, pair.certificate_pem.decode, labels)
    return [key, certificate]


# --------------------------------------------------------------------------- the SSH console


def read_console_keys(path: Path) -> str:
    """The authorized_keys text for the console; refused here, in one line, when the console
    would refuse it at start (unreadable, or not one public key it can use)."""
    # asyncssh is loaded only when a console is asked for.
    from .sshkeys import AuthorizedKeysError, authorized_keys_checked

    try:
        return authorized_keys_checked(path)[0]
    except AuthorizedKeysError as exc:
        raise StackInputError(f"--ssh-console: {exc}") from None


def plan_console(
    options: StackOptions, keys: str | None, running: Console | None
) -> Console | None:
    """The console this ``up`` deploys: from the keys file if given, else the running one kept
    (on ``--ssh-port`` if given), else none."""
    if options.no_ssh_console:
        return None
    if keys is not None:
        port = options.ssh_port or (running.port if running else DEFAULT_SSH_PORT)
        # 8 hex digits: the name stays within Swarm's 64 characters for any stack name.
        return Console(_digest(keys.encode())[:8], port, keys)
    if running:
        return Console(running.keys_version, options.ssh_port or running.port)
    if options.ssh_port is not None:
        raise StackInputError(
            f"--ssh-port: stack {options.name} runs no SSH console; add one with --ssh-console FILE"
        )
    return None


def _console_plan_line(
    options: StackOptions, console: Console | None, running: Console | None
) -> str:
    if console is None:
        if running:
            return "removing the SSH console (--no-ssh-console)"
        return "no SSH console (add one with --ssh-console FILE)"
    secret = console.keys_secret(options.name)
    if console.keys is None:
        return f"keeping the SSH console: port {console.port}, keys from secret {secret}"
    return (
        f"SSH console: port {console.port}, keys from {options.ssh_console_keys} (secret {secret})"
    )


def console_from_spec(stack: str, spec: Mapping[str, object]) -> Console | None:
    """The keys version and port of a deployed console service's spec (None if it has no
    keys secret of the stack's, e.g. a hand-made service of another shape)."""
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    mounted = container.get("Secrets", []) if isinstance(container, dict) else []
    prefix = f"{stack}-{CONSOLE_KEYS}"
    versions = [
        s["SecretName"].removeprefix(prefix)
        for s in mounted
        if str(s.get("SecretName", "")).startswith(prefix)
    ]
    endpoint = spec.get("EndpointSpec", {})
    ports = endpoint.get("Ports", []) if isinstance(endpoint, dict) else []
    published = [int(p["PublishedPort"]) for p in ports if "PublishedPort" in p]
    if not versions:
        return None
    return Console(versions[0], published[0] if published else DEFAULT_SSH_PORT)


def deployed_console(stack: str) -> Console | None:
    spec = _service_spec(f"{stack}_{CONSOLE_SERVICE}")
    return console_from_spec(stack, spec) if spec else None


def console_current(stack: str, console: Console) -> bool:
    """Whether a running task of the console service has ``console``'s keys and port. Right
    after a deploy the old task runs on for a moment: it would refuse the new keys."""
    tasks = hs.run(
        ["docker", "service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running"]
        + [f"{stack}_{CONSOLE_SERVICE}"],
        check=False,
        timeout=30,
    ).stdout.split()
    if not tasks:
        return False
    inspect = hs.run(["docker", "inspect", "--format", "{{json .}}", *tasks], check=False)
    for line in inspect.stdout.splitlines():
        task = json.loads(line)
        status = task.get("Status", {})
        mounted = task.get("Spec", {}).get("ContainerSpec", {}).get("Secrets", [])
        published = status.get("PortStatus", {}).get("Ports", [])
        if (
            status.get("State") == "running"
            and console.keys_secret(stack) in {s.get("SecretName") for s in mounted}
            and console.port in {p.get("PublishedPort") for p in published}
        ):
            return True
    return False


def ensure_console_secrets(stack: str, console: Console) -> list[str]:
    """The console's host key (made once: clients keep trusting it across deploys) and its
    keys secret; returns the names created."""
    created = []
    host_key = f"{stack}-{CONSOLE_HOST_KEY}"
    if hs.ensure_secret(host_key, _new_host_key, {STACK_LABEL: stack}):
        created.append(host_key)
    keys = console.keys
    if keys is not None and hs.ensure_secret(
        console.keys_secret(stack), lambda: keys, {STACK_LABEL: stack}
    ):
        created.append(console.keys_secret(stack))
    return created


def _new_host_key() -> str:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="swarmbinder-console")
    return key.export_private_key().decode()


def _console_secrets(stack: str) -> list[str]:
    """The stack's console secrets that exist: keys secrets of every version and the host key."""
    names = hs.run(["docker", "secret", "ls", "--format", "{{.Name}}"], timeout=30).stdout.split()
    keys = [n for n in names if n.startswith(f"{stack}-{CONSOLE_KEYS}")]
    return sorted(keys) + [n for n in names if n == f"{stack}-{CONSOLE_HOST_KEY}"]


def remove_unused_console_keys(stack: str, keep: str | None) -> None:
    """Remove the console's keys secrets but ``keep``; Swarm refuses one still in use."""
    for name in _console_secrets(stack):
        if name.startswith(f"{stack}-{CONSOLE_KEYS}") and name != keep:
            hs.run(["docker", "secret", "rm", name], check=False)


def _service_spec(name: str) -> dict[str, object] | None:
    proc = hs.run(["docker", "service", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    spec: dict[str, object] = json.loads(proc.stdout)[0]["Spec"]
    return spec


def current_inputs(stack: str) -> str | None:
    spec = _service_spec(f"{stack}_binder")
    labels = spec.get("Labels", {}) if spec else {}
    return labels.get(INPUTS_LABEL) if isinstance(labels, dict) else None


def deployed_ports(stack: str) -> dict[str, int]:
    """The published port of each of the stack's services that is deployed."""
    ports: dict[str, int] = {}
    for service in ("binder", "proxy", "registry"):
        spec = _service_spec(f"{stack}_{service}")
        endpoint = spec.get("EndpointSpec", {}) if spec else {}
        for port in endpoint.get("Ports", []) if isinstance(endpoint, dict) else []:
            if "PublishedPort" in port:
                ports[service] = int(port["PublishedPort"])
    return ports


def task_states(stack: str, services: tuple[str, ...] = SERVICES) -> dict[str, str]:
    """service -> the state of its newest task that should be running ('' if none)."""
    proc = hs.run(
        [
            "docker",
            "stack",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}}\t{{.CurrentState}}",
            stack,
        ],
        check=False,
        timeout=30,
    )
    states = dict.fromkeys(services, "")
    for line in proc.stdout.splitlines():
        task, _, state = line.partition("\t")
        service = task.removeprefix(f"{stack}_").split(".")[0]
        if service in states:
            states[service] = state.split(" ")[0].lower()
    return states


def stack_converged(stack: str, services: tuple[str, ...] = SERVICES) -> bool:
    return all(state == "running" for state in task_states(stack, services).values())


def _http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(2000).decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def wait_healthy(options: StackOptions, report: Progress, console: Console | None = None) -> None:
    """Until every service runs (Swarm counts a task with a healthcheck as running once it is
    healthy), the ``console``'s with its keys and port, Binder's /health says ok and the hub
    answers through the proxy."""
    services = SERVICES + ((CONSOLE_SERVICE,) if console else ())
    started = time.monotonic()
    health = f"http://127.0.0.1:{options.port}/health"
    hub = f"http://127.0.0.1:{options.hub_port}/hub/api/"
    states: dict[str, str] = {}
    status, body = 0, ""
    while time.monotonic() - started < options.timeout:
        states = task_states(options.name, services)
        if console and states[CONSOLE_SERVICE] == "running":
            if not console_current(options.name, console):
                states[CONSOLE_SERVICE] = "updating"
        if all(s == "running" for s in states.values()):
            status, body = _http_status(health)
            if status == 200 and _http_status(hub)[0] == 200:
                report.step(f"the stack is healthy ({time.monotonic() - started:.0f} s)")
                return
        shown = ", ".join(f"{k} {v or 'pending'}" for k, v in states.items())
        report.status(f"waiting for the stack: {shown} ({time.monotonic() - started:.0f} s)")
        time.sleep(1)
    raise StackError(_unhealthy_message(options, services, states, status, body))


def _unhealthy_message(
    options: StackOptions,
    services: tuple[str, ...],
    states: Mapping[str, str],
    status: int,
    body: str,
) -> str:
    waited = f"within {options.timeout:.0f} s"
    stuck = [s for s in services if states.get(s) != "running"]
    if not stuck:
        # Every task runs but Binder says something is down: /health names it.
        try:
            down = [c["service"] for c in json.loads(body).get("checks", []) if not c.get("ok")]
        except (ValueError, AttributeError, TypeError):
            down = []
        what = f" (down: {', '.join(down)})" if down else f" (HTTP {status})" if status else ""
        return f"Binder's /health at 127.0.0.1:{options.port} was not ok {waited}{what}"
    service = f"{options.name}_{stuck[0]}"
    return f"service {service} did not become healthy {waited}; its last log lines: " + (
        last_log_lines(service) or "(none)"
    )


def last_log_lines(service: str, lines: int = 5) -> str:
    # A log call can hang on Swarm: always with a timeout.
    try:
        proc = hs.run(
            ["docker", "service", "logs", "--raw", "--no-trunc", "--tail", str(lines), service],
            check=False,
            timeout=20,
        )
    except hs.SetupError:
        return ""
    text = (proc.stdout + proc.stderr).splitlines()
    return " | ".join(line.strip() for line in text if line.strip())[-800:]


def _with_ticker(report: Progress, label: str, work: Callable[[], T]) -> T:
    """Run ``work`` while ``report.status`` shows ``label`` and the time so far, once a second;
    a quick call (an image that is up to date) shows nothing."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(1.0):
            report.status(f"{label} ({time.monotonic() - started:.0f} s)")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        return work()
    finally:
        done.set()
        ticker.join()


# --------------------------------------------------------------------------- down


def down(name: str, *, purge: bool = False, progress: Progress | None = None) -> DownResult:
    """Remove the stack and what its hub and Binder made; volumes and secrets stay unless
    ``purge``. Raises StackError with one line on failure."""
    report = progress or _Silent()
    StackOptions(name=name).check()
    try:
        return _down(name, purge, report)
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def make_secrets(name: str) -> list[str]:
    """The stack's secrets that do not exist yet, made as ``up`` makes them (for a cluster
    deployed with ``docker stack deploy``); returns the names created. Never overwrites one."""
    StackOptions(name=name).check()
    if not hs.docker_answers():
        raise StackError(f"the Docker engine at {hs.docker_host()} does not answer")
    try:
        return ensure_secrets(name)
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def _down(name: str, purge: bool, report: Progress) -> DownResult:
    if not hs.docker_answers():
        raise StackError(f"the Docker engine at {hs.docker_host()} does not answer")
    options = StackOptions(name=name)
    binder = _service_spec(f"{name}_binder")
    prefix = _env_of(binder).get("SWARMBINDER_IMAGE_PREFIX", "") if binder else ""
    servers = _services_labelled(
        {"swarmbinder.role": "user-server", "swarmbinder.hub": options.hub_id}
    )
    if servers:
        report.step(f"removing {len(servers)} user server(s)")
        _remove_services(servers)
    builds = [
        s
        for s, labels in _services_with_labels({"swarmbinder.kind": "build"}).items()
        if prefix and labels.get("swarmbinder.image", "").startswith(prefix)
    ]
    if builds:
        report.step(f"removing {len(builds)} build service(s)")
        _remove_services(builds)
    stack_services = _services_labelled({NAMESPACE_LABEL: name})
    if stack_services:
        report.step(f"removing stack {name}")
        hs.run(["docker", "stack", "rm", name], timeout=120)
    _wait_gone(name, servers + builds, report)
    result = DownResult(removed_stack=bool(stack_services), user_servers=len(servers))
    result.builds = len(builds)
    if purge:
        result.purged = _purge(name, report)
    return result


def _env_of(spec: Mapping[str, object]) -> dict[str, str]:
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    env = container.get("Env", []) if isinstance(container, dict) else []
    return dict(item.partition("=")[::2] for item in env)


def _services_with_labels(labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
    cmd = ["docker", "service", "ls", "--format", "{{.Name}}"]
    for key, value in labels.items():
        cmd += ["--filter", f"label={key}={value}"]
    names = hs.run(cmd, timeout=30).stdout.split()
    if not names:
        return {}
    inspect = hs.run(
        [
            "docker",
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}}\t{{json .Spec.Labels}}",
            *names,
        ],
        check=False,
        timeout=30,
    )
    found: dict[str, dict[str, str]] = {}
    for line in inspect.stdout.splitlines():
        service, _, raw = line.partition("\t")
        found[service] = json.loads(raw) or {}
    return found


def _services_labelled(labels: Mapping[str, str]) -> list[str]:
    return sorted(_services_with_labels(labels))


def _remove_services(names: list[str]) -> None:
    hs.run(["docker", "service", "rm", *names], check=False, timeout=60)


def _wait_gone(name: str, extra_services: list[str], report: Progress, timeout: float = 90) -> None:
    """Until the stack's and those services' containers are gone, then remove the networks,
    which Docker keeps while any container is still attached to them."""
    options = StackOptions(name=name)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        # Stopped ones too: they hold the volumes until Swarm removes them.
        left = _containers({NAMESPACE_LABEL: name}, every=True)
        for service in extra_services:
            left += _containers({"com.docker.swarm.service.name": service})
        if not left:
            break
        report.status(
            f"waiting for {len(left)} container(s) to stop ({time.monotonic() - started:.0f} s)"
        )
        time.sleep(1)
    else:
        raise StackError(f"containers of stack {name} were still there after {timeout:.0f} s")
    # Job containers stay behind (Exited) after their service is removed.
    for service in extra_services:
        for container in _containers({"com.docker.swarm.service.name": service}, every=True):
            hs.run(["docker", "rm", "-f", container], check=False)
    for network in (options.network, options.user_network):
        while time.monotonic() - started < timeout:
            inspect = hs.run(["docker", "network", "inspect", network], check=False)
            if inspect.returncode != 0:
                break
            if hs.run(["docker", "network", "rm", network], check=False).returncode == 0:
                break
            report.status(
                f"waiting to remove network {network} ({time.monotonic() - started:.0f} s)"
            )
            time.sleep(1)
        else:
            raise StackError(f"network {network} is still in use after {timeout:.0f} s")


def _containers(labels: Mapping[str, str], every: bool = False) -> list[str]:
    cmd = ["docker", "ps", "-q", *(["-a"] if every else [])]
    for key, value in labels.items():
        cmd += ["--filter", f"label={key}={value}"]
    return hs.run(cmd, timeout=30).stdout.split()


def _purge(name: str, report: Progress) -> list[str]:
    purged: list[str] = []
    volumes = hs.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={NAMESPACE_LABEL}={name}"], timeout=30
    ).stdout.split()
    for volume in volumes:
        for _ in range(20):  # busy until the last container using it is gone
            if hs.run(["docker", "volume", "rm", volume], check=False).returncode == 0:
                purged.append(volume)
                break
            time.sleep(0.5)
        else:
            raise StackError(f"volume {volume} is still in use; remove it with docker volume rm")
    for full in [f"{name}-{secret}" for secret in (*SECRETS, *TOKEN_PAIR)] + _console_secrets(name):
        if hs.run(["docker", "secret", "rm", full], check=False).returncode == 0:
            purged.append(full)
    # The builder's registry credentials, made by Binder as builds need them and named by
    # content, so the stack cannot tell its own: remove every one no service uses (the engine
    # refuses a secret in use); the next build that needs one makes it again.
    auth = [
        secret
        for kind in ("registry-auth", "build-auth")
        for secret in hs.run(
            ["docker", "secret", "ls", "-q", "--filter", f"label=swarmbinder.kind={kind}"],
            timeout=30,
        ).stdout.split()
    ]
    unused = [s for s in auth if hs.run(["docker", "secret", "rm", s], check=False).returncode == 0]
    if unused:
        purged.append(f"{len(unused)} unused registry credentials secret(s)")
    for kind in ("binder", "hub"):
        hs.remove_unused_configs(f"{name}-{kind}-config-")
    if purged:
        report.step(f"removed {', '.join(purged)}")
    return purged
