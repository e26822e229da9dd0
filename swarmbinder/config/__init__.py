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

The file may also hold BinderHub's own config as it is: the ``config:`` block of a BinderHub Helm
chart, or its sections (``BinderHub:``, ``GitHubRepoProvider:``, ``LaunchQuota:`` ...) at the top
level, beside swarmbinder's options. The table at the end of docs/config.md says which option of
ours each BinderHub option sets.

Secrets (the options marked *secret* in docs/config.md) can also be read from a file, as Swarm
mounts secrets under ``/run/secrets/``: ``hub_api_token_file: /run/secrets/hub_token`` in YAML, or
``SWARMBINDER_HUB_API_TOKEN_FILE``; a relative path is taken from the working directory and a
trailing newline is dropped. Setting both the value and its ``_file`` in one source is an error.
``swarmbinder show-config`` prints the merged result with secrets masked.

Every value is checked when it is loaded; the first problem raises
:class:`~swarmbinder.errors.ConfigError` naming the option. Other modules read options through
their section: ``config.builds.concurrent_build_limit``, ``config.providers.github.hostname``.
``python -m swarmbinder.config`` prints the option reference kept in docs/config.md. The checks
of single values live in :mod:`swarmbinder.config.values`.
"""

from .base import ENV_PREFIX, MASK, OptionInfo, Section
from .binderhub import ignored_warning
from .builds import BuildConfig, RegistryConfig
from .docs import render_markdown
from .loading import CONFIG_ENV, load_config
from .providers import (
    DataverseConfig,
    FigshareConfig,
    GitConfig,
    GitHubConfig,
    GitLabConfig,
    HydroshareConfig,
    ProvidersConfig,
    ZenodoConfig,
)
from .sections import (
    OPTIONS,
    AdminConfig,
    BanConfig,
    Config,
    HubConfig,
    PagesConfig,
    QuotaConfig,
    ServerConfig,
    TokenConfig,
    iter_options,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "MASK",
    "OPTIONS",
    "AdminConfig",
    "BanConfig",
    "BuildConfig",
    "Config",
    "DataverseConfig",
    "FigshareConfig",
    "GitConfig",
    "GitHubConfig",
    "GitLabConfig",
    "HubConfig",
    "HydroshareConfig",
    "OptionInfo",
    "PagesConfig",
    "ProvidersConfig",
    "QuotaConfig",
    "RegistryConfig",
    "Section",
    "ServerConfig",
    "TokenConfig",
    "ZenodoConfig",
    "ignored_warning",
    "iter_options",
    "load_config",
    "render_markdown",
]
