"""Repo providers: turn a launch spec into a repository URL, a resolved ref and an image slug.

Prefixes and spec forms are BinderHub's, so ``/v2/gh/...`` badges keep working::

    gh          {user}/{repo}/{ref}                     GitHub or GitHub Enterprise
    gist        {user}/{gist_id}[/{ref}]                GitHub Gist
    gl          {url-escaped namespace/project}/{ref}   GitLab
    git         {url-escaped repository URL}/{ref}      any git server (http, https, git, ssh)
    zenodo      {doi}                                   Zenodo record
    figshare    {doi}                                   Figshare article
    hydroshare  {resource id, url-escaped URL or DOI}   HydroShare resource
    dataverse   {doi}                                   Dataverse dataset
    ckan        {url-escaped dataset URL}               CKAN dataset

Every spec is checked when its provider is constructed (:class:`~swarmbinder.errors.SpecError`,
no network); resolving raises :class:`~swarmbinder.errors.RefNotFound` or
:class:`~swarmbinder.errors.ProviderUnavailable`, and
:class:`~swarmbinder.outbound.DestinationRefused` for a spec that leads to an address Binder may
not connect to (:mod:`swarmbinder.outbound`).
"""

from .base import MAX_SPEC_LENGTH, RepoProvider, check_ref, check_text, is_full_sha
from .cache import EtagCache, NegativeCache
from .catalogue import ProviderFactory, ProviderRegistry, default_registry, parse_spec
from .ckan import CKANProvider
from .datarepo import DataCache, DataRepoProvider
from .dataverse import DataverseProvider
from .figshare import FigshareProvider
from .git import GitRepoProvider
from .github import GistRepoProvider, GitHubCache, GitHubRepoProvider, RateLimit
from .gitlab import GitLabRepoProvider
from .hydroshare import HydroshareProvider
from .zenodo import ZenodoProvider

__all__ = [
    "MAX_SPEC_LENGTH",
    "CKANProvider",
    "DataCache",
    "DataRepoProvider",
    "DataverseProvider",
    "EtagCache",
    "FigshareProvider",
    "GistRepoProvider",
    "GitHubCache",
    "GitHubRepoProvider",
    "GitLabRepoProvider",
    "GitRepoProvider",
    "HydroshareProvider",
    "NegativeCache",
    "ProviderFactory",
    "ProviderRegistry",
    "RateLimit",
    "RepoProvider",
    "ZenodoProvider",
    "check_ref",
    "check_text",
    "default_registry",
    "is_full_sha",
    "parse_spec",
]
