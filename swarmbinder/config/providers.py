"""The repository providers' sections, one nested YAML section each (``github:`` ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import values
from .base import Section, opt, sections_of, url_opt


def _host_login(empty: str, *, see: str = "") -> Any:
    """The ``git_credentials`` option of a git host with an API: one login for the host."""
    return opt(
        "",
        "The login builds of private repositories on hostname clone with, in BinderHub's form "
        f"'username=...\\npassword=...'. Empty: {empty}. Only builds of repositories that "
        f"cannot be read without it get it{see}.",
        secret=True,
    )


@dataclass(frozen=True)
class GitHubConfig(Section):
    """The GitHub repo provider (YAML section ``github:``)."""

    _prefix: ClassVar[str] = "github."

    hostname: str = opt("github.com", "The GitHub hostname; change it for GitHub Enterprise.")
    api_base_url: str = url_opt(
        "https://api.{hostname}",
        "The base URL of the GitHub API; {hostname} is replaced by hostname, e.g. "
        "'https://{hostname}/api/v3' for GitHub Enterprise.",
    )
    access_token: str = opt(
        "", "GitHub access token for the GitHub API (raises its rate limit).", secret=True
    )
    client_id: str = opt("", "GitHub OAuth client id, for use with client_secret.")
    client_secret: str = opt("", "GitHub OAuth client secret, for use with client_id.", secret=True)
    git_credentials: str = _host_login(
        "made from access_token as BinderHub does (with client_id, username=client_id and "
        "password=access_token; without, username=access_token and password=x-oauth-basic)",
        see=" (docs/security.md)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.api_base_url, str) and isinstance(self.hostname, str):
            expanded = self.api_base_url.replace("{hostname}", self.hostname)
            object.__setattr__(self, "api_base_url", expanded)
        super().__post_init__()


@dataclass(frozen=True)
class GitLabConfig(Section):
    """The GitLab repo provider (YAML section ``gitlab:``)."""

    _prefix: ClassVar[str] = "gitlab."

    hostname: str = opt("gitlab.com", "The host of the GitLab instance.")
    access_token: str = opt("", "GitLab OAuth2 access token for the GitLab API.", secret=True)
    private_token: str = opt("", "GitLab private token for the GitLab API.", secret=True)
    git_credentials: str = _host_login(
        "username=binderhub and password=private_token (or access_token), as BinderHub makes it"
    )


_GIT_PROTOCOLS = ("http", "https", "git", "ssh")


def _git_protocols(value: tuple[str, ...]) -> tuple[str, ...]:
    """Operators may narrow the protocols git may use, never widen them."""
    unsupported = sorted(set(value) - set(_GIT_PROTOCOLS))
    if unsupported or not value:
        raise ValueError(f"{unsupported} not supported; choose some of {list(_GIT_PROTOCOLS)}")
    return value


@dataclass(frozen=True)
class GitConfig(Section):
    """The plain git repo provider, ``git/<url>/<ref>`` (YAML section ``git:``)."""

    _prefix: ClassVar[str] = "git."

    ref_cache_ttl: int = opt(
        5,
        "Seconds a branch or tag resolved with `git ls-remote` is reused for the same "
        "repository and ref; a burst of clicks on one link then runs one `git ls-remote`, and "
        "a push is seen at most this late. Concurrent lookups of one ref always share one "
        "`git ls-remote`. 0: reuse nothing but concurrent lookups.",
        minimum=0,
    )
    git_credentials: str = opt(
        "",
        "Logins for private repositories, one per host: git credential descriptions "
        "(lines protocol=https, host=git.example.org[:port], username=..., password=...) "
        "separated by blank lines. Each is given only to its own host and protocol (never to "
        "a submodule's or a redirect's host), when resolving a ref and to the builds of "
        "repositories that cannot be read without it. A login without host= is refused: "
        "BinderHub's hands one login to every host.",
        secret=True,
        check=values.git_credentials,
    )
    max_concurrent_ls_remote: int = opt(
        8,
        "How many `git ls-remote` processes this replica runs at once. Lookups beyond it "
        "wait their turn, and give up with 'try again later' (503) when no turn comes "
        "within the 30 s ls-remote timeout, which waiting and running share. Stops a "
        "burst of launches of distinct git URLs or refs (each its own lookup) from forking "
        "git without bound.",
        minimum=1,
    )
    allowed_protocols: tuple[str, ...] = opt(
        _GIT_PROTOCOLS,
        "The URL schemes a git/ spec may use (BinderHub's GitRepoProvider.allowed_protocols).",
        check=_git_protocols,
    )


def _doi_resolver_url(name: str, more: str = "") -> Any:
    """The ``doi_resolver_url`` option of a provider whose specs are DOIs."""
    return url_opt(
        "https://doi.org",
        f"Where {name} DOIs are resolved (the DOI is appended as a path). BinderHub always asks "
        "https://doi.org; repo2docker, which fetches the files, always does too." + more,
    )


@dataclass(frozen=True)
class ZenodoConfig(Section):
    """The Zenodo repo provider (YAML section ``zenodo:``)."""

    _prefix: ClassVar[str] = "zenodo."

    doi_resolver_url: str = _doi_resolver_url("Zenodo")


@dataclass(frozen=True)
class FigshareConfig(Section):
    """The Figshare repo provider (YAML section ``figshare:``)."""

    _prefix: ClassVar[str] = "figshare."

    doi_resolver_url: str = _doi_resolver_url("Figshare")
    api_base_url: str = url_opt(
        "https://api.figshare.com/v2",
        "The Figshare API, asked for the latest version of an article given without one.",
    )


@dataclass(frozen=True)
class HydroshareConfig(Section):
    """The HydroShare repo provider (YAML section ``hydroshare:``)."""

    _prefix: ClassVar[str] = "hydroshare."

    base_url: str = url_opt(
        "https://www.hydroshare.org",
        "The HydroShare site: its API dates resources, and its {base_url}/resource/{id} is "
        "the repo URL handed to repo2docker (which knows www.hydroshare.org only).",
    )


@dataclass(frozen=True)
class DataverseConfig(Section):
    """The Dataverse repo provider (YAML section ``dataverse:``)."""

    _prefix: ClassVar[str] = "dataverse."

    doi_resolver_url: str = _doi_resolver_url(
        "Dataverse", " The DOI's landing page names the Dataverse installation whose API is asked."
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


#: Nested YAML sections: (YAML key and attribute of ProvidersConfig, class).
NESTED_SECTIONS = sections_of(ProvidersConfig)
