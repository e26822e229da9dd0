"""What a stack is made of (its services, secrets, files and labels), what ``up`` and ``down``
are asked to do, and what they answer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .. import __version__
from .. import hostsetup as hs
from ..errors import SwarmbinderError
from ..labels import LABEL_STACK, LABEL_STACK_INPUTS
from ..registrytokens import TOKEN_PATH

STACK_FILE = hs.REPO_ROOT / "docker-stack.yml"
CONSOLE_FILE = hs.REPO_ROOT / "stack" / "ssh-console.yml"
#: PostgreSQL mode (``--replicas N``, ``--store postgres``) and the front of several replicas.
POSTGRES_FILE = hs.REPO_ROOT / "stack" / "postgres.yml"
FRONT_FILE = hs.REPO_ROOT / "stack" / "front.yml"
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
#: Secrets of PostgreSQL mode (``{stack}-{name}``), made with the others so that ``swarmbinder
#: secrets`` serves a cluster deployed with stack/postgres.yml too: the database password, and
#: the key that signs Binder's login cookies alike at every replica.
POSTGRES_SECRETS = ("postgres-password", "cookie-secret")
#: Services (and images) PostgreSQL mode adds: the database and the front that spreads
#: Binder's port over the replicas.
POSTGRES_SERVICE = "postgres"
FRONT_SERVICE = "front"
POSTGRES_IMAGES = (POSTGRES_SERVICE, FRONT_SERVICE)
#: Binder's replicas: more than one needs PostgreSQL; past this, a typo rather than a plan.
MAX_REPLICAS = 16
STORES = ("sqlite", "postgres")
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
#: The TLS proxy (stack/tls.yml): its service (and image) and how it gets its certificate.
TLS_FILE = hs.REPO_ROOT / "stack" / "tls.yml"
TLS_SERVICE = "tls"
TLS_MODES = ("local", "acme", "cert")
#: Local mode's CA and the service that makes every node's engine trust it for the registry
#: (stack/registry-trust.yml), and that service's name.
TRUST_FILE = hs.REPO_ROOT / "stack" / "registry-trust.yml"
TRUST_SERVICE = "registry-trust"
#: Let's Encrypt's production directory: ACME mode's default CA.
DEFAULT_ACME_CA = "https://acme-v02.api.letsencrypt.org/directory"
STACK_LABEL = LABEL_STACK
INPUTS_LABEL = LABEL_STACK_INPUTS
NAMESPACE_LABEL = "com.docker.stack.namespace"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")


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


class Silent:
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
    #: the node that keeps the stack's state (a hostname or ID; None: the node labelled for
    #: it, else the manager ``up`` runs on)
    state_node: str | None = None
    #: an OpenSSH authorized_keys file: deploy the SSH console with these keys
    ssh_console_keys: Path | None = None
    #: remove the SSH console; with neither, ``up`` keeps a console that runs
    no_ssh_console: bool = False
    #: the console's published port (None: the running console's, else DEFAULT_SSH_PORT)
    ssh_port: int | None = None
    #: Binder's base_url, as its config file says (``up`` reads it): the token realm is under it
    base_url: str = "/"
    #: Binder's replicas (None: as deployed, else 1); more than one means PostgreSQL
    replicas: int | None = None
    #: ``sqlite`` or ``postgres`` (None: as deployed, else sqlite; postgres with replicas > 1)
    store: str | None = None
    #: serve Binder and the hub over HTTPS through the TLS proxy (None: plain HTTP only)
    tls: TLSOptions | None = None
    #: where the engine ``up`` drives publishes the stack's ports: 127.0.0.1 for this machine's,
    #: the host of DOCKER_HOST for a manager elsewhere (set by ``up``, not a stack variable)
    engine_host: str = "127.0.0.1"
    #: placement constraints of user servers, comma-separated (SWARMBINDER_HUB_CONSTRAINTS)
    server_constraints: str = ""

    @property
    def url(self) -> str:
        if self.tls:
            return self.tls.binder_url(self.public_host)
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
    def db_network(self) -> str:
        """PostgreSQL's network, with Binder and the hub only (PostgreSQL mode)."""
        return f"{self.name}-db"

    @property
    def front_network(self) -> str:
        """The front's and Binder's network; made by ``up``, not by the stack (PostgreSQL mode)."""
        return f"{self.name}-front"

    @property
    def registry(self) -> str:
        """The registry as every node's engine names it: the TLS proxy's registry port with
        TLS, else the registry's own published port (plain HTTP)."""
        if self.tls:
            return self.tls.registry(self.public_host)
        return f"{self.registry_host}:{self.registry_port}"

    @property
    def image_prefix(self) -> str:
        return f"{self.registry}/binder-"

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
        if self.replicas is not None and not 1 <= self.replicas <= MAX_REPLICAS:
            raise StackInputError(
                f"--replicas {self.replicas}: Binder runs 1 to {MAX_REPLICAS} replicas"
            )
        if self.store is not None and self.store not in STORES:
            raise StackInputError(f"unknown store {self.store!r} (sqlite or postgres)")
        if self.store == "sqlite" and (self.replicas or 1) > 1:
            raise StackInputError(
                f"--replicas {self.replicas} needs --store postgres: a SQLite file is one replica's"
            )

    def check_ports(self, ssh_port: int | None) -> None:
        """Each port is a TCP port and none is used twice (the console's too, if any)."""
        ports = {"port": self.port, "hub port": self.hub_port, "registry port": self.registry_port}
        if ssh_port is not None:
            ports["ssh port"] = ssh_port
        if self.tls:
            ports |= self.tls.ports()
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
            # Absent unless set, so a stack deployed without it keeps its inputs as they were.
            **(
                {"SWARMBINDER_HUB_CONSTRAINTS": self.server_constraints}
                if self.server_constraints
                else {}
            ),
        }


@dataclass(frozen=True)
class TLSOptions:
    """How the TLS proxy gets its certificate and where it listens (published on every
    interface of the manager, like the stack's other ports)."""

    #: ``local`` (Caddy's own CA), ``acme`` (a public name's certificate from an ACME server)
    #: or ``cert`` (the operator's certificate and key, kept as Swarm secrets)
    mode: str
    #: the name browsers use for Binder and the hub ("": the stack's public host, local mode)
    host: str = ""
    http_port: int = 80
    port: int = 443
    hub_port: int = 8443
    #: the registry over HTTPS, the name every node's engine pushes to and pulls from
    registry_port: int = 5443
    cert_file: Path | None = None
    key_file: Path | None = None
    acme_ca: str = DEFAULT_ACME_CA
    acme_email: str = ""
    #: the root certificate of a private ACME server (None: the system's roots)
    acme_ca_root: Path | None = None

    @property
    def public(self) -> bool:
        """ACME and operator certificates serve a real name: browsers may be told HSTS."""
        return self.mode != "local"

    def name(self, public_host: str) -> str:
        return self.host or public_host

    def binder_url(self, public_host: str, base_url: str = "/") -> str:
        return f"https://{_netloc(self.name(public_host), self.port, 443)}{base_url}"

    def hub_url(self, public_host: str) -> str:
        return f"https://{_netloc(self.name(public_host), self.hub_port, 443)}/"

    def registry(self, public_host: str) -> str:
        """``host:port`` of the registry behind the proxy (image names start with it)."""
        host = self.name(public_host)
        return f"{f'[{host}]' if ':' in host else host}:{self.registry_port}"

    def ports(self) -> dict[str, int]:
        return {
            "http port": self.http_port,
            "https port": self.port,
            "hub https port": self.hub_port,
            "registry https port": self.registry_port,
        }


def _netloc(host: str, port: int, default: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default else f"{shown}:{port}"


@dataclass(frozen=True)
class Console:
    """The SSH console a deploy includes: the version of its keys secret and its port."""

    keys_version: str
    port: int
    #: the authorized_keys text, when this ``up`` was given the file (None: a kept console)
    keys: str | None = None

    def keys_secret(self, stack: str) -> str:
        return f"{stack}-{CONSOLE_KEYS}{self.keys_version}"


@dataclass(frozen=True)
class Store:
    """Where Binder keeps its state, and how many replicas share it."""

    kind: str = "sqlite"
    replicas: int = 1

    @property
    def postgres(self) -> bool:
        return self.kind == "postgres"

    @property
    def services(self) -> tuple[str, ...]:
        """The stack's services in this mode, in the order they come up."""
        return SERVICES + ((POSTGRES_SERVICE, FRONT_SERVICE) if self.postgres else ())

    def describe(self) -> str:
        if not self.postgres:
            return "1 Binder replica on SQLite"
        return f"{self.replicas} Binder replica(s) on PostgreSQL"


@dataclass
class UpResult:
    url: str
    changed: bool
    rebuilt: list[str] = field(default_factory=list)
    created_secrets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the SSH console the stack runs now, if any
    console: Console | None = None
    #: where Binder keeps its state, and its replicas
    store: Store = field(default_factory=Store)
    #: the local CA's root certificate, copied out of the TLS proxy (``--tls local``)
    tls_root: Path | None = None


@dataclass
class DownResult:
    removed_stack: bool
    user_servers: int = 0
    builds: int = 0
    purged: list[str] = field(default_factory=list)
