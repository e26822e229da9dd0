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
    opt,
    plain,
    sections_of,
)
from .binderhub_traits import DEFAULT_REPO_PROVIDERS, repo_providers
from .builds import BuildConfig, RegistryConfig
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
    launch_prefer_image_nodes: bool = opt(
        True,
        "Start a user server on a node that already holds its image (it built the image or "
        "ran a server of it), so the server starts without pulling: the spawn request names "
        "the node and the hub pins the task there, falling back to Swarm's own placement when "
        "the task does not run within seconds. Only ready, active nodes that meet the user "
        "servers' constraints and have room are preferred. False: Swarm places every server.",
    )
    launch_prefer_max_imbalance: int = opt(
        4,
        "With launch_prefer_image_nodes: a node holding the image is preferred only while it "
        "runs at most this many tasks more than the least busy eligible node, so a burst of "
        "launches of one image still spreads over the swarm.",
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
    allowed_specs: tuple[values.AllowedSpec, ...] = opt(
        (),
        "Regexes of specs allowed to launch; empty allows every spec not banned. An item "
        "{pattern: regex, provider: gh} allows launches of that provider only and leaves the "
        "others alone (a BinderHub provider's own allowed_specs); a provider with no such item "
        "is held to the plain regexes, and free when there are none. " + _SPEC_MATCHING,
        parse=values.allowed_specs,
        type_name="list of regex or {pattern, provider}",
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
