"""Old links: a ``master`` or ``main`` that a repository no longer has falls back to HEAD.

BinderHub keeps old GitHub badges working this way and says so in a ``waiting`` event; we do it
for ``gh``, ``gl`` and ``git``. Each provider is asked for real: the fake GitHub and GitLab APIs
over HTTP, and real ``git ls-remote`` against a real git server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial

import aiohttp
import pytest
from fakes.git_daemon import git, git_daemon
from fakes.github import FakeGitHub
from fakes.gitlab import FakeGitLab
from pytest_aiohttp import AiohttpServer

from swarmbinder.errors import RefNotFound, SpecBanned
from swarmbinder.outbound import OutboundPolicy, guarded_session
from swarmbinder.policy.specpolicy import SpecPolicy
from swarmbinder.providers import (
    GitHubRepoProvider,
    GitLabRepoProvider,
    GitRepoProvider,
    ProviderRegistry,
)
from swarmbinder.resolve import Resolved, resolve

SHA_HEAD = "a" * 40
SHA_OTHER = "b" * 40
LOOPBACK = OutboundPolicy.from_cidrs(["127.0.0.0/8"])
NO_POLICY = SpecPolicy.from_config()
NOTICE_TAIL = "Trying again with HEAD instead of {ref}. Please update your links.\n"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(LOOPBACK) as session:
        yield session


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real git server whose repository's default branch is ``trunk``: neither name exists."""
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    git("init", "-q", "-b", "trunk", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work)
    git("clone", "-q", "--bare", str(work), str(base / "repo.git"), cwd=base)
    with git_daemon(base) as url:
        yield url, head


async def registry_for(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> tuple[ProviderRegistry, FakeGitHub, FakeGitLab]:
    github, gitlab = FakeGitHub(), FakeGitLab()
    github.add_repo("org", "moved", {"HEAD": SHA_HEAD, "main": SHA_HEAD})
    github.add_repo("org", "kept", {"HEAD": SHA_HEAD, "master": SHA_OTHER})
    gitlab.projects["group/moved"] = {"HEAD": SHA_HEAD, "master": SHA_HEAD}
    github_url = str((await aiohttp_server(github.app())).make_url(""))
    gitlab_url = str((await aiohttp_server(gitlab.app())).make_url("/api/v4"))
    providers = ProviderRegistry()
    providers.register(
        GitHubRepoProvider,
        partial(GitHubRepoProvider, api_base_url=github_url, session=session, outbound=LOOPBACK),
    )
    providers.register(
        GitLabRepoProvider,
        partial(
            GitLabRepoProvider,
            hostname="gitlab.example.org",
            api_base_url=gitlab_url,
            session=session,
            outbound=LOOPBACK,
        ),
    )
    providers.register(GitRepoProvider, partial(GitRepoProvider, outbound=LOOPBACK))
    return providers, github, gitlab


async def resolve_path(
    providers: ProviderRegistry, path: str, policy: SpecPolicy = NO_POLICY
) -> Resolved:
    return await resolve(path, providers=providers, policy=policy, image_prefix="r/binder-")


async def test_github_master_falls_back_to_head_with_binderhubs_notice(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    providers, github, _ = await registry_for(aiohttp_server, session)
    resolved = await resolve_path(providers, "gh/org/moved/master")
    assert resolved.build.ref == SHA_HEAD
    assert resolved.resolved_spec == f"org/moved/{SHA_HEAD}"
    assert resolved.notice == (
        "Could not resolve ref for gh:org/moved/master. Double check your URL and that your "
        'repo is public. GitHub has changed default branches from "master" to "main". '
        "Tip: HEAD will always resolve to a repository's default branch.\n"
        + NOTICE_TAIL.format(ref="master")
    )
    assert [r.path.rsplit("/", 1)[-1] for r in github.requests] == ["master", "HEAD"]


async def test_github_main_falls_back_too_and_an_existing_master_is_used_as_is(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    providers, _, _ = await registry_for(aiohttp_server, session)
    moved = await resolve_path(providers, "gh/org/kept/main")
    assert moved.build.ref == SHA_HEAD
    assert moved.notice is not None and moved.notice.endswith(NOTICE_TAIL.format(ref="main"))
    kept = await resolve_path(providers, "gh/org/kept/master")
    assert (kept.build.ref, kept.notice) == (SHA_OTHER, None)


async def test_other_refs_and_missing_repositories_still_fail(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    providers, github, _ = await registry_for(aiohttp_server, session)
    with pytest.raises(RefNotFound, match="org/moved/develop"):
        await resolve_path(providers, "gh/org/moved/develop")
    assert [r.path.rsplit("/", 1)[-1] for r in github.requests] == ["develop"]
    # No repository at all: the HEAD retry fails too, and the error names the link as given.
    with pytest.raises(RefNotFound, match="gh:org/absent/master"):
        await resolve_path(providers, "gh/org/absent/master")


async def test_gitlab_main_falls_back_to_head(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    providers, _, gitlab = await registry_for(aiohttp_server, session)
    resolved = await resolve_path(providers, "gl/group%2Fmoved/main")
    assert resolved.build.ref == SHA_HEAD
    assert resolved.resolved_spec == f"group%2Fmoved/{SHA_HEAD}"
    assert resolved.notice is not None
    assert resolved.notice.startswith("Could not resolve ref for gl:group%2Fmoved/main.")
    assert resolved.notice.endswith(NOTICE_TAIL.format(ref="main"))
    assert [path.rsplit("/", 1)[-1] for path, _ in gitlab.requests] == ["main", "HEAD"]


@pytest.mark.parametrize("old_ref", ["master", "main"])
async def test_git_old_default_branch_falls_back_to_head_for_real(
    aiohttp_server: AiohttpServer,
    session: aiohttp.ClientSession,
    git_server: tuple[str, str],
    old_ref: str,
) -> None:
    url, head = git_server
    providers, _, _ = await registry_for(aiohttp_server, session)
    escaped = f"{url}/repo.git".replace(":", "%3A").replace("/", "%2F")
    resolved = await resolve_path(providers, f"git/{escaped}/{old_ref}")
    assert resolved.build.ref == head
    assert resolved.resolved_spec == f"{escaped}/{head}"
    assert resolved.notice is not None
    assert resolved.notice.endswith(NOTICE_TAIL.format(ref=old_ref))


async def test_the_head_retry_is_held_to_the_bans_too(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A ban written for HEAD links (``.../HEAD$``) is not dodged by linking to ``master``."""
    providers, _, _ = await registry_for(aiohttp_server, session)
    policy = SpecPolicy.from_config(banned_specs=[r"^org/moved/HEAD$"])
    with pytest.raises(SpecBanned):
        await resolve_path(providers, "gh/org/moved/master", policy)
