"""Typed configuration, loaded once per process into frozen dataclasses.

Sources, lowest precedence first; a later source replaces an option set by an earlier one:

1. defaults: BinderHub's wherever BinderHub has the option (all listed in docs/config.md);
2. one YAML file: the ``path`` given to :func:`load_config`, else ``$SWARMBINDER_CONFIG``;
3. environment variables ``SWARMBINDER_<KEY>`` (``SWARMBINDER_GITHUB_<KEY>`` for ``github:``);
4. command-line flags: the ``overrides`` mapping (``swarmbinder serve --port``).

The YAML file is flat like BinderHub's traits: its keys are option names (``hub_url: ...``,
``pod_quota: 100``); only provider settings nest, under ``github:``, ``gitlab:``, ``git:``,
``zenodo:``, ``figshare:``, ``hydroshare:`` and ``dataverse:``. Unknown keys are errors, with the
closest valid name suggested. Environment values are parsed by the option's type: integers, booleans
(``true/false/yes/no/on/off/1/0``), lists and mappings as YAML or JSON text; an empty value sets an
optional option to null. ``SWARMBINDER_*`` variables that name no option are ignored (other tools
share the prefix) unless they are one typo away from an option, which is an error.

Secrets (the options marked *secret* in docs/config.md) can also be read from a file, as Swarm
mounts secrets under ``/run/secrets/``: ``hub_api_token_file: /run/secrets/hub_token`` in YAML, or
``SWARMBINDER_HUB_API_TOKEN_FILE``; a relative path is taken from the working directory and a
trailing newline is dropped. Setting both the value and its ``_file`` in one source is an error.
``swarmbinder show-config`` prints the merged result with secrets masked.

Every value is checked when it is loaded; the first problem raises
:class:`~swarmbinder.errors.ConfigError` naming the option. Other modules read options through
their section: ``config.builds.concurrent_build_limit``, ``config.providers.github.hostname``.
``python -m swarmbinder.config`` prints the option reference kept in docs/config.md. The checks
of single values live in :mod:`swarmbinder.optionvalues`.
"""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

import yaml

from . import optionvalues as values
from .errors import ConfigError

ENV_PREFIX = "SWARMBINDER_"
#: The environment variable naming the config file when no path is given.
CONFIG_ENV = "SWARMBINDER_CONFIG"
MASK = "***"

_Check = Callable[[Any], Any]


def _opt(
    default: Any,
    help: str,
    *,
    secret: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    check: _Check | None = None,
    parse: _Check | None = None,
    type_name: str | None = None,
) -> Any:
    """A documented option; ``check`` normalises or rejects a typed value (ValueError)."""
    metadata = {
        "help": help,
        "secret": secret,
        "minimum": minimum,
        "maximum": maximum,
        "check": check,
        "parse": parse,
        "type_name": type_name,
    }
    if isinstance(default, Mapping):
        frozen = types.MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class _Section:
    """Base of every section: type-checks and validates each field on construction."""

    #: Prepended to field names to give option names ("github." for the GitHub section).
    _prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = values.field_types(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            try:
                value = (
                    meta["parse"](value) if meta["parse"] else values.coerce(value, hints[f.name])
                )
                if isinstance(value, int) and meta["minimum"] is not None:
                    if value < meta["minimum"]:
                        raise ValueError(f"must be {meta['minimum']} or more, got {value}")
                if isinstance(value, int) and meta["maximum"] is not None:
                    if value > meta["maximum"]:
                        raise ValueError(f"must be {meta['maximum']} or less, got {value}")
                if meta["check"]:
                    value = meta["check"](value)
            except ValueError as e:
                raise ConfigError(self._prefix + f.name, str(e)) from None
            object.__setattr__(self, f.name, value)


# --- the sections --------------------------------------------------------------------------


_SPEC_MATCHING = (
    "Patterns match the start of the spec as written after the provider prefix "
    "(binder-examples/requirements/HEAD for gh), ignoring case."
)


@dataclass(frozen=True)
class ServerConfig(_Section):
    """The HTTP server itself."""

    host: str = _opt("0.0.0.0", "Address to listen on; 0.0.0.0 listens on every interface.")
    port: int = _opt(8585, "Port for the builder to listen on.", minimum=1, maximum=65535)
    base_url: str = _opt(
        "/",
        "The base URL of the entire application. Normalised to start and end with '/'.",
        check=values.base_url,
    )
    log_level: str = _opt(
        "INFO",
        "Logging level by name: DEBUG, INFO, WARNING, ERROR, CRITICAL.",
        check=values.log_level,
    )
    trusted_proxies: tuple[str, ...] = _opt(
        (),
        "Networks (CIDR) of reverse proxies whose X-Forwarded-For header is honoured when "
        "finding a client's address for bans and rate limits. Empty trusts no proxy.",
        check=values.cidr_list,
    )
    cors_allow_origin: str = _opt(
        "",
        "Origins that can access the API: sets Access-Control-Allow-Origin. '*' allows any "
        "origin; empty sends no header.",
    )
    enable_api_only_mode: bool = _opt(
        False,
        "Serve only the API (/build, /versions, /health, /metrics) and no HTML pages.",
    )
    store_path: str = _opt(
        "swarmbinder.sqlite",
        "SQLite file for swarmbinder's own state (build records, bans, quotas); a relative "
        "path is taken from the working directory.",
    )


@dataclass(frozen=True)
class HubConfig(_Section):
    """The JupyterHub that runs users' servers (through SwarmSpawner)."""

    hub_url: str = _opt(
        "",
        "The base URL of the JupyterHub instance where users will run, as browsers reach it, "
        "e.g. https://hub.example.org/. A trailing slash is added.",
        check=values.http_url_slash,
    )
    hub_url_local: str = _opt(
        "",
        "The base URL swarmbinder uses to reach the JupyterHub API, if it differs from hub_url "
        "(e.g. http://jupyterhub:8000/ on the stack's network). Empty: use hub_url; read "
        "HubConfig.local_url to get the effective value.",
        check=values.http_url_slash,
    )
    hub_api_token: str = _opt("", "API token for talking to the JupyterHub API.", secret=True)
    auth_enabled: bool = _opt(
        False,
        "Require users to log in to JupyterHub (no temporary users) and start the server for "
        "the logged-in user.",
    )
    oauth_client_id: str = _opt(
        "service-swarmbinder",
        "With auth_enabled: swarmbinder's OAuth client id at the hub (HubOAuth.oauth_client_id; "
        "JupyterHub names a service's client service-<name>).",
    )
    oauth_redirect_uri: str = _opt(
        "",
        "With auth_enabled: the OAuth callback as registered with the hub and reached by "
        "browsers, e.g. https://binder.example.org/oauth_callback (HubOAuth.oauth_redirect_uri). "
        "Empty: base_url + 'oauth_callback', a path on the hub's host, as BinderHub's default.",
    )
    oauth_client_secret: str = _opt(
        "",
        "With auth_enabled: the OAuth client secret. Empty: hub_api_token (JupyterHub uses a "
        "service's api_token as its client secret).",
        secret=True,
    )
    cookie_secret: str | None = _opt(
        None,
        "With auth_enabled: secret that signs login cookies, as a hex string of at least 16 "
        "bytes. Null: a random secret per process (logins then do not survive a restart and "
        "are not shared between replicas).",
        secret=True,
        check=values.cookie_secret,
    )
    allow_named_servers: bool = _opt(
        False,
        "With auth_enabled: start each launch as a new named server of the logged-in user "
        "(the hub must allow named servers), so one user can run several. False: launch the "
        "user's default server, refused while it runs (BinderHub's Launcher.allow_named_servers).",
    )
    named_server_limit_per_user: int = _opt(
        0,
        "With allow_named_servers: launches are refused while the user has this many named "
        "servers. 0: no limit (BinderHub's Launcher.named_server_limit_per_user).",
        minimum=0,
    )
    launch_timeout: int = _opt(
        600,
        "Seconds to wait for a launched server to become ready before the launch fails "
        "(BinderHub's Launcher.launch_timeout).",
        minimum=1,
    )
    concurrent_launch_limit: int | None = _opt(
        None,
        "User servers started at once by this replica; later launches wait in order and are "
        "told their place. A starting Jupyter server is CPU-bound, so a burst started all at "
        "once finishes later for everyone and runs into the hub's http_timeout. Null: two per "
        "CPU of the swarm's ready, active nodes (read again every few seconds). 0: no limit.",
        minimum=0,
    )
    hub_id: str = _opt(
        "",
        "The hub's id as its user-server services are labelled (the hub's SWARMBINDER_HUB_ID, "
        "by default its service name). Quotas count only that hub's servers, and services of "
        "that hub that it no longer knows are removed. Empty: count every swarmbinder user "
        "server and remove none.",
    )
    reaper_interval: int = _opt(
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
class RegistryConfig(_Section):
    """The Docker registry built images are pushed to and looked up in."""

    use_registry: bool = _opt(
        True,
        "Push built images to the registry and look images up there. False uses only images "
        "the Docker engine already has, which suits a single-node swarm.",
    )
    image_prefix: str = _opt(
        "",
        "Prefix for all built image names, naming the registry as every swarm node's Docker "
        "engine reaches it, e.g. 127.0.0.1:5000/binder-. Lower case, no spaces.",
        check=values.image_prefix,
    )
    registry_url: str = _opt(
        "http://registry:5000",
        "Registry API URL swarmbinder queries for existing images (on the stack's network, "
        "which may differ from the host in image_prefix).",
        check=values.http_url,
    )
    registry_username: str | None = _opt(
        None, "User name for the registry API, with registry_password. Null: anonymous."
    )
    registry_password: str | None = _opt(
        None,
        "Password for the registry API, with registry_username. With registry_token_key this "
        "is the operator's login at the token endpoint, which may do everything.",
        secret=True,
    )
    registry_token_key: str | None = _opt(
        None,
        "PEM EC P-256 private key that signs the registry's tokens. Set, Binder is the token "
        "issuer of a registry with `auth: token` (its endpoint: <base_url>registry/token) and "
        "every build gets its own login that can push only its own image.",
        secret=True,
    )
    registry_token_certificate: str | None = _opt(
        None,
        "PEM certificate of registry_token_key: the registry's rootcertbundle, sent in each "
        "token's x5c header.",
        secret=True,
    )
    registry_token_issuer: str = _opt(
        "swarmbinder", "The tokens' `iss`: the registry's auth.token.issuer."
    )
    registry_token_service: str = _opt(
        "swarmbinder-registry", "The tokens' `aud`: the registry's auth.token.service."
    )
    registry_token_lifetime: int = _opt(
        300, "Seconds a registry token is valid; clients ask for a new one.", minimum=10
    )
    registry_pull_username: str | None = _opt(
        None,
        "Login that may only pull images under image_prefix (the hub's, sent with every user "
        "server), with registry_pull_password. Needs registry_token_key.",
    )
    registry_pull_password: str | None = _opt(
        None, "Password of registry_pull_username.", secret=True
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.registry_username is None) != (self.registry_password is None):
            missing = "registry_password" if self.registry_password is None else "registry_username"
            raise ConfigError(missing, "registry_username and registry_password go together")
        if self.registry_username is not None and ":" in self.registry_username:
            raise ConfigError("registry_username", "cannot contain ':' (HTTP basic auth)")
        if (self.registry_token_key is None) != (self.registry_token_certificate is None):
            missing = (
                "registry_token_certificate"
                if self.registry_token_certificate is None
                else "registry_token_key"
            )
            raise ConfigError(
                missing, "registry_token_key and registry_token_certificate go together"
            )
        if (self.registry_pull_username is None) != (self.registry_pull_password is None):
            missing = (
                "registry_pull_password"
                if self.registry_pull_password is None
                else "registry_pull_username"
            )
            raise ConfigError(
                missing, "registry_pull_username and registry_pull_password go together"
            )
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
            from .registrytokens import check_signing_pair

            check_signing_pair(self.registry_token_key, self.registry_token_certificate or "")


@dataclass(frozen=True)
class BuildConfig(_Section):
    """repo2docker builds, each a one-shot Swarm service."""

    docker_host: str | None = _opt(
        None,
        "Docker engine (a swarm manager) to create build services on, e.g. "
        "unix:///var/run/docker.sock or tcp://manager:2375. Null: DOCKER_HOST, else the local "
        "socket.",
        check=values.docker_host,
    )
    build_image: str = _opt(
        "quay.io/jupyterhub/repo2docker:2024.07.0",
        "The repo2docker image to be used for doing builds.",
    )
    build_memory_limit: int = _opt(
        0,
        "Max amount of memory for each image build, in bytes or as a size like '2G'; applied "
        "to the build service and passed to repo2docker. 0 sets no limit.",
        parse=values.byte_spec,
        type_name="bytes",
    )
    build_node_selector: Mapping[str, str] = _opt(
        {},
        "Select the nodes builds run on: each key: value becomes a Swarm placement constraint "
        "'key==value', e.g. node.labels.binder-builds: 'true'.",
    )
    build_network: str = _opt(
        "host",
        "Docker network the build service joins; 'host' lets repo2docker reach the registry "
        "and the internet as the node does.",
    )
    appendix: str = _opt(
        "",
        "Appendix to pass to repo2docker: Docker directives run at the end of every build. "
        "A Python format string with {binder_url} and {repo_url} available.",
    )
    sticky_builds: bool = _opt(
        False,
        "Attempt to run builds of the same repository on the same node, to reuse its layer cache.",
    )
    build_max_age: int = _opt(
        14400, "Maximum age of builds in seconds; builds running longer are killed.", minimum=1
    )
    build_cleanup_interval: int = _opt(
        60,
        "Interval in seconds between removals of finished build services and killing of "
        "builds older than build_max_age.",
        minimum=1,
    )
    build_pending_timeout: int = _opt(
        300,
        "Seconds a build service may wait for a node to accept its task before the build "
        "fails (e.g. no node matches build_node_selector).",
        minimum=1,
    )
    concurrent_build_limit: int = _opt(32, "The number of concurrent builds to allow.", minimum=0)
    log_tail_lines: int = _opt(
        100,
        "Limit number of log lines to show when connecting to an already running build.",
        minimum=0,
    )
    persist_build_logs: bool = _opt(
        True,
        "Keep each build's log in the store after its service is removed, for the admin API.",
    )
    build_log_retention: int = _opt(
        7 * 24 * 3600,
        "Seconds a finished build's persisted log is kept in the store.",
        minimum=1,
    )
    build_keep_failed_for: int = _opt(
        600,
        "Seconds a failed build's service is kept (so `docker service logs` can read it) "
        "before housekeeping removes it.",
        minimum=0,
    )
    build_engine_grace: int = _opt(
        30,
        "Seconds a build's watcher keeps retrying a Docker engine that stopped answering "
        "before the build is reported failed.",
        minimum=1,
    )
    build_node_lost_grace: int = _opt(
        10,
        "Seconds the node running a build may be reported down by Swarm before the build is "
        "reported failed as lost (a loaded node can miss a few heartbeats and come back).",
        minimum=0,
    )


@dataclass(frozen=True)
class QuotaConfig(_Section):
    """Launch quotas and the per-IP rate limit."""

    pod_quota: int | None = _opt(
        None,
        "The number of concurrent user servers this deployment supports; launches beyond it "
        "fail. Null: no quota. 0: accept no launches (e.g. maintenance).",
        minimum=0,
    )
    per_repo_quota: int = _opt(
        0,
        "Maximum number of concurrent users running from a given repo. 0 means no quota.",
        minimum=0,
    )
    per_repo_quota_higher: int = _opt(
        0,
        "Maximum number of concurrent users running from a repo matching high_quota_specs. "
        "0 means no quota.",
        minimum=0,
    )
    high_quota_specs: tuple[str, ...] = _opt(
        (),
        "Regexes of specs that get per_repo_quota_higher. " + _SPEC_MATCHING,
        check=values.regex_list,
    )
    spec_config: tuple[values.SpecConfigItem, ...] = _opt(
        (),
        "Per-repository configuration: a list of {pattern: regex, config: {name: value}}; "
        "every item whose pattern matches a spec applies its config, later items winning. "
        "config.quota (an integer, 0 or more) replaces the per-repo quota.",
        parse=values.spec_config,
        type_name="list of {pattern, config}",
    )
    rate_limit: int = _opt(
        10,
        "Build requests allowed per client IP within rate_limit_period (BinderHub's "
        "RateLimiter.limit). 0 disables the limit.",
        minimum=0,
    )
    rate_limit_period: int = _opt(
        3600,
        "The rate limit window in seconds; counts reset at its end (BinderHub's "
        "RateLimiter.period_seconds).",
        minimum=1,
    )


@dataclass(frozen=True)
class BanConfig(_Section):
    """Who and what may not build or launch."""

    ban_networks: Mapping[str, str] = _opt(
        {},
        "Networks whose requests are rejected with 403: keys in CIDR notation "
        "(e.g. '1.2.3.4/32'), values a label used in logs and error messages.",
        check=values.cidr_keys,
    )
    allowed_outbound_networks: tuple[str, ...] = _opt(
        (),
        "Networks (CIDR) the repo providers may connect to although they are not globally "
        "routable. Empty: provider API calls, DOI redirects and `git ls-remote` refuse "
        "loopback, link-local (the cloud metadata 169.254.169.254), private (RFC 1918, "
        "fc00::/7), unspecified, multicast and reserved addresses, so a spec cannot point "
        "Binder into its own network. List a GitHub Enterprise, GitLab or git server on a "
        "private network here; docs/security.md.",
        check=values.cidr_list,
    )
    banned_specs: tuple[values.BannedSpec, ...] = _opt(
        (),
        "Specs that may not launch: regexes, or {pattern: regex, reason: text} to tell users "
        "why. A spec may launch if it matches no banned_specs and, when allowed_specs is "
        "set, matches one of those. " + _SPEC_MATCHING,
        parse=values.banned_specs,
        type_name="list of regex or {pattern, reason}",
    )
    allowed_specs: tuple[str, ...] = _opt(
        (),
        "Regexes of specs allowed to launch; empty allows every spec not banned.",
        check=values.regex_list,
    )


@dataclass(frozen=True)
class PagesConfig(_Section):
    """The HTML pages: landing page, about page, badges."""

    badge_base_url: str = _opt(
        "",
        "Base URL to use when generating launch badges; empty: the URL the request came to.",
        check=values.http_url_slash,
    )
    banner_message: str = _opt("", "Message (raw HTML) to display in a banner on all pages.")
    about_message: str = _opt("", "Additional message (raw HTML) to display on the about page.")
    template_path: str = _opt(
        "",
        "Path to search for custom jinja templates, before using the default templates.",
    )
    template_variables: Mapping[str, Any] = _opt(
        {}, "Extra variables to supply to jinja templates when rendering."
    )
    extra_footer_scripts: Mapping[str, str] = _opt(
        {},
        "Extra bits of JavaScript loaded in the footer of each page, without the <script> tag. "
        "Only the values are used; keys sort them.",
    )
    extra_static_path: str = _opt("", "Path to search for extra static files.")
    extra_static_url_prefix: str = _opt(
        "/extra_static/", "URL prefix to serve extra static files under.", check=values.base_url
    )
    google_analytics_code: str | None = _opt(
        None,
        "The Google Analytics code to use on the main page (removed from BinderHub in favour "
        "of extra_footer_scripts; kept so old configs load).",
    )
    google_analytics_domain: str = _opt(
        "auto", "The Google Analytics domain to use on the main page."
    )


@dataclass(frozen=True)
class TokenConfig(_Section):
    """Build tokens: lightweight proof that a /build request comes from our own page."""

    build_token_secret: str | None = _opt(
        None,
        "Secret used to sign build tokens, as a hex string. Null: a random secret per process "
        "(tokens then do not survive a restart).",
        secret=True,
        check=values.hex_secret,
    )
    build_token_expires_seconds: int = _opt(300, "Expiry (in seconds) of build tokens.", minimum=1)
    build_token_check_origin: bool = _opt(True, "Whether to validate build token origin.")


@dataclass(frozen=True)
class AdminConfig(_Section):
    """The admin API (used by the TUI)."""

    admin_token: str | None = _opt(
        None,
        "Bearer token for the admin API. Null: the admin API is disabled.",
        secret=True,
    )


@dataclass(frozen=True)
class GitHubConfig(_Section):
    """The GitHub repo provider (YAML section ``github:``)."""

    _prefix: ClassVar[str] = "github."

    hostname: str = _opt("github.com", "The GitHub hostname; change it for GitHub Enterprise.")
    api_base_url: str = _opt(
        "https://api.{hostname}",
        "The base URL of the GitHub API; {hostname} is replaced by hostname, e.g. "
        "'https://{hostname}/api/v3' for GitHub Enterprise.",
        check=values.http_url,
    )
    access_token: str = _opt(
        "", "GitHub access token for the GitHub API (raises its rate limit).", secret=True
    )
    client_id: str = _opt("", "GitHub OAuth client id, for use with client_secret.")
    client_secret: str = _opt(
        "", "GitHub OAuth client secret, for use with client_id.", secret=True
    )

    def __post_init__(self) -> None:
        if isinstance(self.api_base_url, str) and isinstance(self.hostname, str):
            expanded = self.api_base_url.replace("{hostname}", self.hostname)
            object.__setattr__(self, "api_base_url", expanded)
        super().__post_init__()


@dataclass(frozen=True)
class GitLabConfig(_Section):
    """The GitLab repo provider (YAML section ``gitlab:``)."""

    _prefix: ClassVar[str] = "gitlab."

    hostname: str = _opt("gitlab.com", "The host of the GitLab instance.")
    access_token: str = _opt("", "GitLab OAuth2 access token for the GitLab API.", secret=True)
    private_token: str = _opt("", "GitLab private token for the GitLab API.", secret=True)


@dataclass(frozen=True)
class GitConfig(_Section):
    """The plain git repo provider, ``git/<url>/<ref>`` (YAML section ``git:``)."""

    _prefix: ClassVar[str] = "git."

    ref_cache_ttl: int = _opt(
        5,
        "Seconds a branch or tag resolved with `git ls-remote` is reused for the same "
        "repository and ref; a burst of clicks on one link then runs one `git ls-remote`, and "
        "a push is seen at most this late. Concurrent lookups of one ref always share one "
        "`git ls-remote`. 0: reuse nothing but concurrent lookups.",
        minimum=0,
    )


_DOI_RESOLVER_HELP = (
    "Where {name} DOIs are resolved (the DOI is appended as a path). BinderHub always asks "
    "https://doi.org; repo2docker, which fetches the files, always does too."
)


@dataclass(frozen=True)
class ZenodoConfig(_Section):
    """The Zenodo repo provider (YAML section ``zenodo:``)."""

    _prefix: ClassVar[str] = "zenodo."

    doi_resolver_url: str = _opt(
        "https://doi.org", _DOI_RESOLVER_HELP.format(name="Zenodo"), check=values.http_url
    )


@dataclass(frozen=True)
class FigshareConfig(_Section):
    """The Figshare repo provider (YAML section ``figshare:``)."""

    _prefix: ClassVar[str] = "figshare."

    doi_resolver_url: str = _opt(
        "https://doi.org", _DOI_RESOLVER_HELP.format(name="Figshare"), check=values.http_url
    )
    api_base_url: str = _opt(
        "https://api.figshare.com/v2",
        "The Figshare API, asked for the latest version of an article given without one.",
        check=values.http_url,
    )


@dataclass(frozen=True)
class HydroshareConfig(_Section):
    """The HydroShare repo provider (YAML section ``hydroshare:``)."""

    _prefix: ClassVar[str] = "hydroshare."

    base_url: str = _opt(
        "https://www.hydroshare.org",
        "The HydroShare site: its API dates resources, and its {base_url}/resource/{id} is "
        "the repo URL handed to repo2docker (which knows www.hydroshare.org only).",
        check=values.http_url,
    )


@dataclass(frozen=True)
class DataverseConfig(_Section):
    """The Dataverse repo provider (YAML section ``dataverse:``)."""

    _prefix: ClassVar[str] = "dataverse."

    doi_resolver_url: str = _opt(
        "https://doi.org",
        _DOI_RESOLVER_HELP.format(name="Dataverse")
        + " The DOI's landing page names the Dataverse installation whose API is asked.",
        check=values.http_url,
    )


@dataclass(frozen=True)
class ProvidersConfig:
    """Repository providers' settings, one nested YAML section each."""

    github: GitHubConfig = field(default_factory=GitHubConfig)
    gitlab: GitLabConfig = field(default_factory=GitLabConfig)
    git: GitConfig = field(default_factory=GitConfig)
    zenodo: ZenodoConfig = field(default_factory=ZenodoConfig)
    figshare: FigshareConfig = field(default_factory=FigshareConfig)
    hydroshare: HydroshareConfig = field(default_factory=HydroshareConfig)
    dataverse: DataverseConfig = field(default_factory=DataverseConfig)


# Flat sections in the order docs/config.md lists them: (attribute of Config, class).
_FLAT_SECTIONS: tuple[tuple[str, type[_Section]], ...] = (
    ("server", ServerConfig),
    ("hub", HubConfig),
    ("registry", RegistryConfig),
    ("builds", BuildConfig),
    ("quotas", QuotaConfig),
    ("bans", BanConfig),
    ("pages", PagesConfig),
    ("tokens", TokenConfig),
    ("admin", AdminConfig),
)
# Nested YAML sections: (YAML key and attribute of ProvidersConfig, class).
_NESTED_SECTIONS: tuple[tuple[str, type[_Section]], ...] = (
    ("github", GitHubConfig),
    ("gitlab", GitLabConfig),
    ("git", GitConfig),
    ("zenodo", ZenodoConfig),
    ("figshare", FigshareConfig),
    ("hydroshare", HydroshareConfig),
    ("dataverse", DataverseConfig),
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
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)

    def section(self, option: OptionInfo) -> _Section:
        """The section object holding ``option``."""
        if option.nested:
            section: _Section = getattr(self.providers, option.section)
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
            value = _plain(self.value(option.name))
            if mask_secrets and option.secret and value:
                value = MASK
            if option.nested:
                out.setdefault(option.section, {})[option.attr] = value
            else:
                out[option.name] = value
        return out


def _plain(value: Any) -> Any:
    """Tuples and read-only mappings as plain lists and dicts."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# --- the option table ----------------------------------------------------------------------


@dataclass(frozen=True)
class OptionInfo:
    """One option as documented: what docs/config.md and error suggestions are made from."""

    name: str
    """The option's name: its YAML key, dotted for nested sections (``github.hostname``)."""
    section: str
    """Attribute of Config (``builds``) or of Config.providers (``github``) holding it."""
    attr: str
    """The field name within the section."""
    type_name: str
    default: Any
    help: str
    secret: bool
    hint: Any
    nested: bool

    @property
    def env(self) -> str:
        """The environment variable that sets this option."""
        return ENV_PREFIX + self.name.replace(".", "_").upper()


def _build_options() -> dict[str, OptionInfo]:
    options: dict[str, OptionInfo] = {}
    for nested, sections in ((False, _FLAT_SECTIONS), (True, _NESTED_SECTIONS)):
        for section_name, cls in sections:
            hints = values.field_types(cls)
            for f in fields(cls):
                if f.default is not MISSING:
                    default = f.default
                elif f.default_factory is not MISSING:
                    default = f.default_factory()
                else:  # pragma: no cover - every option has a default
                    raise TypeError(f"option {f.name} has no default")
                name = f"{section_name}.{f.name}" if nested else f.name
                if name in options:  # pragma: no cover - caught the moment it is written
                    raise TypeError(f"option {name} is defined twice")
                options[name] = OptionInfo(
                    name=name,
                    section=section_name,
                    attr=f.name,
                    type_name=f.metadata["type_name"] or values.type_name(hints[f.name]),
                    default=default,
                    help=f.metadata["help"],
                    secret=f.metadata["secret"],
                    hint=hints[f.name],
                    nested=nested,
                )
    return options


OPTIONS: Mapping[str, OptionInfo] = types.MappingProxyType(_build_options())
_BY_ENV: Mapping[str, OptionInfo] = {option.env: option for option in OPTIONS.values()}
_NESTED = dict(_NESTED_SECTIONS)


def iter_options() -> Iterator[OptionInfo]:
    """Every option, in documentation order."""
    return iter(OPTIONS.values())


# --- loading -------------------------------------------------------------------------------


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load, merge and validate every source (see the module docstring for precedence).

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment. ``overrides``
    maps option names (``port``, ``github.hostname``) to values, as parsed command-line flags.
    Raises ConfigError for the first problem found.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    if path is not None:
        raw.update(_file_layer(Path(path)))
    raw.update(_env_layer(env))
    if overrides:
        raw.update(_mapping_layer(overrides, dotted=True))
    return _build(raw)


def _build(raw: Mapping[str, Any]) -> Config:
    def section(name: str, cls: type[_Section]) -> Any:
        kwargs = {
            o.attr: raw[o.name] for o in OPTIONS.values() if o.section == name and o.name in raw
        }
        return cls(**kwargs)

    flat = {name: section(name, cls) for name, cls in _FLAT_SECTIONS}
    nested = {name: section(name, cls) for name, cls in _NESTED_SECTIONS}
    return Config(**flat, providers=ProvidersConfig(**nested))


def _suggest(name: str, candidates: Iterator[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _secret_names() -> list[str]:
    return [option.name for option in OPTIONS.values() if option.secret]


def _read_secret(option: str, path: Any) -> str:
    if not isinstance(path, str):
        raise ConfigError(option, f"expected a file path, got {values.describe(path)}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(option, f"secret file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(option, f"cannot read secret file {path!r}: {e}") from None
    return text.rstrip("\r\n")


def _file_layer(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config_file", f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("config_file", f"cannot read {str(path)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            "config_file", f"{str(path)!r} is not valid YAML: {_yaml_problem(e)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "config_file",
            f"{str(path)!r} must hold a mapping of option names to values, "
            f"not {values.describe(data)}",
        )
    return _mapping_layer(data, dotted=False)


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def _mapping_layer(data: Mapping[Any, Any], *, dotted: bool) -> dict[str, Any]:
    """Option values from a YAML mapping or overrides, with ``<secret>_file`` read."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and key in _NESTED and not dotted:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    key, f"expected a mapping of {key} settings, got {values.describe(value)}"
                )
            for subkey, subvalue in value.items():
                _put(out, f"{key}.{subkey}", subvalue, data=value, prefix=f"{key}.")
        elif isinstance(key, str) and ("." not in key or dotted):
            _put(out, key, value, data=data, prefix="")
        else:
            raise ConfigError(str(key), f"unknown option{_suggest(str(key), list(OPTIONS))}")
    return out


def _put(
    out: dict[str, Any], name: str, value: Any, *, data: Mapping[Any, Any], prefix: str
) -> None:
    if name in OPTIONS:
        out[name] = value
        return
    base = name.removesuffix("_file")
    if base != name and base in OPTIONS and OPTIONS[base].secret:
        if base.removeprefix(prefix) in data:
            raise ConfigError(base, f"set either {base} or {name}, not both")
        out[base] = _read_secret(name, value)
        return
    scope = [o for o in OPTIONS if o.startswith(prefix)] if prefix else list(OPTIONS)
    scope += [f"{o}_file" for o in _secret_names() if o.startswith(prefix)]
    raise ConfigError(name, f"unknown option{_suggest(name, scope)}")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        if var in _BY_ENV:
            option = _BY_ENV[var]
            if f"{var}_FILE" in env and option.secret:
                raise ConfigError(option.name, f"set either {var} or {var}_FILE, not both")
            out[option.name] = _parse_env(option, var, text)
        elif var.endswith("_FILE") and var.removesuffix("_FILE") in _BY_ENV:
            option = _BY_ENV[var.removesuffix("_FILE")]
            if not option.secret:
                raise ConfigError(option.name, f"{var}: only secrets can be read from a file")
            out[option.name] = _read_secret(f"{option.name}_file", text)
        else:
            # The prefix is shared with other tools (test helpers, image build scripts), so
            # only a near miss of a real option is treated as a typo.
            suffix = var.removeprefix(ENV_PREFIX)
            names = [v.removeprefix(ENV_PREFIX) for v in _BY_ENV]
            close = difflib.get_close_matches(suffix, names, n=1, cutoff=0.8)
            if close:
                raise ConfigError(
                    suffix.lower(),
                    f"unknown option from environment variable {var} "
                    f"(did you mean {ENV_PREFIX + close[0]!r}?)",
                )
    return out


def _parse_env(option: OptionInfo, var: str, text: str) -> Any:
    hint = option.hint
    if get_origin(hint) in (Union, types.UnionType):
        if text.strip() in ("", "null", "none", "None"):
            return None
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if hint is str:
        return text
    if hint is bool:
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ConfigError(option.name, f"{var}={text!r} is not a boolean (true or false)")
    if hint is int and option.type_name != "bytes":
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(option.name, f"{var}={text!r} is not an integer") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            option.name, f"{var} is not valid YAML or JSON: {_yaml_problem(e)}"
        ) from None


# --- documentation -------------------------------------------------------------------------


def render_markdown() -> str:
    """The option reference in docs/config.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m swarmbinder.config > docs/config.md`; do not edit. -->",
        "",
        *_module_intro(),
        "",
        "| option | type | default |",
        "| --- | --- | --- |",
        *(
            f"| [`{o.name}`](#{o.name.replace('.', '')}) | {o.type_name} | `{_default_text(o)}` |"
            for o in OPTIONS.values()
        ),
        "",
    ]
    section_docs = {name: cls.__doc__ for name, cls in _FLAT_SECTIONS + _NESTED_SECTIONS}
    current = None
    for option in OPTIONS.values():
        if option.section != current:
            current = option.section
            lines += [f"## {current}", "", str(section_docs[current]), ""]
        facts = [f"type: {option.type_name}", f"default: `{_default_text(option)}`"]
        facts.append(f"env: `{option.env}`")
        if option.secret:
            facts.append(f"secret: also `{option.name}_file` / `{option.env}_FILE`")
        lines += [f"### `{option.name}`", "", "; ".join(facts), "", option.help, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _default_text(option: OptionInfo) -> str:
    return json.dumps(_plain(option.default))


def _module_intro() -> list[str]:
    doc = str(__doc__)
    intro = doc.split("Every value is checked")[0]
    return intro.replace(":func:`load_config`", "`load_config`").strip().splitlines()


if __name__ == "__main__":
    print(render_markdown(), end="")
