"""BinderHub's configurable classes and traits, and where each lands among our options.

:data:`SECTIONS` is the table :mod:`.binderhub` reads config files with and docs/config.md
prints: each BinderHub trait is a :class:`Trait` naming our option (most keep BinderHub's name),
with a conversion where the forms differ, or saying why it does not apply here.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

# --- repo_providers ----------------------------------------------------------------------------

#: BinderHub's provider classes and the prefix each is offered under, in BinderHub's order.
PROVIDER_CLASSES: Mapping[str, str] = {
    "GitHubRepoProvider": "gh",
    "GistRepoProvider": "gist",
    "GitRepoProvider": "git",
    "GitLabRepoProvider": "gl",
    "ZenodoProvider": "zenodo",
    "FigshareProvider": "figshare",
    "HydroshareProvider": "hydroshare",
    "DataverseProvider": "dataverse",
    "CKANProvider": "ckan",
}
#: BinderHub's default ``repo_providers``: every provider.
DEFAULT_REPO_PROVIDERS: Mapping[str, str] = {p: cls for cls, p in PROVIDER_CLASSES.items()}
_CLASS_MODULES = ("binderhub.repoproviders.", "binderhub.")


def repo_providers(value: Mapping[str, str]) -> Mapping[str, str]:
    """Check ``repo_providers``: prefix -> BinderHub class name, with or without its module."""
    if not value:
        raise ValueError("must offer at least one provider")
    checked: dict[str, str] = {}
    for prefix, name in value.items():
        short = name
        for module in _CLASS_MODULES:
            if name.startswith(module):
                short = name.removeprefix(module)
                break
        if short not in PROVIDER_CLASSES:
            close = difflib.get_close_matches(short, list(PROVIDER_CLASSES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{prefix}: {name!r} is not one of BinderHub's provider classes{hint}; "
                f"swarmbinder offers {', '.join(PROVIDER_CLASSES)}"
            )
        if PROVIDER_CLASSES[short] != prefix:
            raise ValueError(
                f"{prefix}: {short} is offered under its own prefix "
                f"{PROVIDER_CLASSES[short]!r} only"
            )
        checked[prefix] = short
    return checked


# --- patterns of one provider --------------------------------------------------------------------

_LEADING_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def scoped_pattern(prefix: str, pattern: str) -> str:
    """``pattern`` (BinderHub's, matched against one provider's specs) as a pattern of ours that
    matches only ``{prefix}/...``, the spec with its prefix.

    BinderHub matches ``^org/.*`` with ``re.match`` against the spec after the prefix; here the
    same text must follow ``gh/``. A ``^`` or ``\\A`` anchor inside the pattern (in an
    alternation, say) becomes "right after ``gh/``".
    """
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regex: {e}") from None
    flags = _LEADING_FLAGS.match(pattern)
    body = pattern[flags.end() :] if flags else pattern
    anchor = f"(?<=^{re.escape(prefix)}/)"
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            pair = body[i : i + 2]
            out.append(anchor if pair == "\\A" else pair)
            i += 2
        elif char == "[":
            # a character class is copied whole: its ^ negates, it does not anchor
            j = i + 1
            j += body[j : j + 1] == "^"
            j += body[j : j + 1] == "]"
            while j < len(body) and body[j] != "]":
                j += 2 if body[j] == "\\" else 1
            out.append(body[i : j + 1])
            i = j + 1
        else:
            out.append(anchor if char == "^" else char)
            i += 1
    return f"{flags.group(0) if flags else ''}{re.escape(prefix)}/(?:{''.join(out)})"


def _scope_items(prefix: str, own_provider: bool = False) -> Callable[[Any, str], Any]:
    """A converter tying every pattern of a list (strings or {pattern, ...}) to ``prefix``;
    ``own_provider`` also names the provider in each item (``allowed_specs``: a provider's
    allow-list holds that provider's launches only, as in BinderHub)."""

    def convert(value: Any, where: str) -> Any:
        if not isinstance(value, list | tuple):
            return value  # the option's own check names what it expected
        items: list[Any] = []
        for index, item in enumerate(value):
            try:
                if isinstance(item, str) and own_provider:
                    items.append({"pattern": scoped_pattern(prefix, item), "provider": prefix})
                elif isinstance(item, str):
                    items.append(scoped_pattern(prefix, item))
                elif isinstance(item, Mapping) and isinstance(item.get("pattern"), str):
                    items.append({**item, "pattern": scoped_pattern(prefix, item["pattern"])})
                else:
                    items.append(item)
            except ValueError as e:
                raise ConfigError(where, f"item {index}: {e}") from None
        return items

    return convert


# --- conversions -------------------------------------------------------------------------------


def _log_level(value: Any, where: str) -> Any:
    """BinderHub takes a level by name or number (``log_level: 10``); ours by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        name = logging.getLevelName(value)
        if not isinstance(name, str) or name.startswith("Level "):
            raise ConfigError(where, f"{value} is not a logging level")
        return name
    return value


def _node_selector(value: Any, where: str) -> Any:
    """A Kubernetes node selector ({label: value}) as Swarm placement: node.labels.<label>."""
    if not isinstance(value, Mapping):
        return value
    return {
        key if str(key).startswith(("node.", "engine.")) else f"node.labels.{key}": item
        for key, item in value.items()
    }


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trait:
    """Where one BinderHub trait lands: ``option`` (ours), or nowhere and ``why``."""

    option: str = ""
    why: str = ""
    convert: Callable[[Any, str], Any] | None = None
    #: a list several BinderHub traits add to (a provider's banned_specs and RepoProvider's)
    merge: bool = False


def _to(option: str, note: str = "", **kwargs: Any) -> Trait:
    return Trait(option, note, **kwargs)


def _na(why: str) -> Trait:
    return Trait("", why)


_K8S = "Kubernetes only"
_CLASS = "a BinderHub Python class; swarmbinder's part is fixed"
_SPEC_NOTE = "one list for every provider: each pattern is tied to {prefix}/ launches"
_ALLOW_NOTE = ", and holds no other provider's"
#: Logins belong to one host here: GitHub's, GitLab's and each of git.git_credentials' own.
_NO_HOST_LOGIN = (
    "a login handed to every host; github.git_credentials, gitlab.git_credentials and "
    "git.git_credentials each give one to its own host"
)


def _provider_traits(prefix: str | None) -> dict[str, Trait]:
    """RepoProvider's traits, for every provider: ``prefix`` None for RepoProvider itself."""
    traits: dict[str, Trait] = {}
    for name in ("allowed_specs", "banned_specs", "high_quota_specs", "spec_config"):
        if prefix is None:
            traits[name] = _to(name, "applies to every provider", merge=True)
        else:
            traits[name] = _to(
                name,
                _SPEC_NOTE.format(prefix=prefix) + (_ALLOW_NOTE if name == "allowed_specs" else ""),
                convert=_scope_items(prefix, own_provider=name == "allowed_specs"),
                merge=True,
            )
    # GitHub's, GitLab's and git's own sections map theirs; the data providers clone nothing
    traits["git_credentials"] = _na(
        _NO_HOST_LOGIN if prefix is None else "this provider's records are not cloned with git"
    )
    return traits


_BUILD_EXECUTOR: dict[str, Trait] = {
    "appendix": _to("appendix"),
    "memory_limit": _to("build_memory_limit"),
    "git_credentials": _na("set per build from the provider's git_credentials"),
    "push_secret": _na(
        f"{_K8S}: a Secret with push credentials; registry_token_key gives each "
        "build its own push login"
    ),
    "registry_credentials": _na("registry_username/registry_password, or registry_token_key"),
    "builder_info": _na("BinderHub's build metadata for its events"),
    "repo2docker_extra_args": _na("the build command is fixed (build_memory_limit, appendix)"),
}

_KUBERNETES_BUILD_EXECUTOR: dict[str, Trait] = {
    **_BUILD_EXECUTOR,
    "namespace": _na(f"{_K8S}: builds are Swarm services"),
    "build_image": _to("build_image"),
    "image_pull_secrets": _na(f"{_K8S}: the engine's own logins pull build_image"),
    "docker_host": _na("builds mount the node's Docker socket; docker_host names the manager"),
    "resources": _na(f"{_K8S}: pod resources; build_memory_limit limits the build service"),
    "memory_request": _na(f"{_K8S}: a pod scheduling request"),
    "node_selector": _to(
        "build_node_selector",
        "labels become node.labels.<label> constraints",
        convert=_node_selector,
    ),
    "extra_envs": _na("a build's environment is fixed; secrets never reach it this way"),
    "log_tail_lines": _to("log_tail_lines"),
    "sticky_builds": _to("sticky_builds"),
}

_APPLICATION: dict[str, Trait] = {
    "log_level": _to("log_level", "a number (10) is taken as its name (DEBUG)", convert=_log_level),
    "log_format": _to("log_format"),
    "log_datefmt": _to("log_datefmt"),
    "logging_config": _na("traitlets' logging dict; log_format and log_datefmt shape the lines"),
    "show_config": _na("the show-config command"),
    "show_config_json": _na("show-config --json"),
}

_BINDERHUB: dict[str, Trait] = {
    **_APPLICATION,
    "about_message": _to("about_message"),
    "appendix": _to("appendix"),
    "auth_enabled": _to("auth_enabled"),
    "badge_base_url": _to("badge_base_url", "a URL; BinderHub's callable form needs Python"),
    "ban_networks": _to("ban_networks"),
    "banner_message": _to("banner_message"),
    "base_url": _to("base_url"),
    "block_build_user_agents": _to("block_build_user_agents"),
    "build_class": _na(_CLASS),
    "build_cleaner_class": _na(_CLASS),
    "build_cleanup_interval": _to("build_cleanup_interval"),
    "build_docker_config": _na("the Helm chart's docker config.json of the build pod"),
    "build_docker_host": _na(
        "builds mount the node's Docker socket; docker_host names the manager"
    ),
    "build_image": _to("build_image"),
    "build_max_age": _to("build_max_age"),
    "build_memory_limit": _to("build_memory_limit"),
    "build_memory_request": _na(f"{_K8S}: a pod scheduling request"),
    "build_namespace": _na(f"{_K8S}: builds are Swarm services"),
    "build_node_selector": _to(
        "build_node_selector",
        "labels become node.labels.<label> constraints",
        convert=_node_selector,
    ),
    "build_token_check_origin": _to("build_token_check_origin"),
    "build_token_expires_seconds": _to("build_token_expires_seconds"),
    "build_token_secret": _to("build_token_secret", "as a hex string"),
    "builder_required": _na("BinderHub's front-end development mode"),
    "concurrent_build_limit": _to("concurrent_build_limit"),
    "config_file": _na("the --config flag or SWARMBINDER_CONFIG"),
    "cors_allow_origin": _to("cors_allow_origin"),
    "debug": _to("debug"),
    "default_opengraph_title": _to("default_opengraph_title"),
    "enable_api_only_mode": _to("enable_api_only_mode"),
    "executor_threads": _na("no thread pool: Docker and the registry are asked asynchronously"),
    "extra_footer_scripts": _to("extra_footer_scripts"),
    "extra_header_html": _to("extra_header_html"),
    "extra_static_path": _to("extra_static_path"),
    "extra_static_url_prefix": _to("extra_static_url_prefix"),
    "google_analytics_code": _to("google_analytics_code"),
    "google_analytics_domain": _to("google_analytics_domain"),
    "health_handler_class": _na(_CLASS),
    "hub_api_token": _to("hub_api_token"),
    "hub_url": _to("hub_url"),
    "hub_url_local": _to("hub_url_local"),
    "image_prefix": _to("image_prefix"),
    "launch_quota_class": _na(_CLASS),
    "log_tail_lines": _to("log_tail_lines"),
    "normalized_origin": _na("launch events name the host the request came to"),
    "per_repo_quota": _to("per_repo_quota"),
    "per_repo_quota_higher": _to("per_repo_quota_higher"),
    "pod_quota": _to("pod_quota"),
    "port": _to("port"),
    "push_secret": _na(
        f"{_K8S}: a Secret with push credentials; registry_token_key gives each "
        "build its own push login"
    ),
    "registry_class": _na(_CLASS),
    "repo_providers": _to("repo_providers", "class names as strings, each under its own prefix"),
    "sticky_builds": _to("sticky_builds"),
    "template_path": _to("template_path"),
    "template_variables": _to("template_variables"),
    "tornado_settings": _na("no Tornado: aiohttp serves the pages"),
    "use_registry": _to("use_registry"),
}

_DOCKER_REGISTRY: dict[str, Trait] = {
    "url": _to("registry_url"),
    "auth_config_url": _na("the key of a docker config.json; registry_username is given directly"),
    "docker_config_path": _na("registry_username and registry_password (or their _file forms)"),
    "token_url": _na("found in the registry's WWW-Authenticate challenge"),
    "username": _to("registry_username"),
    "password": _to("registry_password"),
    "not_found_401": _na("a 401 for a missing image is always read as 'not there'"),
}

_LAUNCHER: dict[str, Trait] = {
    "allow_named_servers": _to("allow_named_servers"),
    "named_server_limit_per_user": _to("named_server_limit_per_user"),
    "launch_timeout": _to("launch_timeout"),
    "retries": _na("the hub client retries with its own backoff"),
    "retry_delay": _na("the hub client retries with its own backoff"),
    "pre_launch_hook": _na("a Python callable"),
}
_LAUNCH_QUOTA: dict[str, Trait] = {"total_quota": _to("pod_quota")}


@dataclass(frozen=True)
class SectionInfo:
    """One configurable class of BinderHub: its traits, its parents' included."""

    traits: Mapping[str, Trait]
    #: what the section is, for the docs table
    about: str
    parents: tuple[str, ...] = ()
    own: Mapping[str, Trait] = field(default_factory=dict)


def _section(about: str, own: Mapping[str, Trait], *parents: str) -> SectionInfo:
    inherited: dict[str, Trait] = {}
    for parent in parents:
        inherited.update(SECTIONS[parent].traits)
    return SectionInfo({**inherited, **own}, about, parents, own)


def _provider(name: str, own: Mapping[str, Trait] | None = None) -> SectionInfo:
    return _section(
        f"the {PROVIDER_CLASSES[name]} provider",
        {**_provider_traits(PROVIDER_CLASSES[name]), **(own or {})},
    )


#: BinderHub's configurable classes a config file may name, in docs order.
SECTIONS: dict[str, SectionInfo] = {}
SECTIONS["BinderHub"] = _section("the application", _BINDERHUB)
SECTIONS["BuildExecutor"] = _section("builds", _BUILD_EXECUTOR)
SECTIONS["KubernetesBuildExecutor"] = _section(
    "builds on Kubernetes", _KUBERNETES_BUILD_EXECUTOR, "BuildExecutor"
)
SECTIONS["LocalRepo2dockerBuild"] = _section("builds by a local repo2docker", {}, "BuildExecutor")
SECTIONS["KubernetesCleaner"] = _section("removal of old builds", {"max_age": _to("build_max_age")})
SECTIONS["Launcher"] = _section("launches at the hub", _LAUNCHER)
SECTIONS["LaunchQuota"] = _section("the launch quota", _LAUNCH_QUOTA)
SECTIONS["KubernetesLaunchQuota"] = _section(
    "the launch quota on Kubernetes",
    {"namespace": _na(f"{_K8S}: user servers are counted by their Swarm labels")},
    "LaunchQuota",
)
SECTIONS["RateLimiter"] = _section(
    "the per-IP rate limit",
    {
        "limit": _to("rate_limit"),
        "period_seconds": _to("rate_limit_period"),
        "clean_seconds": _na("counters end with their period, in the store"),
    },
)
SECTIONS["DockerRegistry"] = _section("the registry images are looked up in", _DOCKER_REGISTRY)
SECTIONS["ExternalRegistryHelper"] = _section(
    "a registry helper service",
    {
        "service_url": _na("BinderHub's registry helper for cloud registries"),
        "auth_token": _na("BinderHub's registry helper for cloud registries"),
    },
    "DockerRegistry",
)
SECTIONS["EventLog"] = _section(
    "the launch event log", {"handlers_maker": _na("a Python callable")}
)
SECTIONS["RepoProvider"] = _section("every provider", _provider_traits(None))
SECTIONS["GitHubRepoProvider"] = _provider(
    "GitHubRepoProvider",
    {
        "hostname": _to("github.hostname"),
        "api_base_path": _to("github.api_base_url"),
        "access_token": _to("github.access_token"),
        "client_id": _to("github.client_id"),
        "client_secret": _to("github.client_secret"),
        "git_credentials": _to(
            "github.git_credentials", "for github.hostname only; unset, made from access_token"
        ),
    },
)
SECTIONS["GistRepoProvider"] = _provider(
    "GistRepoProvider",
    {
        **{
            name: _na("the gist provider uses the github: settings")
            for name in ("hostname", "api_base_path", "access_token", "client_id", "client_secret")
        },
        "allow_secret_gist": _na("secret gists are always refused"),
        "git_credentials": _na("public gists need no login, and secret gists are refused"),
    },
)
SECTIONS["GitLabRepoProvider"] = _provider(
    "GitLabRepoProvider",
    {
        "hostname": _to("gitlab.hostname"),
        "access_token": _to("gitlab.access_token"),
        "private_token": _to("gitlab.private_token"),
        "git_credentials": _to(
            "gitlab.git_credentials", "for gitlab.hostname only; unset, made from the token"
        ),
    },
)
SECTIONS["GitRepoProvider"] = _provider(
    "GitRepoProvider",
    {
        "allowed_protocols": _to("git.allowed_protocols"),
        "git_credentials": _to(
            "git.git_credentials", "each login names its host=; protocol= is https unless set"
        ),
    },
)
for _name in (
    "ZenodoProvider",
    "FigshareProvider",
    "HydroshareProvider",
    "DataverseProvider",
    "CKANProvider",
):
    SECTIONS[_name] = _provider(_name)

#: Values of BinderHub's Helm chart outside ``config:`` that are ours too: the registry login
#: the chart writes into the builds' docker config.json, and the hub's token for BinderHub.
CHART_OPTIONS: Mapping[str, str] = {
    "registry.username": "registry_username",
    "registry.password": "registry_password",
    "jupyterhub.hub.services.binder.apiToken": "hub_api_token",
}
#: Top-level values of BinderHub's Helm chart (beside ``config:``): Kubernetes objects.
HELM_CHART_VALUES = frozenset(
    "pdb replicas resources rbac nodeSelector tolerations image registry service extraConfig "
    "extraFiles extraPodSpec jupyterhub deployment imageBuilderType dind pink imageCleaner "
    "httpRoute ingress initContainers lifecycle extraVolumes extraVolumeMounts extraEnv "
    "podAnnotations cors global".split()
)
