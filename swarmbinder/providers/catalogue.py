"""From a launch path to a provider: ``gh/user/repo/ref`` -> ``GitHubRepoProvider``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection, Mapping
from functools import partial

import aiohttp

from ..errors import SpecError, UnknownProvider
from ..gitcredentials import GitCredentials
from ..outbound import session_policy
from .base import DEFAULT_TIMEOUT, HttpOptions, RepoProvider, check_decoded_spec, check_text
from .cache import SharedLookups
from .ckan import CKANProvider
from .datarepo import DOI_RESOLVER_URL, DataCache
from .dataverse import DataverseProvider
from .figshare import FIGSHARE_API_BASE_URL, FigshareProvider
from .git import (
    ALLOWED_PROTOCOLS,
    LS_REMOTE_TIMEOUT,
    MAX_CONCURRENT_LS_REMOTE,
    GitRepoProvider,
    check_protocols,
)
from .github import (
    GIST_HOSTNAME,
    GITHUB_HOSTNAME,
    GistRepoProvider,
    GitHubCache,
    GitHubOptions,
    GitHubRepoProvider,
    default_api_base_url,
)
from .gitlab import GITLAB_HOSTNAME, GitLabRepoProvider
from .hydroshare import HYDROSHARE_BASE_URL, HydroshareProvider
from .zenodo import ZenodoProvider

ProviderFactory = Callable[[str], RepoProvider]
_PREFIX = re.compile(r"[a-z][a-z0-9_-]*")


def parse_spec(path: str) -> tuple[str, str]:
    """Split ``{prefix}/{spec}`` (the part of ``/v2/`` or ``/build/`` URLs after the route).

    The spec is kept exactly as it came, percent-escapes included: the ``gl`` and ``git``
    providers need ``%2F`` to tell a path inside one spec part from the part separator. A
    trailing ``/`` is dropped, as BinderHub does. Control characters and ``.``/``..`` segments
    are refused even when escaped (:func:`~swarmbinder.providers.base.check_decoded_spec`),
    for ``/v2/`` and ``/build`` alike.
    """
    check_text(path, "Launch path")
    prefix, sep, spec = path.lstrip("/").partition("/")
    spec = spec.rstrip("/")
    if not sep or not prefix or not spec:
        raise SpecError(f'Launch path must be "provider/spec", provided: "{path}".')
    check_text(spec)
    if not _PREFIX.fullmatch(prefix):
        raise UnknownProvider(prefix)
    check_decoded_spec(spec)
    return prefix, spec


class ProviderRegistry:
    """The providers a service offers, by prefix, each a factory from spec to provider."""

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._classes: dict[str, type[RepoProvider]] = {}

    def register(self, cls: type[RepoProvider], factory: ProviderFactory | None = None) -> None:
        """Offer ``cls`` under ``cls.prefix``; ``factory`` adds settings (default: ``cls``)."""
        self._classes[cls.prefix] = cls
        self._factories[cls.prefix] = factory if factory is not None else cls

    def restricted_to(self, prefixes: Collection[str]) -> ProviderRegistry:
        """The same providers with only ``prefixes`` offered (BinderHub's ``repo_providers``);
        the others are then unknown, as if they had never been written."""
        restricted = ProviderRegistry()
        for prefix in self._factories:
            if prefix in prefixes:
                restricted.register(self._classes[prefix], self._factories[prefix])
        return restricted

    @property
    def prefixes(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._factories

    def provider_class(self, prefix: str) -> type[RepoProvider]:
        try:
            return self._classes[prefix]
        except KeyError:
            raise UnknownProvider(prefix) from None

    def get(self, prefix: str, spec: str) -> RepoProvider:
        """A provider for ``spec``; raises UnknownProvider or SpecError before any network call."""
        factory = self._factories.get(prefix)
        if factory is None:
            raise UnknownProvider(prefix)
        return factory(spec)

    def from_path(self, path: str) -> RepoProvider:
        prefix, spec = parse_spec(path)
        return self.get(prefix, spec)

    def display_configs(self) -> list[Mapping[str, object]]:
        """What the home page's provider menu is built from (BinderHub ``/api/repoproviders``)."""
        return [cls.display_config for cls in self._classes.values()]

    def labels(self) -> dict[str, Mapping[str, object]]:
        """BinderHub's ``/_config``: the form labels of each provider, by prefix."""
        return {prefix: cls.labels for prefix, cls in self._classes.items()}


def default_registry(
    session: aiohttp.ClientSession,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    github_hostname: str = GITHUB_HOSTNAME,
    github_api_base_url: str | None = None,
    github_access_token: str | None = None,
    github_client_id: str | None = None,
    github_client_secret: str | None = None,
    github_cache: GitHubCache | None = None,
    gist_hostname: str = GIST_HOSTNAME,
    allow_secret_gist: bool = False,
    gitlab_hostname: str = GITLAB_HOSTNAME,
    gitlab_api_base_url: str | None = None,
    gitlab_access_token: str | None = None,
    gitlab_private_token: str | None = None,
    git_allowed_protocols: Collection[str] = ALLOWED_PROTOCOLS,
    git_ls_remote_timeout: float = LS_REMOTE_TIMEOUT,
    git_ref_cache_ttl: float = 0,
    git_logins: GitCredentials | None = None,
    git_max_concurrent_ls_remote: int = MAX_CONCURRENT_LS_REMOTE,
    zenodo_doi_resolver_url: str = DOI_RESOLVER_URL,
    figshare_doi_resolver_url: str = DOI_RESOLVER_URL,
    figshare_api_base_url: str = FIGSHARE_API_BASE_URL,
    dataverse_doi_resolver_url: str = DOI_RESOLVER_URL,
    hydroshare_base_url: str = HYDROSHARE_BASE_URL,
    data_cache: DataCache | None = None,
) -> ProviderRegistry:
    """BinderHub's providers sharing one HTTP session, one GitHub cache and one data cache.

    ``gh``, ``gist``, ``git`` and ``gl`` for git repositories; ``zenodo``, ``figshare``,
    ``hydroshare``, ``dataverse`` and ``ckan`` for data repositories.

    The session belongs to the caller and must come from
    :func:`~swarmbinder.outbound.guarded_session` (TypeError otherwise): its policy also decides
    where ``git ls-remote`` may connect. Credentials left as ``None`` come from the environment
    variables BinderHub reads (``GITHUB_ACCESS_TOKEN``, ``GITHUB_CLIENT_ID``,
    ``GITHUB_CLIENT_SECRET``, ``GITLAB_ACCESS_TOKEN``, ``GITLAB_PRIVATE_TOKEN``); pass ``""`` for
    none.
    """
    outbound = session_policy(session)
    cache = github_cache if github_cache is not None else GitHubCache()
    protocols = check_protocols(git_allowed_protocols)
    github_api = github_api_base_url or default_api_base_url(github_hostname)
    data = data_cache if data_cache is not None else DataCache()
    registry = ProviderRegistry()

    # Every provider that talks HTTP shares the caller's session and timeout.
    http: HttpOptions = {"session": session, "timeout": timeout, "outbound": outbound}
    github: GitHubOptions = {
        "access_token": github_access_token,
        "client_id": github_client_id,
        "client_secret": github_client_secret,
        "cache": cache,
        **http,
    }
    factories: list[tuple[type[RepoProvider], ProviderFactory]] = [
        (
            GitHubRepoProvider,
            partial(
                GitHubRepoProvider, hostname=github_hostname, api_base_url=github_api, **github
            ),
        ),
        (
            GistRepoProvider,
            partial(
                GistRepoProvider,
                hostname=gist_hostname,
                api_base_url=github_api,
                allow_secret_gist=allow_secret_gist,
                **github,
            ),
        ),
        (
            GitLabRepoProvider,
            partial(
                GitLabRepoProvider,
                hostname=gitlab_hostname,
                api_base_url=gitlab_api_base_url,
                access_token=gitlab_access_token,
                private_token=gitlab_private_token,
                **http,
            ),
        ),
        (
            GitRepoProvider,
            partial(
                GitRepoProvider,
                allowed_protocols=protocols,
                ls_remote_timeout=git_ls_remote_timeout,
                lookups=SharedLookups[dict[str, str]](git_ref_cache_ttl),
                outbound=outbound,
                logins=git_logins,
                ls_remote_slots=asyncio.Semaphore(git_max_concurrent_ls_remote),
            ),
        ),
        (
            ZenodoProvider,
            partial(ZenodoProvider, doi_resolver_url=zenodo_doi_resolver_url, cache=data, **http),
        ),
        (
            FigshareProvider,
            partial(
                FigshareProvider,
                doi_resolver_url=figshare_doi_resolver_url,
                api_base_url=figshare_api_base_url,
                cache=data,
                **http,
            ),
        ),
        (
            HydroshareProvider,
            partial(HydroshareProvider, base_url=hydroshare_base_url, cache=data, **http),
        ),
        (
            DataverseProvider,
            partial(
                DataverseProvider, doi_resolver_url=dataverse_doi_resolver_url, cache=data, **http
            ),
        ),
        (CKANProvider, partial(CKANProvider, cache=data, **http)),
    ]
    for provider_class, factory in factories:
        registry.register(provider_class, factory)
    return registry
