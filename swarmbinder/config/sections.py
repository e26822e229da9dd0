"""The option table: every section of the configuration and the options it holds.

Each option is declared once, here, with its default, help text (docs/config.md is made from
it) and checks; :mod:`.base` says what a section does with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..logsetup import DEFAULT_DATEFMT, DEFAULT_FORMAT, check_format
from . import values
from .base import (
    MASK,
    OptionInfo,
    Section,
    build_options,
    bytes_opt,
    opt,
    plain,
    sections_of,
    url_opt,
)
from .binderhub_traits import DEFAULT_REPO_PROVIDERS, repo_providers
from .disks import DiskConfig
from .pools import PoolConfig
from .providers import NESTED_SECTIONS, ProvidersConfig

_SPEC_MATCHING = (
    "Patterns match the start of any of three forms of a launch, ignoring case: the spec "
    "after the provider prefix as BinderHub writes it (binder-examples/requirements/HEAD for "
    "gh), the spec with the prefix (gh/binder-examples/requirements/HEAD), and the canonical "
    "repository URL (https://github.com/binder-examples/requirements: lower-case scheme and "
    "host, no default port, no trailing dot, '/' or '.git')."
)


@dataclass(frozen=True)
class ServerConfig(Section):
    """The HTTP server itself."""

    host: str = opt("0.0.0.0", "Address to listen on; 0.0.0.0 listens on every interface.")
    port: int = opt(8585, "Port for the builder to listen on.", minimum=1, maximum=65535)
    base_url: str = opt(
        "/",
        "The base URL of the entire application. Normalised to start and end with '/'.",
        check=values.base_url,
    )
    log_level: str = opt(
        "INFO",
        "Logging level by name: DEBUG, INFO, WARNING, ERROR, CRITICAL.",
        check=values.log_level,
    )
    # BinderHub's logging and provider options (its config files are read as they are)
    debug: bool = opt(False, "Turn on debugging: log at DEBUG whatever log_level says.")
    log_format: str = opt(
        DEFAULT_FORMAT,
        "The logging format template (%-style). BinderHub's %(highlevel)s and JupyterHub's "
        "%(color)s and %(end_color)s work too.",
        check=check_format,
    )
    log_datefmt: str = opt(DEFAULT_DATEFMT, "The date format used for %(asctime)s in log_format.")
    repo_providers: Mapping[str, str] = opt(
        DEFAULT_REPO_PROVIDERS,
        "The providers offered, as BinderHub's prefix: class mapping; a provider left out is "
        "unknown (home page, /v2/, /build). Class names are BinderHub's, with or without "
        "'binderhub.repoproviders.', each under its own prefix.",
        check=repo_providers,
    )
    trusted_proxies: tuple[str, ...] = opt(
        (),
        "Networks (CIDR) of reverse proxies whose X-Forwarded-For header is honoured when "
        "finding a client's address for bans and rate limits. Empty trusts no proxy.",
        check=values.cidr_list,
    )
    cors_allow_origin: str = opt(
        "",
        "Origins that can access the API: sets Access-Control-Allow-Origin. '*' allows any "
        "origin; empty sends no header.",
    )
    enable_api_only_mode: bool = opt(
        False,
        "Serve only the API (/build, /versions, /health, /metrics) and no HTML pages.",
    )
    metrics_repo_label_limit: int = opt(
        1000,
        "Repositories that have a repo label of their own in binderhub_build_count and "
        "binderhub_launch_count at a time: the most recently counted ones. Others are counted "
        'under repo="other" until used again, so a flood of distinct repositories cannot '
        'grow the metrics without bound. 0 sends repo="" for every repository.',
        minimum=0,
    )
    store_path: str = opt(
        "swarmbinder.sqlite",
        "SQLite file for swarmbinder's own state (build records, bans, quotas); a relative "
        "path is taken from the working directory. Unused when store_url is set.",
    )
    store_url: str | None = opt(
        None,
        "Shared state in PostgreSQL: postgresql://USER@HOST[:PORT]/DATABASE, for several "
        "Binder replicas (bans, quotas, rate-limit counters, the audit log and build logs are "
        "then the same at every replica). Null: the SQLite file store_path (one replica). The "
        "password goes in store_password, never in the URL.",
        check=values.postgres_url,
    )
    store_password: str | None = opt(
        None,
        "With store_url: the database user's password.",
        secret=True,
    )


@dataclass(frozen=True)
class HubConfig(Section):
    """The JupyterHub that runs users' servers (through SwarmSpawner)."""

    hub_url: str = opt(
        "",
        "The base URL of the JupyterHub instance where users will run, as browsers reach it, "
        "e.g. https://hub.example.org/. A trailing slash is added.",
        check=values.http_url_slash,
    )
    hub_url_local: str = opt(
        "",
        "The base URL swarmbinder uses to reach the JupyterHub API, if it differs from hub_url "
        "(e.g. http://jupyterhub:8000/ on the stack's network). Empty: use hub_url; read "
        "HubConfig.local_url to get the effective value.",
        check=values.http_url_slash,
    )
    hub_api_token: str = opt("", "API token for talking to the JupyterHub API.", secret=True)
    auth_enabled: bool = opt(
        False,
        "Require users to log in to JupyterHub (no temporary users) and start the server for "
        "the logged-in user.",
    )
    oauth_client_id: str = opt(
        "service-swarmbinder",
        "With auth_enabled: swarmbinder's OAuth client id at the hub (HubOAuth.oauth_client_id; "
        "JupyterHub names a service's client service-<name>).",
    )
    oauth_redirect_uri: str = opt(
        "",
        "With auth_enabled: the OAuth callback as registered with the hub and reached by "
        "browsers, e.g. https://binder.example.org/oauth_callback (HubOAuth.oauth_redirect_uri). "
        "Empty: base_url + 'oauth_callback', a path on the hub's host, as BinderHub's default.",
    )
    oauth_client_secret: str = opt(
        "",
        "With auth_enabled: the OAuth client secret. Empty: hub_api_token (JupyterHub uses a "
        "service's api_token as its client secret).",
        secret=True,
    )
    cookie_secret: str | None = opt(
        None,
        "With auth_enabled: secret that signs login cookies, as a hex string of at least 16 "
        "bytes. Null: a random secret per process (logins then do not survive a restart and "
        "are not shared between replicas).",
        secret=True,
        check=values.cookie_secret,
    )
    allow_named_servers: bool = opt(
        False,
        "With auth_enabled: start each launch as a new named server of the logged-in user "
        "(the hub must allow named servers), so one user can run several. False: launch the "
        "user's default server, refused while it runs (BinderHub's Launcher.allow_named_servers).",
    )
    named_server_limit_per_user: int = opt(
        0,
        "With allow_named_servers: launches are refused while the user has this many named "
        "servers. 0: no limit (BinderHub's Launcher.named_server_limit_per_user).",
        minimum=0,
    )
    launch_timeout: int = opt(
        600,
        "Seconds to wait for a launched server to become ready before the launch fails "
        "(BinderHub's Launcher.launch_timeout).",
        minimum=1,
    )
    concurrent_launch_limit: int | None = opt(
        None,
        "User servers started at once by this replica; later launches wait in order and are "
        "told their place. A starting Jupyter server is CPU-bound, so a burst started all at "
        "once finishes later for everyone and runs into the hub's http_timeout. Null: two per "
        "CPU of the swarm's ready, active nodes (read again every few seconds). 0: no limit.",
        minimum=0,
    )
    hub_id: str = opt(
        "",
        "The hub's id as its user-server services are labelled (the hub's SWARMBINDER_HUB_ID, "
        "by default its service name). Quotas count only that hub's servers, and services of "
        "that hub that it no longer knows are removed. Empty: count every swarmbinder user "
        "server and remove none.",
    )
    reaper_interval: int = opt(
        60,
        "Seconds between sweeps for user-server services their hub no longer knows.",
        minimum=1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auth_enabled and not self.hub_url:
            raise ConfigError("hub_url", "auth_enabled needs hub_url: users log in at the hub")
        if self.auth_enabled and not (self.oauth_client_secret or self.hub_api_token):
            raise ConfigError(
                "oauth_client_secret", "auth_enabled needs oauth_client_secret or hub_api_token"
            )

    @property
    def local_url(self) -> str:
        """The URL for swarmbinder's own requests to the Hub: hub_url_local, else hub_url."""
        return self.hub_url_local or self.hub_url


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


@dataclass(frozen=True)
class QuotaConfig(Section):
    """Launch quotas and the per-IP rate limit."""

    pod_quota: int | None = opt(
        None,
        "The number of concurrent user servers this deployment supports; launches beyond it "
        "fail. Null: no quota. 0: accept no launches (e.g. maintenance).",
        minimum=0,
    )
    per_repo_quota: int = opt(
        0,
        "Maximum number of concurrent users running from a given repo. 0 means no quota.",
        minimum=0,
    )
    per_repo_quota_higher: int = opt(
        0,
        "Maximum number of concurrent users running from a repo matching high_quota_specs. "
        "0 means no quota.",
        minimum=0,
    )
    high_quota_specs: tuple[str, ...] = opt(
        (),
        "Regexes of specs that get per_repo_quota_higher. " + _SPEC_MATCHING,
        check=values.regex_list,
    )
    spec_config: tuple[values.SpecConfigItem, ...] = opt(
        (),
        "Per-repository configuration: a list of {pattern: regex, config: {name: value}}; "
        "every item whose pattern matches a spec applies its config, later items winning. "
        "config.quota (an integer, 0 or more) replaces the per-repo quota. " + _SPEC_MATCHING,
        parse=values.spec_config,
        type_name="list of {pattern, config}",
    )
    rate_limit: int = opt(
        10,
        "Launches allowed per client within rate_limit_period (BinderHub's "
        "RateLimiter.limit). A client is an IPv4 address or an IPv6 /64 network (a host "
        "picks any address in its /64 at will). Every /build without a build token counts, "
        "and so does every build token the /v2/ loading page mints; the first /build with "
        "a fresh token is then not counted again, a reuse of the token is. Over the limit "
        "/build answers 429 with Retry-After, and the loading page is shown with the "
        "limit's message and no token. 0 disables the limit.",
        minimum=0,
    )
    rate_limit_period: int = opt(
        3600,
        "The rate limit window in seconds; counts reset at its end (BinderHub's "
        "RateLimiter.period_seconds).",
        minimum=1,
    )
    max_streams_per_ip: int = opt(
        20,
        "Open /build event streams allowed per client (an IPv4 address or an IPv6 /64) at "
        "once; the next one gets a 429 and a 'failed' event saying so. A stream's slot is "
        "freed when it ends, also when the client drops the connection. Counted in each "
        "replica's memory, so behind N replicas a client may hold up to N times this. "
        "Stops one client from tying up sockets, tasks and build-log subscriptions by the "
        "thousand. 0: no cap.",
        minimum=0,
    )


@dataclass(frozen=True)
class BanConfig(Section):
    """Who and what may not build or launch."""

    ban_networks: Mapping[str, str] = opt(
        {},
        "Networks whose requests are rejected with 403: keys in CIDR notation "
        "(e.g. '1.2.3.4/32'), values a label used in logs and error messages.",
        check=values.cidr_keys,
    )
    allowed_outbound_networks: tuple[str, ...] = opt(
        (),
        "Networks (CIDR) the repo providers may connect to although they are not globally "
        "routable. Empty: provider API calls, DOI redirects and `git ls-remote` refuse "
        "loopback, link-local (the cloud metadata 169.254.169.254), private (RFC 1918, "
        "fc00::/7), unspecified, multicast and reserved addresses, so a spec cannot point "
        "Binder into its own network. List a GitHub Enterprise, GitLab or git server on a "
        "private network here; docs/security.md.",
        check=values.cidr_list,
    )
    block_build_user_agents: tuple[str, ...] = opt(
        (".*bot.*", ".*gpt.*", ".*crawler.*", ".*spider.*"),
        "Regexes of User-Agents that may not start builds: /build answers a match with 403. "
        "Matched case-insensitively from the start of the header (BinderHub's re.match), "
        "against its first 512 characters; a missing header is the empty string. The default "
        "is BinderHub's (self-declared bots and crawlers); [] lets every client build.",
        check=values.regex_list,
    )
    banned_specs: tuple[values.BannedSpec, ...] = opt(
        (),
        "Specs that may not launch: regexes, or {pattern: regex, reason: text} to tell users "
        "why. A spec may launch if it matches no banned_specs and, when allowed_specs is "
        "set, matches one of those. " + _SPEC_MATCHING,
        parse=values.banned_specs,
        type_name="list of regex or {pattern, reason}",
    )
    allowed_specs: tuple[str, ...] = opt(
        (),
        "Regexes of specs allowed to launch; empty allows every spec not banned. " + _SPEC_MATCHING,
        check=values.regex_list,
    )


@dataclass(frozen=True)
class PagesConfig(Section):
    """The HTML pages: landing page, about page, badges."""

    badge_base_url: str = opt(
        "",
        "Base URL to use when generating launch badges; empty: the URL the request came to.",
        check=values.http_url_slash,
    )
    banner_message: str = opt("", "Message (raw HTML) to display in a banner on all pages.")
    about_message: str = opt("", "Additional message (raw HTML) to display on the about page.")
    extra_header_html: Mapping[str, str] = opt(
        {},
        "Extra bits of HTML included as they are at the end of each page's <head>. Only the "
        "values are used; keys sort them.",
    )
    default_opengraph_title: str = opt(
        "The Binder Project",
        "The og:title of pages that have no title of their own (a launch page's is the "
        "provider and repository).",
    )
    template_path: str = opt(
        "",
        "Path to search for custom jinja templates, before using the default templates.",
    )
    template_variables: Mapping[str, Any] = opt(
        {}, "Extra variables to supply to jinja templates when rendering."
    )
    extra_footer_scripts: Mapping[str, str] = opt(
        {},
        "Extra bits of JavaScript loaded in the footer of each page, without the <script> tag. "
        "Only the values are used; keys sort them.",
    )
    extra_static_path: str = opt("", "Path to search for extra static files.")
    extra_static_url_prefix: str = opt(
        "/extra_static/", "URL prefix to serve extra static files under.", check=values.base_url
    )
    google_analytics_code: str | None = opt(
        None,
        "The Google Analytics code to use on the main page (removed from BinderHub in favour "
        "of extra_footer_scripts; kept so old configs load).",
    )
    google_analytics_domain: str = opt(
        "auto", "The Google Analytics domain to use on the main page."
    )


@dataclass(frozen=True)
class TokenConfig(Section):
    """Build tokens: lightweight proof that a /build request comes from our own page."""

    build_token_secret: str | None = opt(
        None,
        "Secret used to sign build tokens, as a hex string. Null: a random secret per process "
        "(tokens then do not survive a restart).",
        secret=True,
        check=values.hex_secret,
    )
    build_token_expires_seconds: int = opt(300, "Expiry (in seconds) of build tokens.", minimum=1)
    build_token_check_origin: bool = opt(True, "Whether to validate build token origin.")


@dataclass(frozen=True)
class AdminConfig(Section):
    """The admin API (used by the TUI)."""

    admin_token: str | None = opt(
        None,
        "Bearer token for the admin API. Null: the admin API is disabled.",
        secret=True,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; build it with :func:`load_config`."""

    server: ServerConfig = field(default_factory=ServerConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    builds: BuildConfig = field(default_factory=BuildConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    bans: BanConfig = field(default_factory=BanConfig)
    pages: PagesConfig = field(default_factory=PagesConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    pools: PoolConfig = field(default_factory=PoolConfig)
    disks: DiskConfig = field(default_factory=DiskConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    #: BinderHub options the config file set that do nothing here, for one start-up warning.
    ignored_binderhub_options: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        self.disks.check_with(retention_days=self.registry.image_retention_days)

    def section(self, option: OptionInfo) -> Section:
        """The section object holding ``option``."""
        if option.nested:
            section: Section = getattr(self.providers, option.section)
        else:
            section = getattr(self, option.section)
        return section

    def value(self, name: str) -> Any:
        """An option's value by its name (``pod_quota``, ``github.hostname``)."""
        option = OPTIONS[name]
        return getattr(self.section(option), option.attr)

    def as_dict(self, mask_secrets: bool = True) -> dict[str, Any]:
        """The effective options laid out as a config file, secrets that are set as "***"."""
        out: dict[str, Any] = {}
        for option in OPTIONS.values():
            value = plain(self.value(option.name))
            if mask_secrets and option.secret and value:
                value = MASK
            if option.nested:
                out.setdefault(option.section, {})[option.attr] = value
            else:
                out[option.name] = value
        return out


#: Flat sections, in the order docs/config.md lists them: (attribute of Config, class).
FLAT_SECTIONS = sections_of(Config)
OPTIONS: Mapping[str, OptionInfo] = build_options(FLAT_SECTIONS, NESTED_SECTIONS)


def iter_options() -> Iterator[OptionInfo]:
    """Every option, in documentation order."""
    return iter(OPTIONS.values())
