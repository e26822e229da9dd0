"""The registry and build sections: where images go, and how repo2docker builds run.

Split from :mod:`.sections` (the option table), which lists them in the order docs/config.md
shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from . import values
from .base import Section, bytes_opt, opt, url_opt


@dataclass(frozen=True)
class RegistryConfig(Section):
    """The Docker registry built images are pushed to and looked up in."""

    use_registry: bool = opt(
        True,
        "Push built images to the registry and look images up there. False uses only images "
        "the Docker engine already has, which suits a single-node swarm.",
    )
    image_prefix: str = opt(
        "",
        "Prefix for all built image names, naming the registry as every swarm node's Docker "
        "engine reaches it, e.g. 127.0.0.1:5000/binder-. Lower case, no spaces.",
        check=values.image_prefix,
    )
    registry_url: str = url_opt(
        "http://registry:5000",
        "Registry API URL swarmbinder queries for existing images (on the stack's network, "
        "which may differ from the host in image_prefix).",
    )
    registry_username: str | None = opt(
        None, "User name for the registry API, with registry_password. Null: anonymous."
    )
    registry_password: str | None = opt(
        None,
        "Password for the registry API, with registry_username. With registry_token_key this "
        "is the operator's login at the token endpoint, which may do everything.",
        secret=True,
    )
    registry_token_key: str | None = opt(
        None,
        "PEM EC P-256 private key that signs the registry's tokens. Set, Binder is the token "
        "issuer of a registry with `auth: token` (its endpoint: <base_url>registry/token) and "
        "every build gets its own login that can push only its own image.",
        secret=True,
    )
    registry_token_certificate: str | None = opt(
        None,
        "PEM certificate of registry_token_key: the registry's rootcertbundle, sent in each "
        "token's x5c header.",
        secret=True,
    )
    registry_token_issuer: str = opt(
        "swarmbinder", "The tokens' `iss`: the registry's auth.token.issuer."
    )
    registry_token_service: str = opt(
        "swarmbinder-registry", "The tokens' `aud`: the registry's auth.token.service."
    )
    registry_token_lifetime: int = opt(
        300, "Seconds a registry token is valid; clients ask for a new one.", minimum=10
    )
    registry_pull_username: str | None = opt(
        None,
        "Login that may only pull images under image_prefix (the hub's, sent with every user "
        "server), with registry_pull_password. Needs registry_token_key.",
    )
    registry_pull_password: str | None = opt(
        None, "Password of registry_pull_username.", secret=True
    )
    image_retention_days: int | None = opt(
        None,
        "Delete images under image_prefix from the registry when no launch has used them for "
        "this many days (an image is first counted from when the sweep first sees it; one a "
        "Swarm service runs or builds is never deleted). Deleting frees no disk until the "
        "registry's garbage collection runs. Needs use_registry. Null: keep every image.",
        minimum=1,
    )
    image_retention_interval: int = opt(
        3600, "Seconds between sweeps of image_retention_days.", minimum=60
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_retention_days is not None and not self.use_registry:
            raise ConfigError("image_retention_days", "needs use_registry (it deletes from it)")
        self._set_together("registry_username", "registry_password")
        if self.registry_username is not None and ":" in self.registry_username:
            raise ConfigError("registry_username", "cannot contain ':' (HTTP basic auth)")
        self._set_together("registry_token_key", "registry_token_certificate")
        self._set_together("registry_pull_username", "registry_pull_password")
        if self.registry_pull_username is not None:
            if self.registry_token_key is None:
                raise ConfigError(
                    "registry_pull_username", "needs registry_token_key (the token issuer)"
                )
            if ":" in self.registry_pull_username or self.registry_pull_username.startswith(
                "build."
            ):
                raise ConfigError(
                    "registry_pull_username", "cannot contain ':' or start with 'build.'"
                )
        if self.registry_token_key is not None:
            from ..registrytokens import check_signing_pair

            check_signing_pair(self.registry_token_key, self.registry_token_certificate or "")

    def _set_together(self, first: str, second: str) -> None:
        """Both options set, or neither; the error names the one missing."""
        if (getattr(self, first) is None) != (getattr(self, second) is None):
            missing = second if getattr(self, second) is None else first
            raise ConfigError(missing, f"{first} and {second} go together")


@dataclass(frozen=True)
class BuildConfig(Section):
    """repo2docker builds, each a one-shot Swarm service."""

    docker_host: str | None = opt(
        None,
        "Docker engine (a swarm manager) to create build services on, e.g. "
        "unix:///var/run/docker.sock or tcp://manager:2375. Null: DOCKER_HOST, else the local "
        "socket.",
        check=values.docker_host,
    )
    build_image: str = opt(
        "quay.io/jupyterhub/repo2docker:2024.07.0",
        "The repo2docker image to be used for doing builds.",
    )
    build_memory_limit: int = bytes_opt(
        0,
        "Max amount of memory for each image build, in bytes or as a size like '2G'; applied "
        "to the build service and passed to repo2docker. 0 sets no limit.",
    )
    build_node_selector: Mapping[str, str] = opt(
        {},
        "Select the nodes builds run on: each key: value becomes a Swarm placement constraint "
        "'key==value', e.g. node.labels.binder-builds: 'true'.",
    )
    build_network: str = opt(
        "host",
        "Docker network the build service joins; 'host' lets repo2docker reach the registry "
        "and the internet as the node does.",
    )
    appendix: str = opt(
        "",
        "Appendix to pass to repo2docker: Docker directives run at the end of every build. "
        "A Python format string with {binder_url} and {repo_url} available.",
    )
    sticky_builds: bool = opt(
        False,
        "Attempt to run builds of the same repository on the same node, to reuse its layer cache.",
    )
    build_max_age: int = opt(
        14400, "Maximum age of builds in seconds; builds running longer are killed.", minimum=1
    )
    build_cleanup_interval: int = opt(
        60,
        "Interval in seconds between removals of finished build services and killing of "
        "builds older than build_max_age.",
        minimum=1,
    )
    build_pending_timeout: int = opt(
        300,
        "Seconds a build service may wait for a node to accept its task before the build "
        "fails (e.g. no node matches build_node_selector).",
        minimum=1,
    )
    concurrent_build_limit: int = opt(32, "The number of concurrent builds to allow.", minimum=0)
    build_queue_limit: int = opt(
        100,
        "How many builds may wait for a slot (beyond concurrent_build_limit) at once, across "
        "every replica: queued builds are counted in Swarm by their labels. Past it, a launch "
        "that needs a new build gets a 'failed' event saying the build queue is full and to "
        "try again later; launches of images already built and requests that join a running "
        "or queued build are never refused. Stops a client (or many) from queueing an "
        "unbounded number of builds of distinct refs, each a Swarm service. Replicas that "
        "queue at the same instant can overshoot by one build each. 0: no cap.",
        minimum=0,
    )
    log_tail_lines: int = opt(
        100,
        "Limit number of log lines to show when connecting to an already running build.",
        minimum=0,
    )
    build_log_memory_bytes: int = bytes_opt(
        1024 * 1024,
        "Log text one build holds in memory, in bytes or as a size like '1M': the last "
        "log_tail_lines lines replayed to a watcher who joins a running build are also cut to "
        "this size, and so is the backlog of each watcher that falls behind. A watcher is told "
        "how many lines it missed. Lines are cut at 64 KiB each.",
        minimum=64 * 1024,
    )
    build_log_max_bytes: int = bytes_opt(
        1024 * 1024,
        "Most bytes of one build's log kept in the store (persist_build_logs), as a size like "
        "'1M': the first half and the last half of a longer log are kept (a failed build's "
        "error is at its end), with a line saying how many lines were cut between them.",
        minimum=64 * 1024,
    )
    service_log_max_size: int = bytes_opt(
        64 * 1024 * 1024,
        "Largest log file of each container of a service Binder creates (builds, prebuild "
        "jobs, reapers), as a size like '64M', before Docker's json-file driver rotates it. "
        "Without rotation, a build printing forever fills the node's disk. Binder follows a "
        "build's log while it is written, and the engine's reader can lose lines when the file "
        "rotates under it: keep this above what a build's useful log reaches.",
        minimum=64 * 1024,
    )
    service_log_max_files: int = opt(
        3,
        "How many rotated log files of service_log_max_size each such container keeps.",
        minimum=1,
        maximum=100,
    )
    persist_build_logs: bool = opt(
        True,
        "Keep each build's log in the store after its service is removed, for the admin API.",
    )
    build_log_retention: int = opt(
        7 * 24 * 3600,
        "Seconds a finished build's persisted log is kept in the store.",
        minimum=1,
    )
    build_keep_failed_for: int = opt(
        600,
        "Seconds a failed build's service is kept (so `docker service logs` can read it) "
        "before housekeeping removes it.",
        minimum=0,
    )
    build_engine_grace: int = opt(
        30,
        "Seconds a build's watcher keeps retrying a Docker engine that stopped answering "
        "before the build is reported failed.",
        minimum=1,
    )
    build_node_lost_grace: int = opt(
        10,
        "Seconds the node running a build may be reported down by Swarm before the build is "
        "reported failed as lost (a loaded node can miss a few heartbeats and come back).",
        minimum=0,
    )
