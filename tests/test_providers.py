from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from fakes.git_daemon import free_port, git, git_daemon
from fakes.github import FakeGist, FakeGitHub
from fakes.gitlab import FakeGitLab
from pytest_aiohttp import AiohttpServer

from swarmbinder import naming
from swarmbinder.errors import (
    ConfigError,
    ProviderUnavailable,
    RefNotFound,
    SpecError,
    UnknownProvider,
)
from swarmbinder.outbound import OutboundPolicy, guarded_session
from swarmbinder.providers import (
    MAX_SPEC_LENGTH,
    GistRepoProvider,
    GitHubCache,
    GitHubRepoProvider,
    GitLabRepoProvider,
    GitRepoProvider,
    NegativeCache,
    default_registry,
    parse_spec,
)
from swarmbinder.providers.cache import EtagCache, SharedLookups
from swarmbinder.providers.github import default_api_base_url

SHA_A = "1479e0252b2e648bb755ee913292b79495931717"
SHA_B = "0" * 39 + "b"
SHA_C = "c" * 40
#: The fakes listen on 127.0.0.1, which providers refuse unless allowed.
LOOPBACK = OutboundPolicy.from_cidrs(["127.0.0.0/8"])


@pytest.fixture(autouse=True)
def no_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GITHUB_ACCESS_TOKEN",
        "GITHUB_CLIENT_ID",
        "GITHUB_CLIENT_SECRET",
        "GITLAB_ACCESS_TOKEN",
        "GITLAB_PRIVATE_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(LOOPBACK) as session:
        yield session


# -- parsing: everything here fails before any network call ---------------------------------


def test_parse_spec() -> None:
    assert parse_spec("gh/binder-examples/octave/HEAD") == ("gh", "binder-examples/octave/HEAD")
    assert parse_spec("/gh/u/r/feature/x/") == ("gh", "u/r/feature/x")
    assert parse_spec("gl/group%2Fproject/main") == ("gl", "group%2Fproject/main")


@pytest.mark.parametrize(
    "path",
    ["", "gh", "gh/", "gh//", "gh/u/r/HEAD\r\nX-Evil: 1", "gh/" + "a" * MAX_SPEC_LENGTH, "gh/-u"],
)
def test_parse_spec_refuses_malformed_paths(path: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(path)


def test_parse_spec_refuses_odd_prefixes_as_unknown() -> None:
    with pytest.raises(UnknownProvider):
        parse_spec("G H/u/r/HEAD")


async def test_registry_unknown_prefix(session: aiohttp.ClientSession) -> None:
    registry = default_registry(session)
    assert registry.prefixes == [
        *("gh", "gist", "gl", "git"),
        *("zenodo", "figshare", "hydroshare", "dataverse", "ckan"),
    ]
    with pytest.raises(UnknownProvider) as info:
        registry.from_path("svn/example.org/repo/trunk")
    assert info.value.provider == "svn"
    assert info.value.status_code == 404
    assert "gh" in registry and "svn" not in registry


@pytest.mark.parametrize(
    ("prefix", "spec", "words"),
    [
        ("gh", "binder-examples/octave", 'Did you mean "binder-examples/octave/HEAD"?'),
        ("gh", "u", "user/repo/ref"),
        ("gh", "u/r/", "user/repo/ref"),
        ("gh", "u//HEAD", "user/repo/ref"),
        ("gh", "u/r/-upload-pack", "must not start with '-'"),
        ("gh", "u/r/a..b", "not a valid git ref"),
        ("gh", "u/r/a b", "not a valid git ref"),
        ("gh", "u/r/ref\r\nX-Injected: 1", "control characters"),
        ("gh", "u/r/ref\x00", "control characters"),
        ("gh", "../r/HEAD", "may only have"),
        ("gh", "u/../HEAD", "may only have"),
        ("gh", "u/r?x=1/HEAD", "may only have"),
        ("gh", "u/.git/HEAD", "may only have"),
        ("gh", "u/r/feature/", "not a valid git ref"),
        ("gh", "u/r/x.lock", "not a valid git ref"),
        ("gh", "u/r/" + "x" * MAX_SPEC_LENGTH, "too long"),
        ("gist", "u", "user/gist_id"),
        ("gist", "u/abc/def/ghi", "user/gist_id"),
        ("gist", "u/ab-c", "letters and digits"),
        ("gist", "u/abc/-x", "must not start with '-'"),
        ("gl", "project/HEAD", "needs its namespace"),
        ("gl", "group%2Fproject", "url-escaped-namespace/ref"),
        ("gl", "group%2F..%2Fx/main", "may only have"),
        ("gl", "group%2F%2Fx/main", "may only have"),
        ("gl", "group%2Fproject/%0Aref", "control characters"),
        ("gl", "group%2Fproject/-x", "must not start with '-'"),
        ("git", "https://example.org/repo.git/HEAD", "has no host"),
        ("git", "file%3A%2F%2F%2Fetc%2Fpasswd/HEAD", "protocol must be one of"),
        ("git", "ext%3A%3Ash%20-c%20touch%20x/HEAD", "protocol must be one of"),
        ("git", "%2D%2Dupload-pack%3Dtouch%20x/HEAD", "must not start with '-'"),
        ("git", "https%3A%2F%2Fexample.org%2Fr/--upload-pack=x", "must not start with '-'"),
        ("git", "https%3A%2F%2Fexample.org%2Fr%0A/HEAD", "control characters"),
        ("git", "https%3A%2F%2F%5Bbad/HEAD", "does not parse"),
        ("git", "https%3A%2F%2Fexample.org%2Fr", "url-escaped-repo-url/ref"),
    ],
)
async def test_malformed_specs_are_refused_with_a_clear_message(
    session: aiohttp.ClientSession, prefix: str, spec: str, words: str
) -> None:
    registry = default_registry(session)
    with pytest.raises(SpecError) as info:
        registry.get(prefix, spec)
    assert words in str(info.value)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("prefix", "spec"),
    [
        ("gh", "u/r/HEAD"),
        ("gh", "u/r.git/feature/x-1"),
        ("gh", "U_1/r.dots/v1.0"),
        ("gh", "u/r/refs/heads/main"),
        ("gh", f"u/r/{SHA_A}"),
        ("gist", "u/abc123"),
        ("gist", f"u/abc123/{SHA_A}"),
        ("gl", "group%2Fsub%2Fproject/feature%2Fx"),
        ("git", "https%3A%2F%2Fexample.org%2Frepo.git/main"),
        ("git", "git%40github.com%3Auser%2Frepo.git/HEAD"),
        ("git", "ssh%3A%2F%2Fgit%40example.org%2Frepo/v1"),
        ("git", "git%3A%2F%2F127.0.0.1%3A9418%2Frepo.git/HEAD"),
    ],
)
async def test_wellformed_specs_are_accepted(
    session: aiohttp.ClientSession, prefix: str, spec: str
) -> None:
    provider = default_registry(session).get(prefix, spec)
    assert provider.spec == spec
    assert provider.key == f"{prefix}:{spec}"


async def test_registry_ui_metadata(session: aiohttp.ClientSession) -> None:
    registry = default_registry(session)
    prefixes = ["gh", "gist", "gl", "git", "zenodo", "figshare", "hydroshare", "dataverse", "ckan"]
    assert [c["id"] for c in registry.display_configs()] == prefixes
    assert set(registry.labels()) == set(prefixes)
    assert registry.provider_class("gl") is GitLabRepoProvider
    with pytest.raises(UnknownProvider):
        registry.provider_class("nope")


async def test_registry_refuses_unsupported_git_protocols(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError):
        default_registry(session, git_allowed_protocols={"https", "file"})


# -- GitHub ---------------------------------------------------------------------------------


@dataclass
class GitHubAPI:
    fake: FakeGitHub
    url: str
    session: aiohttp.ClientSession
    cache: GitHubCache

    def gh(self, spec: str) -> GitHubRepoProvider:
        return GitHubRepoProvider(
            spec, api_base_url=self.url, cache=self.cache, session=self.session, access_token=""
        )

    def gist(self, spec: str, allow_secret_gist: bool = False) -> GistRepoProvider:
        return GistRepoProvider(
            spec,
            api_base_url=self.url,
            cache=self.cache,
            session=self.session,
            access_token="",
            allow_secret_gist=allow_secret_gist,
        )


@pytest.fixture
async def github(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> AsyncIterator[GitHubAPI]:
    fake = FakeGitHub()
    fake.add_repo("binder-examples", "octave", {"HEAD": SHA_A, "main": SHA_A})
    fake.add_repo("u", "r", {"HEAD": SHA_B, "feature/x": SHA_C, "v#1": SHA_A})
    fake.gists["abc123"] = FakeGist(versions=[SHA_C, SHA_B])
    fake.gists["secret1"] = FakeGist(versions=[SHA_A], public=False)
    server = await aiohttp_server(fake.app())
    yield GitHubAPI(fake, str(server.make_url("")).rstrip("/"), session, GitHubCache())


async def test_github_resolves_and_names_the_image(github: GitHubAPI) -> None:
    provider = github.gh("binder-examples/octave/HEAD")
    assert await provider.get_resolved_ref() == SHA_A
    assert await provider.get_resolved_spec() == f"binder-examples/octave/{SHA_A}"
    assert await provider.get_resolved_ref_url() == (
        f"https://github.com/binder-examples/octave/tree/{SHA_A}"
    )
    assert provider.repo_url == "https://github.com/binder-examples/octave"
    assert provider.unresolved_ref == "HEAD"
    image = naming.image_name("", provider.get_build_slug(), SHA_A)
    assert image.endswith(f"binder-2dexamples-2doctave-03025a:{SHA_A}")


async def test_github_ref_with_slash_and_dot_git(github: GitHubAPI) -> None:
    provider = github.gh("u/r.git/feature/x")
    assert provider.repo == "r"
    assert provider.unresolved_ref == "feature/x"
    assert await provider.get_resolved_ref() == SHA_C
    assert github.fake.requests[-1].path == "/repos/u/r/commits/feature/x"


async def test_github_ref_with_url_special_characters_is_escaped(github: GitHubAPI) -> None:
    assert await github.gh("u/r/v#1").get_resolved_ref() == SHA_A


async def test_github_resolution_is_remembered_per_provider(github: GitHubAPI) -> None:
    provider = github.gh("u/r/HEAD")
    await provider.get_resolved_ref()
    await provider.get_resolved_spec()
    await provider.get_resolved_ref_url()
    assert len(github.fake.requests) == 1


async def test_github_etag_reuse_costs_no_quota(github: GitHubAPI) -> None:
    assert await github.gh("u/r/HEAD").get_resolved_ref() == SHA_B
    after_first = github.fake.remaining
    assert await github.gh("u/r/HEAD").get_resolved_ref() == SHA_B
    first, second = github.fake.requests
    assert "If-None-Match" not in first.headers
    assert second.headers["If-None-Match"] == f'W/"etag-{SHA_B}"'
    assert github.fake.statuses() == [200, 304]
    assert github.fake.remaining == after_first
    assert github.cache.rate_limit is not None
    assert github.cache.rate_limit.remaining == after_first


async def test_github_etag_miss_refreshes_the_cache(github: GitHubAPI) -> None:
    assert await github.gh("u/r/HEAD").get_resolved_ref() == SHA_B
    github.fake.add_repo("u", "r", {"HEAD": SHA_C})
    assert await github.gh("u/r/HEAD").get_resolved_ref() == SHA_C
    assert await github.gh("u/r/HEAD").get_resolved_ref() == SHA_C
    assert github.fake.statuses() == [200, 200, 304]


async def test_github_missing_repo_and_ref(github: GitHubAPI) -> None:
    with pytest.raises(RefNotFound) as info:
        await github.gh("nobody/nothing/HEAD").get_resolved_ref()
    assert "gh:nobody/nothing/HEAD" in str(info.value)
    assert info.value.status_code == 404
    with pytest.raises(RefNotFound):
        await github.gh("u/r/no-such-branch").get_resolved_ref()
    assert github.fake.statuses() == [404, 422]


async def test_github_master_gets_a_tip(github: GitHubAPI) -> None:
    with pytest.raises(RefNotFound) as info:
        await github.gh("u/r/master").get_resolved_ref()
    assert '"master" to "main"' in str(info.value)
    assert "HEAD will always resolve" in str(info.value)


async def test_github_404_is_cached_briefly(github: GitHubAPI) -> None:
    now = [1000.0]
    github.cache.not_found = NegativeCache(ttl=60, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(RefNotFound):
            await github.gh("nobody/nothing/HEAD").get_resolved_ref()
    assert len(github.fake.requests) == 1
    now[0] += 61
    github.fake.add_repo("nobody", "nothing", {"HEAD": SHA_A})
    assert await github.gh("nobody/nothing/HEAD").get_resolved_ref() == SHA_A
    assert len(github.fake.requests) == 2


async def test_github_rate_limit_exhausted(github: GitHubAPI) -> None:
    github.fake.remaining = 0
    with pytest.raises(ProviderUnavailable) as info:
        await github.gh("u/r/HEAD").get_resolved_ref()
    assert str(info.value) == "GitHub rate limit exceeded. Try again in 60 minutes."
    assert info.value.user_message == str(info.value)
    assert info.value.status_code == 503


async def test_github_rate_limit_counts_down_from_reset(github: GitHubAPI) -> None:
    github.fake.remaining = 0
    github.fake.reset = int(time.time()) + 9 * 60 + 30
    with pytest.raises(ProviderUnavailable, match="Try again in 10 minutes"):
        await github.gh("u/r/HEAD").get_resolved_ref()


async def test_github_rate_limit_runs_out_mid_way(github: GitHubAPI) -> None:
    github.fake.remaining = 1
    await github.gh("u/r/HEAD").get_resolved_ref()
    with pytest.raises(ProviderUnavailable, match="GitHub rate limit exceeded"):
        await github.gh("u/r/feature/x").get_resolved_ref()
    assert github.fake.statuses() == [200, 403]


async def test_github_secondary_rate_limit(github: GitHubAPI) -> None:
    github.fake.secondary_retry_after = 90
    with pytest.raises(ProviderUnavailable) as info:
        await github.gh("u/r/HEAD").get_resolved_ref()
    assert str(info.value) == "GitHub rate limit exceeded. Try again in 2 minutes."


@pytest.mark.parametrize("status", [500, 502, 401])
async def test_github_errors_are_unavailable(github: GitHubAPI, status: int) -> None:
    github.fake.fail_with = status
    with pytest.raises(ProviderUnavailable) as info:
        await github.gh("u/r/HEAD").get_resolved_ref()
    assert "Server Error" not in info.value.user_message


async def test_github_unreachable_is_unavailable(session: aiohttp.ClientSession) -> None:
    provider = GitHubRepoProvider(
        "u/r/HEAD", api_base_url=f"http://127.0.0.1:{free_port()}", session=session
    )
    with pytest.raises(ProviderUnavailable) as info:
        await provider.get_resolved_ref()
    assert info.value.user_message == "Could not reach GitHub. Try again later."


async def test_github_token_from_argument_and_environment(
    github: GitHubAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = GitHubRepoProvider(
        "u/r/HEAD", api_base_url=github.url, session=github.session, access_token="t0k"
    )
    await provider.get_resolved_ref()
    assert github.fake.requests[-1].headers["Authorization"] == "token t0k"
    assert provider.git_credentials == "username=t0k\npassword=x-oauth-basic"

    monkeypatch.setenv("GITHUB_ACCESS_TOKEN", "from-env")
    provider = GitHubRepoProvider("u/r/feature/x", api_base_url=github.url, session=github.session)
    await provider.get_resolved_ref()
    assert github.fake.requests[-1].headers["Authorization"] == "token from-env"

    monkeypatch.delenv("GITHUB_ACCESS_TOKEN")
    provider = GitHubRepoProvider("u/r/v#1", api_base_url=github.url, session=github.session)
    await provider.get_resolved_ref()
    assert "Authorization" not in github.fake.requests[-1].headers
    assert provider.git_credentials == ""


async def test_github_oauth_app_credentials(github: GitHubAPI) -> None:
    provider = GitHubRepoProvider(
        "u/r/HEAD",
        api_base_url=github.url,
        session=github.session,
        client_id="app",
        client_secret="s3cret",
    )
    await provider.get_resolved_ref()
    assert github.fake.requests[-1].headers["Authorization"] == "Basic YXBwOnMzY3JldA=="
    assert provider.git_credentials == ""

    with_token = GitHubRepoProvider("u/r/HEAD", access_token="pat", client_id="app")
    assert with_token.git_credentials == "username=app\npassword=pat"


async def test_github_enterprise(aiohttp_server: AiohttpServer) -> None:
    fake = FakeGitHub(prefix="/api/v3")
    fake.add_repo("team", "project", {"HEAD": SHA_C})
    server = await aiohttp_server(fake.app())
    async with GitHubRepoProvider(
        "team/project/HEAD",
        hostname="github.example.com",
        api_base_url=str(server.make_url("/api/v3")),
        access_token="",
        outbound=LOOPBACK,
    ) as provider:
        assert await provider.get_resolved_ref() == SHA_C
        assert provider.repo_url == "https://github.example.com/team/project"
        assert await provider.get_resolved_ref_url() == (
            f"https://github.example.com/team/project/tree/{SHA_C}"
        )
    assert fake.requests[0].path == "/api/v3/repos/team/project/commits/HEAD"
    assert default_api_base_url("github.example.com") == "https://github.example.com/api/v3"
    assert default_api_base_url("github.com") == "https://api.github.com"


async def test_provider_closes_only_its_own_session(github: GitHubAPI) -> None:
    own = GitHubRepoProvider(
        "u/r/HEAD", api_base_url=github.url, access_token="", outbound=LOOPBACK
    )
    await own.get_resolved_ref()
    session = own._session
    assert session is not None
    await own.aclose()
    assert session.closed

    shared = github.gh("u/r/HEAD")
    await shared.get_resolved_ref()
    await shared.aclose()
    assert not github.session.closed


# -- Gist -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["", "/HEAD", "/master", "/main"])
async def test_gist_head_is_the_latest_revision(github: GitHubAPI, ref: str) -> None:
    provider = github.gist(f"someone/abc123{ref}")
    assert await provider.get_resolved_ref() == SHA_C
    assert await provider.get_resolved_spec() == f"someone/abc123/{SHA_C}"


async def test_gist_urls_and_slug(github: GitHubAPI) -> None:
    provider = github.gist(f"someone/abc123/{SHA_B}")
    assert await provider.get_resolved_ref() == SHA_B
    assert provider.repo_url == "https://gist.github.com/someone/abc123.git"
    assert await provider.get_resolved_ref_url() == (
        f"https://gist.github.com/someone/abc123/{SHA_B}"
    )
    assert provider.get_build_slug() == "abc123"


async def test_gist_unknown_revision_and_missing_gist(github: GitHubAPI) -> None:
    with pytest.raises(RefNotFound):
        await github.gist(f"someone/abc123/{SHA_A}").get_resolved_ref()
    with pytest.raises(RefNotFound):
        await github.gist("someone/fffff/HEAD").get_resolved_ref()


async def test_gist_secret_needs_permission(github: GitHubAPI) -> None:
    with pytest.raises(SpecError, match="secret Gist"):
        await github.gist("someone/secret1").get_resolved_ref()
    allowed = github.gist("someone/secret1", allow_secret_gist=True)
    assert await allowed.get_resolved_ref() == SHA_A


async def test_gist_etag_reuse(github: GitHubAPI) -> None:
    await github.gist("someone/abc123").get_resolved_ref()
    assert await github.gist(f"someone/abc123/{SHA_B}").get_resolved_ref() == SHA_B
    assert github.fake.statuses() == [200, 304]


# -- GitLab ---------------------------------------------------------------------------------


@pytest.fixture
async def gitlab(aiohttp_server: AiohttpServer) -> tuple[FakeGitLab, str]:
    fake = FakeGitLab()
    fake.projects["group/sub/project"] = {"HEAD": SHA_A, "feature/x": SHA_B}
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/api/v4"))


async def test_gitlab_resolves(
    gitlab: tuple[FakeGitLab, str], session: aiohttp.ClientSession
) -> None:
    fake, url = gitlab
    provider = GitLabRepoProvider(
        "group%2Fsub%2Fproject/feature%2Fx",
        hostname="gitlab.example.org",
        api_base_url=url,
        private_token="secret",
        session=session,
    )
    assert provider.namespace == "group/sub/project"
    assert provider.unresolved_ref == "feature/x"
    assert await provider.get_resolved_ref() == SHA_B
    assert await provider.get_resolved_spec() == f"group%2Fsub%2Fproject/{SHA_B}"
    assert provider.repo_url == "https://gitlab.example.org/group/sub/project.git"
    assert await provider.get_resolved_ref_url() == (
        f"https://gitlab.example.org/group/sub/project/tree/{SHA_B}"
    )
    assert provider.get_build_slug() == "group-sub-project"
    raw_path, headers = fake.requests[0]
    assert raw_path == "/api/v4/projects/group%2Fsub%2Fproject/repository/commits/feature%2Fx"
    assert headers["PRIVATE-TOKEN"] == "secret"
    assert provider.git_credentials == "username=oauth2\npassword=secret"


async def test_gitlab_build_slug_keeps_dashes_distinct() -> None:
    a = GitLabRepoProvider("a-b%2Fc/HEAD", access_token="", private_token="")
    b = GitLabRepoProvider("a%2Fb-c/HEAD", access_token="", private_token="")
    assert a.get_build_slug() != b.get_build_slug()


async def test_gitlab_access_token_and_default_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITLAB_ACCESS_TOKEN", "oauth")
    monkeypatch.delenv("GITLAB_PRIVATE_TOKEN", raising=False)
    provider = GitLabRepoProvider("g%2Fp/HEAD")
    assert provider.api_base_url == "https://gitlab.com/api/v4"
    assert provider.access_token == "oauth"
    assert provider.repo_url == "https://gitlab.com/g/p.git"


async def test_gitlab_missing_and_rate_limited(
    gitlab: tuple[FakeGitLab, str], session: aiohttp.ClientSession
) -> None:
    fake, url = gitlab
    missing = GitLabRepoProvider("group%2Fnope/HEAD", api_base_url=url, session=session)
    with pytest.raises(RefNotFound, match="gl:group%2Fnope/HEAD"):
        await missing.get_resolved_ref()
    fake.retry_after = 61
    limited = GitLabRepoProvider("group%2Fsub%2Fproject/HEAD", api_base_url=url, session=session)
    with pytest.raises(ProviderUnavailable) as info:
        await limited.get_resolved_ref()
    assert str(info.value) == "GitLab rate limit exceeded. Try again in 2 minutes."


# -- git ------------------------------------------------------------------------------------


@dataclass
class GitServer:
    url: str
    first: str
    second: str
    annotated_tag_object: str


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git("tag", "light", cwd=work)
    git("branch", "feature/main", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "second", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    git("clone", "-q", "--bare", str(work), str(base / "repo.git"), cwd=base)
    tag_object = git("rev-parse", "v1", cwd=work)
    with git_daemon(base) as url:
        yield GitServer(url, first, second, tag_object)


def git_provider(server_url: str, repo: str, ref: str) -> GitRepoProvider:
    escaped = f"{server_url}/{repo}".replace(":", "%3A").replace("/", "%2F")
    return GitRepoProvider(f"{escaped}/{ref}", outbound=LOOPBACK)


async def test_git_full_sha_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("git was run for a full sha")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_subprocess)
    provider = GitRepoProvider(f"https%3A%2F%2Fexample.org%2Frepo.git/{SHA_A.upper()}")
    assert await provider.get_resolved_ref() == SHA_A
    assert await provider.get_resolved_spec() == f"https%3A%2F%2Fexample.org%2Frepo.git/{SHA_A}"
    assert provider.repo_url == "https://example.org/repo.git"
    assert await provider.get_resolved_ref_url() == "https://example.org/repo.git"
    assert provider.get_build_slug() == "https://example.org/repo.git"


async def test_git_burst_of_one_link_runs_one_ls_remote(
    git_server: GitServer, tmp_path: Path
) -> None:
    """Ten requests for one branch at once share one ``git ls-remote``; within the TTL the
    next request runs none; after it, one again. Counted by a wrapper around the real git."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec git "$@"\n')
    wrapper.chmod(0o755)
    lookups = SharedLookups[dict[str, str]](ttl=0.5)
    escaped = f"{git_server.url}/repo.git".replace(":", "%3A").replace("/", "%2F")

    def provider() -> GitRepoProvider:
        return GitRepoProvider(
            f"{escaped}/main", git=str(wrapper), lookups=lookups, outbound=LOOPBACK
        )

    resolved = await asyncio.gather(*(provider().get_resolved_ref() for _ in range(10)))
    assert resolved == [git_server.second] * 10
    assert len(calls.read_text().splitlines()) == 1
    assert await provider().get_resolved_ref() == git_server.second
    assert len(calls.read_text().splitlines()) == 1
    await asyncio.sleep(0.6)
    assert await provider().get_resolved_ref() == git_server.second
    assert len(calls.read_text().splitlines()) == 2
    # Another ref of the same repository is its own lookup.
    other = GitRepoProvider(
        f"{escaped}/feature%2Fmain", git=str(wrapper), lookups=lookups, outbound=LOOPBACK
    )
    assert await other.get_resolved_ref() == git_server.first
    assert len(calls.read_text().splitlines()) == 3


def max_overlap(log: Path) -> int:
    """The most ``start`` lines without their ``end`` at any point of a wrapper's log."""
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    return peak


async def test_ls_remote_processes_are_capped_and_the_rest_wait_their_turn(
    git_server: GitServer,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a hostile client tries: launches of many distinct refs at once, each its own
    lookup. Through the registry as the app makes it (git.max_concurrent_ls_remote: 2), the
    real git found first on PATH is a wrapper that logs when each process starts and ends."""
    real_git = shutil.which("git")
    assert real_git is not None
    log = tmp_path / "processes"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(
        f'#!/bin/sh\necho start >> {log}\nsleep 0.3\n{real_git} "$@"\nstatus=$?\n'
        f"echo end >> {log}\nexit $status\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    registry = default_registry(session, git_max_concurrent_ls_remote=2)
    escaped = f"{git_server.url}/repo.git".replace(":", "%3A").replace("/", "%2F")
    refs = ["main", "v1", "light", "feature%2Fmain", "HEAD"]  # distinct: no shared lookup

    resolved = await asyncio.gather(
        *(registry.get("git", f"{escaped}/{ref}").get_resolved_ref() for ref in refs)
    )

    first, second = git_server.first, git_server.second
    assert resolved == [second, first, first, first, second]
    assert len(log.read_text().splitlines()) == 2 * len(refs)  # every lookup ran, in turn
    assert max_overlap(log) == 2


async def test_a_lookup_that_gets_no_turn_in_time_is_told_to_come_back(
    git_server: GitServer,
) -> None:
    slots = asyncio.Semaphore(1)
    await slots.acquire()  # every turn taken, by a slow server elsewhere
    escaped = f"{git_server.url}/repo.git".replace(":", "%3A").replace("/", "%2F")
    provider = GitRepoProvider(
        f"{escaped}/main", outbound=LOOPBACK, ls_remote_slots=slots, ls_remote_timeout=0.3
    )
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await provider.get_resolved_ref()
    assert time.monotonic() - started < 2
    assert info.value.status_code == 503
    assert info.value.user_message == (
        "This Binder is busy looking up other git repositories. Try again in a minute."
    )
    slots.release()  # a turn comes free: the next lookup runs
    assert await provider.get_resolved_ref() == git_server.second


async def test_shared_lookups_share_failures_only_while_they_run() -> None:
    lookups = SharedLookups[int](ttl=60)
    attempts = 0
    release = asyncio.Event()

    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        await release.wait()
        if attempts == 1:
            raise ProviderUnavailable("the git server did not answer")
        return 7

    waiting = [asyncio.create_task(lookups.get("k", flaky)) for _ in range(3)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # one client leaves: the lookup goes on for the others
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [type(r) for r in results[1:]] == [ProviderUnavailable, ProviderUnavailable]
    assert await lookups.get("k", flaky) == 7  # the failure was not kept
    assert await lookups.get("k", flaky) == 7 and attempts == 2  # the answer is


def test_git_scp_form_becomes_ssh() -> None:
    provider = GitRepoProvider("git%40github.com%3Auser%2Frepo.git/HEAD")
    assert provider.repo_url == "ssh://git@github.com/user/repo.git"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("HEAD", "second"),
        ("main", "second"),  # not refs/heads/feature/main, which ls-remote lists first
        ("feature/main", "first"),
        ("refs/heads/feature/main", "first"),
        ("v1", "first"),  # the commit, not the annotated tag object
        ("light", "first"),
    ],
)
async def test_git_resolves_through_ls_remote(
    git_server: GitServer, ref: str, expected: str
) -> None:
    provider = git_provider(git_server.url, "repo.git", ref)
    resolved = await provider.get_resolved_ref()
    assert resolved == getattr(git_server, expected)
    assert resolved != git_server.annotated_tag_object


async def test_git_missing_ref(git_server: GitServer) -> None:
    with pytest.raises(RefNotFound, match="Could not resolve ref"):
        await git_provider(git_server.url, "repo.git", "no-such-branch").get_resolved_ref()


async def test_git_short_sha_gets_a_hint(git_server: GitServer) -> None:
    with pytest.raises(RefNotFound, match="full 40-character sha"):
        await git_provider(git_server.url, "repo.git", git_server.first[:7]).get_resolved_ref()


async def test_git_missing_repository(git_server: GitServer) -> None:
    with pytest.raises(RefNotFound) as info:
        await git_provider(git_server.url, "missing.git", "HEAD").get_resolved_ref()
    message = str(info.value)
    assert "does not exist or is not public" in message
    assert "missing.git" in message


async def test_git_unreachable_server_is_unavailable() -> None:
    provider = git_provider(f"git://127.0.0.1:{free_port()}", "repo.git", "HEAD")
    with pytest.raises(ProviderUnavailable) as info:
        await provider.get_resolved_ref()
    assert "git server" in info.value.user_message


async def test_git_silent_server_times_out() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        provider = git_provider(f"git://127.0.0.1:{port}", "repo.git", "HEAD")
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="did not finish"):
            provider.ls_remote_timeout = 0.5
            await provider.get_resolved_ref()
        assert time.monotonic() - started < 5
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


def test_git_protocols_can_be_narrowed() -> None:
    with pytest.raises(SpecError, match="protocol must be one of https"):
        GitRepoProvider("git%3A%2F%2Fexample.org%2Fr/HEAD", allowed_protocols={"https"})
    with pytest.raises(ConfigError):
        GitRepoProvider("https%3A%2F%2Fexample.org%2Fr/HEAD", allowed_protocols={"file"})


# -- caches ---------------------------------------------------------------------------------


def test_etag_cache_is_lru_bounded() -> None:
    cache: EtagCache[str] = EtagCache(max_size=2)
    cache.set("a", "e1", "A")
    cache.set("b", "e2", "B")
    assert cache.get("a") is not None  # now most recent
    cache.set("c", "e3", "C")
    assert cache.get("b") is None
    assert len(cache) == 2


def test_negative_cache_expires() -> None:
    now = [0.0]
    cache = NegativeCache(max_size=2, ttl=10, clock=lambda: now[0])
    cache.add("x")
    assert "x" in cache
    now[0] = 10.0
    assert "x" not in cache
    cache.add("a")
    cache.add("b")
    cache.add("c")
    assert "a" not in cache and len(cache) == 2
