"""From a launch path (``gh/org/repo/ref``) to a :class:`~swarmbinder.buildjob.BuildRequest`.

Parsing, the spec policy (bans) and ref resolution all happen here, before anything touches
Swarm: a spec that does not parse, an unknown provider, a banned spec or a ref that does not
exist is refused with a clear message and no build service is ever created for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from .buildjob import BuildRequest, git_logins_from_config
from .config import Config
from .errors import RefNotFound
from .launcher import ServerRequest
from .naming import image_name
from .outbound import OutboundPolicy, guarded_session
from .policy.canonical import RepoIdentity
from .policy.specpolicy import SpecPolicy
from .providers import ProviderRegistry, default_registry, parse_spec
from .providers.base import RepoProvider


@dataclass(frozen=True)
class Resolved:
    """A resolved launch: what to build, plus what the launch page and hub need to know."""

    build: BuildRequest
    ref_url: str
    resolved_spec: str
    #: Said to the client in a ``waiting`` event before anything else: today only that an
    #: old link's default branch was missing and HEAD was used instead.
    notice: str | None = None

    def server_request(
        self,
        path: str,
        *,
        launch_host: str,
        client_ip: str,
        username: str | None,
        server_name: str,
    ) -> ServerRequest:
        """What a launch of this build says of its server, for the launch path ``path``
        (BinderHub's ``binder_*`` fields): the same for a visitor's launch and a warm pool's."""
        build = self.build
        return ServerRequest(
            repo_url=build.repo_url,
            provider_spec=path,
            ref_url=self.ref_url,
            binder_request=f"v2/{path}",
            binder_persistent_request=f"v2/{build.provider}/{self.resolved_spec}",
            binder_launch_host=launch_host,
            binder_client_ip=client_ip,
            username=username,
            server_name=server_name,
        )


#: Default branch names of old links. A repository that renamed ``master`` to ``main`` (or
#: back) breaks every badge pointing at the old name; BinderHub retries those with HEAD.
DEFAULT_BRANCH_NAMES = frozenset({"master", "main"})
#: Providers whose spec ends in ``/{ref}`` and whose HEAD is the default branch. BinderHub
#: retries for GitHub only; GitLab and plain git links break the same way.
HEAD_FALLBACK_PROVIDERS = frozenset({"gh", "gl", "git"})


async def resolve(
    path: str,
    *,
    providers: ProviderRegistry,
    policy: SpecPolicy,
    image_prefix: str,
) -> Resolved:
    prefix, spec = parse_spec(path)
    provider: RepoProvider = providers.get(prefix, spec)
    # Bans are matched before resolving, as BinderHub does, so a banned repo costs no API
    # call; on the spec with and without its prefix and on the canonical repository URL, so
    # another spelling of a banned repository is banned too.
    policy.check(RepoIdentity(prefix, spec, provider.get_repo_url()))
    notice = None
    try:
        ref = await provider.get_resolved_ref()
    except RefNotFound as missing:
        old_ref = provider.unresolved_ref
        if prefix not in HEAD_FALLBACK_PROVIDERS or old_ref not in DEFAULT_BRANCH_NAMES:
            raise
        head_spec = spec.rsplit("/", 1)[0] + "/HEAD"
        provider = providers.get(prefix, head_spec)
        policy.check(RepoIdentity(prefix, head_spec, provider.get_repo_url()))
        try:
            ref = await provider.get_resolved_ref()
        except RefNotFound:
            raise missing from None  # no repository at all: say what was asked for
        # BinderHub's words, so clients and people who know them see the same notice.
        notice = (
            f"{missing.user_message}\n"
            f"Trying again with HEAD instead of {old_ref}. Please update your links.\n"
        )
    slug = provider.get_build_slug()
    request = BuildRequest(
        provider=prefix,
        spec=spec,
        repo_url=provider.get_repo_url(),
        ref=ref,
        build_slug=slug,
        image=image_name(image_prefix, slug, ref),
    )
    return Resolved(
        build=request,
        ref_url=await provider.get_resolved_ref_url(),
        resolved_spec=await provider.get_resolved_spec(),
        notice=notice,
    )


def provider_session(config: Config) -> aiohttp.ClientSession:
    """The providers' own session, held to ``allowed_outbound_networks``.

    Not for the hub or the registry: the operator chose those, and they may well be private.
    """
    policy = OutboundPolicy.from_cidrs(config.bans.allowed_outbound_networks)
    return guarded_session(policy)


def providers_from_config(config: Config, session: aiohttp.ClientSession) -> ProviderRegistry:
    """The configured providers; ``session`` comes from :func:`provider_session`."""
    github = config.providers.github
    gitlab = config.providers.gitlab
    registry = default_registry(
        session,
        github_hostname=github.hostname,
        github_api_base_url=github.api_base_url or None,
        github_access_token=github.access_token or None,
        github_client_id=github.client_id or None,
        github_client_secret=github.client_secret or None,
        gitlab_hostname=gitlab.hostname,
        gitlab_access_token=gitlab.access_token or None,
        gitlab_private_token=gitlab.private_token or None,
        git_ref_cache_ttl=config.providers.git.ref_cache_ttl,
        git_logins=git_logins_from_config(config),
        git_max_concurrent_ls_remote=config.providers.git.max_concurrent_ls_remote,
        git_allowed_protocols=config.providers.git.allowed_protocols,
        zenodo_doi_resolver_url=config.providers.zenodo.doi_resolver_url,
        figshare_doi_resolver_url=config.providers.figshare.doi_resolver_url,
        figshare_api_base_url=config.providers.figshare.api_base_url,
        hydroshare_base_url=config.providers.hydroshare.base_url,
        dataverse_doi_resolver_url=config.providers.dataverse.doi_resolver_url,
    )
    return registry.restricted_to(config.server.repo_providers)


def policy_from_config(config: Config) -> SpecPolicy:
    bans = config.bans
    return SpecPolicy.from_config(
        banned_specs=bans.banned_specs,
        allowed_specs=bans.allowed_specs,
        high_quota_specs=config.quotas.high_quota_specs,
        spec_config=config.quotas.spec_config,
    )
