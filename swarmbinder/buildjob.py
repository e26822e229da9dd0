"""A build as Swarm is asked for it: the request, the settings, and the job spec they make.

A build is a one-shot Swarm service running repo2docker (:func:`job_spec`). Its argv never lets
a ref or URL pass for an option (:func:`repo2docker_args`), and its ``swarmbinder.*`` labels
carry everything needed to pick it up again after a restart (:func:`build_labels`,
:func:`request_from_labels`). A queued build is the same service held back by a placement
constraint no node satisfies, so the queue survives restarts and shows in
``docker service ls``.

Registry credentials reach the builder as a Docker ``config.json`` in a Swarm secret, mounted
as a file and found through ``DOCKER_CONFIG`` (:data:`BUILDER_DOCKER_CONFIG`): docker-py (which
repo2docker pushes with) reads it and sends the credentials to the node's daemon. Service
labels, env and args carry only the secret's name and the directory. Which login goes in it,
and for how long, is :mod:`swarmbinder.buildlogins`' business; this module only spells the
secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .buildstatus import BuildStatus
from .config import Config
from .gitcredentials import GitCredentials, GitLogin, builder_env
from .jobspec import BindMount, JobSpec, LogRotation, SecretMount
from .labels import (
    DOCKER_SOCKET,
    KIND_BUILD,
    KIND_BUILD_AUTH,
    KIND_REGISTRY_AUTH,
    LABEL_BUILD,
    LABEL_BUILD_SLUG,
    LABEL_CREATED,
    LABEL_IMAGE,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_PROVIDER,
    LABEL_QUEUED,
    LABEL_REF,
    LABEL_REGISTRY_LOGIN,
    LABEL_REPO_URL,
    LABEL_SPEC,
    LABEL_STATUS,
)
from .naming import build_service_name
from .registrytokens import BuildCredential, TokenIssuer, issuer_from_config
from .scrub import DEFAULT_SCRUBBER, Scrubber
from .sticky import BUILD_NODE_LABEL, parse_label
from .swarm import SecretInfo, SwarmClient

#: A constraint no node satisfies: queued builds wait behind it until a slot is free.
QUEUED_CONSTRAINT = f"node.labels.{LABEL_QUEUED}==never"
#: The builder's DOCKER_CONFIG: the registry credentials secret is mounted as config.json here.
BUILDER_DOCKER_CONFIG = "/etc/swarmbinder/docker"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
REGISTRY_AUTH_PREFIX = "swarmbinder-registry-auth-"
BUILD_AUTH_PREFIX = "swarmbinder-build-auth-"
#: The default of ``build_log_memory_bytes``: how much log text a build holds in memory, in its
#: replay ring and in each watcher's queue. 16 of repo2docker's longest lines (64 KiB), or about
#: 5,000 ordinary ones; a watcher who keeps up never comes near it.
DEFAULT_LOG_MEMORY_BYTES = 1024 * 1024
#: The labels of the secret with the configured registry login.
REGISTRY_AUTH_LABELS: Mapping[str, str] = {LABEL_KIND: KIND_REGISTRY_AUTH}


@dataclass(frozen=True)
class BuildRequest:
    """What to build: a resolved repository at an immutable ref, and the image to make."""

    provider: str
    spec: str
    repo_url: str
    ref: str
    build_slug: str
    image: str

    @property
    def service_name(self) -> str:
        # The image name is part of the hash: the same repo and ref built under another
        # image_prefix (another deployment, another registry) is another build.
        return build_service_name(self.build_slug, f"{self.ref}\n{self.image}")


@dataclass(frozen=True)
class BuildSettings:
    """The build options of the config, as the build manager needs them."""

    builder_image: str
    push: bool = True
    memory_limit: int = 0
    network: str = "host"
    appendix: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    sticky: bool = True
    max_age: float = 14400
    cleanup_interval: float = 60
    pending_timeout: float = 300
    concurrent_limit: int = 32
    #: At most this many builds queued across every replica (``build_queue_limit``); 0: any.
    queue_limit: int = 100
    log_tail_lines: int = 100
    #: Log text a build holds in memory: its replay ring, and each watcher's queue.
    log_memory_bytes: int = DEFAULT_LOG_MEMORY_BYTES
    #: Failed build services are kept this long so their log can be read with docker.
    keep_failed_for: float = 600
    extra_args: Sequence[str] = ()
    poll_interval: float = 0.25
    #: How long a watcher tolerates an engine that does not answer before failing the build.
    engine_grace: float = 30
    #: How long the node running a build may be reported down before the build is failed as
    #: lost: a busy node that misses a few heartbeats comes back and its build goes on.
    node_lost_grace: float = 10
    #: This deployment's image_prefix: only build services of images under it are adopted
    #: after a restart, so deployments sharing a swarm never take over each other's builds.
    #: Empty: adopt every build service.
    image_prefix: str = ""
    #: The registry's API URL; its host is given the credentials too (the image's host is).
    registry_url: str = ""
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    #: The registry's token issuer: each build gets a login of its own from it.
    issuer: TokenIssuer | None = field(default=None, repr=False, compare=False)
    #: Every secret the process knows; log lines are scrubbed as they are read, and each
    #: build's own login joins it while the build runs.
    scrubber: Scrubber = field(default=DEFAULT_SCRUBBER, repr=False, compare=False)
    #: Logins for private repositories, by host (:mod:`swarmbinder.gitcredentials`).
    git_logins: GitCredentials = field(default_factory=GitCredentials, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Config, issuer: TokenIssuer | None = None) -> BuildSettings:
        """``issuer``: the process's one issuer (it remembers revocations); made from the
        config when not given."""
        builds = config.builds
        registry = config.registry
        return cls(
            issuer=issuer if issuer is not None else issuer_from_config(registry),
            builder_image=builds.build_image,
            push=registry.use_registry,
            memory_limit=builds.build_memory_limit,
            network=builds.build_network,
            appendix=builds.appendix,
            node_selector=dict(builds.build_node_selector),
            sticky=builds.sticky_builds,
            max_age=builds.build_max_age,
            cleanup_interval=builds.build_cleanup_interval,
            pending_timeout=builds.build_pending_timeout,
            concurrent_limit=builds.concurrent_build_limit,
            queue_limit=builds.build_queue_limit,
            log_tail_lines=builds.log_tail_lines,
            log_memory_bytes=builds.build_log_memory_bytes,
            keep_failed_for=builds.build_keep_failed_for,
            image_prefix=registry.image_prefix,
            engine_grace=builds.build_engine_grace,
            node_lost_grace=builds.build_node_lost_grace,
            registry_url=registry.registry_url,
            registry_username=registry.registry_username,
            registry_password=registry.registry_password,
            git_logins=git_logins_from_config(config),
        )

    @property
    def has_registry_credentials(self) -> bool:
        return self.registry_username is not None and self.registry_password is not None


def repo2docker_args(request: BuildRequest, settings: BuildSettings) -> list[str]:
    """The builder's argv. Every value is attached to its option with ``=`` and the URL comes
    after ``--``, so a ref or URL can never be read as an option."""
    args = [
        f"--ref={request.ref}",
        f"--image-name={request.image}",
        "--no-clean",
        "--no-run",
        "--json-logs",
        "--user-name=jovyan",
        "--user-id=1000",
    ]
    if settings.appendix:
        args.append(f"--appendix={settings.appendix}")
    if settings.memory_limit:
        args.append(f"--build-memory-limit={settings.memory_limit}")
    if settings.push:
        args.append("--push")
    args.extend(settings.extra_args)
    args += ["--", request.repo_url]
    return args


def build_labels(
    request: BuildRequest, *, status: BuildStatus, node: str, now: float
) -> dict[str, str]:
    return {
        LABEL_KIND: KIND_BUILD,
        LABEL_PROVIDER: request.provider,
        LABEL_SPEC: request.spec,
        LABEL_REPO_URL: request.repo_url,
        LABEL_REF: request.ref,
        LABEL_BUILD_SLUG: request.build_slug,
        LABEL_IMAGE: request.image,
        LABEL_STATUS: status.value,
        LABEL_NODE: node,
        LABEL_CREATED: f"{now:.3f}",
    }


def request_from_labels(labels: Mapping[str, str]) -> BuildRequest:
    return BuildRequest(
        provider=labels.get(LABEL_PROVIDER, ""),
        spec=labels.get(LABEL_SPEC, ""),
        repo_url=labels.get(LABEL_REPO_URL, ""),
        ref=labels.get(LABEL_REF, ""),
        build_slug=labels.get(LABEL_BUILD_SLUG, ""),
        image=labels.get(LABEL_IMAGE, ""),
    )


def job_spec(
    request: BuildRequest,
    settings: BuildSettings,
    *,
    status: BuildStatus,
    node: str,
    now: float,
    build_nodes_only: bool,
    secret: SecretMount | None = None,
    login: BuildCredential | None = None,
    git_login: GitLoginMount | None = None,
) -> JobSpec:
    """The build's service: queued (held back), pinned to ``node``, or placed by Swarm.
    ``build_nodes_only``: some node carries the build node label, so builds run only there."""
    constraints = [f"{k}=={v}" for k, v in settings.node_selector.items()]
    if build_nodes_only:
        key, value = parse_label(BUILD_NODE_LABEL)
        constraints.append(f"node.labels.{key}=={value}")
    if status is BuildStatus.QUEUED:
        constraints.append(QUEUED_CONSTRAINT)
    elif node:
        constraints.append(f"node.hostname=={node}")
    return JobSpec(
        name=request.service_name,
        image=settings.builder_image,
        args=repo2docker_args(request, settings),
        labels=build_labels(request, status=status, node=node, now=now)
        | ({LABEL_REGISTRY_LOGIN: login.username} if login is not None else {}),
        mounts=[BindMount(DOCKER_SOCKET, DOCKER_SOCKET)],
        constraints=constraints,
        networks=[settings.network] if settings.network else [],
        memory_limit=settings.memory_limit or None,
        secrets=([secret] if secret is not None else [])
        + ([git_login.mount] if git_login is not None else []),
        env=({"DOCKER_CONFIG": BUILDER_DOCKER_CONFIG} if secret is not None else {})
        | (builder_env(git_login.login) if git_login is not None else {}),
    )


@dataclass(frozen=True)
class GitLoginMount:
    """A private repository's git login, as its build mounts it."""

    login: GitLogin
    mount: SecretMount


def connect_swarm(config: Config) -> SwarmClient:
    """The engine client every service of Binder's is created through, with the configured
    log rotation (service_log_max_size, service_log_max_files)."""
    builds = config.builds
    rotation = LogRotation(builds.service_log_max_size, builds.service_log_max_files)
    return SwarmClient.connect(builds.docker_host, rotation)


def git_logins_from_config(config: Config) -> GitCredentials:
    """The git logins of the providers' options (BinderHub's defaults from tokens included)."""
    providers = config.providers
    return GitCredentials.from_options(
        github_hostname=providers.github.hostname,
        github_credentials=providers.github.git_credentials,
        github_access_token=providers.github.access_token,
        github_client_id=providers.github.client_id,
        gitlab_hostname=providers.gitlab.hostname,
        gitlab_credentials=providers.gitlab.git_credentials,
        gitlab_token=providers.gitlab.private_token or providers.gitlab.access_token,
        git_credentials=providers.git.git_credentials,
    )


# -- the registry login's secret -----------------------------------------------------------------


def image_registry_host(image: str) -> str:
    """The registry an image name points at, as docker reads it (config.json's auths key)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB_AUTH_KEY


def url_registry_host(url: str) -> str:
    """``host:port`` of a registry API URL (or a bare ``host:port``)."""
    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0]
    return DOCKER_HUB_AUTH_KEY if host in ("docker.io", "registry-1.docker.io") else host


def registry_hosts(request: BuildRequest, settings: BuildSettings) -> list[str]:
    """The hosts a build's login is given for: its image's, and the registry API's."""
    hosts = [image_registry_host(request.image)]
    if settings.registry_url:
        hosts.append(url_registry_host(settings.registry_url))
    return hosts


def docker_config_json(hosts: Sequence[str], username: str, password: str) -> bytes:
    """A Docker client config.json giving ``username:password`` for each registry host."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return json.dumps(
        {"auths": {host: {"auth": auth} for host in sorted(set(hosts))}}, sort_keys=True
    ).encode()


def registry_auth_secret_name(content: bytes) -> str:
    """A content-addressed secret name: the same credentials give the same name.

    Anyone who can list secrets sees the name, so it comes from a deliberately slow hash: a
    plain sha256 would let them test password guesses against it quickly.
    """
    digest = hashlib.scrypt(content, salt=b"swarmbinder-registry-auth", n=2**14, r=8, p=1, dklen=8)
    return REGISTRY_AUTH_PREFIX + digest.hex()


@dataclass(frozen=True)
class LoginSecret:
    """A Swarm secret to create: its name, its config.json and its labels."""

    name: str
    content: bytes = field(repr=False)
    labels: Mapping[str, str]


def build_login_labels(service_name: str) -> dict[str, str]:
    """The labels of the secrets holding the own login of build ``service_name``."""
    return {LABEL_KIND: KIND_BUILD_AUTH, LABEL_BUILD: service_name}


def build_login_secret(
    request: BuildRequest, settings: BuildSettings, credential: BuildCredential
) -> LoginSecret:
    """The secret holding a build's own login."""
    content = docker_config_json(
        registry_hosts(request, settings), credential.username, credential.password
    )
    # The content holds a random nonce: a plain digest names it without telling anything.
    name = BUILD_AUTH_PREFIX + hashlib.sha256(content).hexdigest()[:32]
    return LoginSecret(name, content, build_login_labels(request.service_name))


def login_mount(secret: SecretInfo) -> SecretMount:
    """A registry login secret as the builder's ``config.json``."""
    return SecretMount(secret.id, secret.name, f"{BUILDER_DOCKER_CONFIG}/config.json")
