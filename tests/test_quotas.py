from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pg_support import open_store_at

from swarmbinder.errors import QuotaExceeded
from swarmbinder.policy.canonical import RepoIdentity
from swarmbinder.policy.quotas import InvalidQuota, Quotas, RepoQuota, image_without_tag
from swarmbinder.policy.specpolicy import SpecPolicy
from swarmbinder.store import Store

REPO = "https://github.com/org/repo"
IMAGE = "registry:5000/binder-org-repo-abc:1111"
SPEC = "org/repo/HEAD"


@dataclass(frozen=True)
class Server:
    repo_url: str
    image: str


def servers(n: int, repo_url: str = REPO, image: str = IMAGE) -> list[Server]:
    return [Server(repo_url, image) for _ in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock, store_where: str) -> AsyncIterator[Store]:
    """Quota overrides in a store: SQLite, and a real PostgreSQL database."""
    async with await open_store_at(store_where, clock) as s:
        yield s


def test_no_quotas_means_no_limit() -> None:
    check = Quotas().check(SPEC, REPO, IMAGE, servers(500))
    assert (check.total, check.matching, check.repo_quota, check.pod_quota) == (500, 500, 0, None)


def test_pod_quota_with_binderhubs_message() -> None:
    quotas = Quotas(pod_quota=3)
    quotas.check(SPEC, REPO, IMAGE, servers(2, "https://other", "other:1"))
    with pytest.raises(QuotaExceeded) as info:
        quotas.check(SPEC, REPO, IMAGE, servers(3, "https://other", "other:1"))
    error = info.value
    assert error.user_message == "Too many users on this BinderHub! Try again soon."
    assert (error.quota, error.used, error.scope, error.status_code) == (3, 3, "pod_quota", 429)


def test_pod_quota_zero_accepts_nobody() -> None:
    with pytest.raises(QuotaExceeded, match="Too many users on this BinderHub"):
        Quotas(pod_quota=0).check(SPEC, REPO, IMAGE, [])


def test_pod_quota_is_checked_before_the_repo_quota() -> None:
    with pytest.raises(QuotaExceeded) as info:
        Quotas(pod_quota=2, per_repo_quota=1).check(SPEC, REPO, IMAGE, servers(2))
    assert info.value.scope == "pod_quota"


def test_repo_quota_counts_by_repo_url_or_image_without_tag() -> None:
    quotas = Quotas(per_repo_quota=3)
    running = [
        Server(REPO, "registry:5000/binder-org-repo-abc:2222"),  # another ref, same image name
        Server("", "registry:5000/binder-org-repo-abc:3333"),  # no label: the image tells
        Server(REPO, "somewhere:else"),  # label only
        Server("https://github.com/org/other", "registry:5000/binder-org-other-def:1111"),
    ]
    with pytest.raises(QuotaExceeded) as info:
        quotas.check(SPEC, REPO, IMAGE, running)
    error = info.value
    assert error.user_message == f"Too many users running {REPO}! Try again soon."
    assert (error.quota, error.used, error.scope) == (3, 3, "repo_quota")
    assert quotas.check(SPEC, REPO, IMAGE, running[1:]).matching == 2


def test_higher_quota_and_spec_config() -> None:
    policy = SpecPolicy.from_config(
        high_quota_specs=["^popular/.*"],
        spec_config=[{"pattern": "^popular/special/.*", "config": {"quota": 5}}],
    )
    quotas = Quotas(per_repo_quota=1, per_repo_quota_higher=3, policy=policy)
    assert quotas.quota_for("org/repo/HEAD").quota == 1
    assert quotas.quota_for("Popular/repo/HEAD").quota == 3
    assert quotas.quota_for("popular/repo/HEAD").source == "high_quota_specs"
    special = quotas.quota_for("popular/special/HEAD")
    assert (special.quota, special.source) == (5, "spec_config")
    quotas.check("popular/repo/HEAD", REPO, IMAGE, servers(2))
    with pytest.raises(QuotaExceeded):
        quotas.check("popular/repo/HEAD", REPO, IMAGE, servers(3))


def test_spec_config_quota_zero_lifts_the_cap() -> None:
    policy = SpecPolicy.from_config(
        spec_config=[{"pattern": "^free/.*", "config": {"quota": 0}}],
    )
    quotas = Quotas(per_repo_quota=1, policy=policy)
    quotas.check("free/repo/HEAD", REPO, IMAGE, servers(10))


async def test_admin_overrides_apply_at_once_persist_and_expire(store: Store, clock: Clock) -> None:
    quotas = Quotas(pod_quota=100, per_repo_quota=10, store=store, clock=clock)
    await quotas.load()
    await quotas.set_repo_quota("org/repo", 1, "alice", expires_at=clock.now + 60)
    with pytest.raises(QuotaExceeded, match=f"Too many users running {REPO}"):
        quotas.check(SPEC, REPO, IMAGE, servers(1))
    assert quotas.quota_for("ORG/repo/main").source == "admin"
    assert quotas.quota_for("org/other/HEAD").quota == 10

    await quotas.set_pod_quota(0, "alice")
    assert quotas.pod_quota == 0
    with pytest.raises(QuotaExceeded, match="on this BinderHub"):
        quotas.check("org/other/HEAD", "https://x", "x:1", [])

    # A restart sees the same overrides.
    restarted = Quotas(pod_quota=100, per_repo_quota=10, store=store, clock=clock)
    await restarted.load()
    assert restarted.pod_quota == 0
    assert restarted.quota_for(SPEC).quota == 1

    assert await quotas.clear_pod_quota("bob")
    assert quotas.pod_quota == 100
    assert not await quotas.clear_pod_quota("bob")

    # The repo override ends at its expiry, even before the store is read again...
    clock.now += 61
    assert quotas.quota_for(SPEC).quota == 10
    quotas.check(SPEC, REPO, IMAGE, servers(5))
    # ...and reading it removes it there, with an audit row.
    await quotas.load()
    assert await store.list_quotas(clock.now) == []
    assert (await store.audit(1))[0].action == "quota.expire"


async def test_the_latest_matching_override_wins(store: Store, clock: Clock) -> None:
    quotas = Quotas(store=store, clock=clock)
    await quotas.set_repo_quota("org/.*", 5, "alice")
    clock.now += 1
    await quotas.set_repo_quota("org/repo/.*", 2, "alice")
    assert quotas.quota_for(SPEC).quota == 2
    clock.now += 1
    await quotas.set_repo_quota("org/.*", 7, "alice")
    assert quotas.quota_for(SPEC).quota == 7
    assert await quotas.clear_repo_quota("org/.*", "bob")
    assert quotas.quota_for(SPEC).quota == 2


@pytest.mark.parametrize(
    ("pattern", "quota", "problem"),
    [
        ("org/(", 1, "not a valid regular expression"),
        ("org/repo", -1, "0 or more"),
        ("org/repo", True, "whole number"),
        ("", 1, "empty"),
        ("a\nb", 1, "line breaks"),
    ],
)
async def test_invalid_overrides_are_400_and_never_stored(
    store: Store, pattern: str, quota: int, problem: str
) -> None:
    quotas = Quotas(store=store)
    with pytest.raises(InvalidQuota, match=problem) as info:
        await quotas.set_repo_quota(pattern, quota, "alice")
    assert info.value.status_code == 400
    assert await store.list_quotas(0) == []


async def test_an_expiry_in_the_past_is_refused(store: Store, clock: Clock) -> None:
    quotas = Quotas(store=store, clock=clock)
    with pytest.raises(InvalidQuota, match="in the past"):
        await quotas.set_pod_quota(3, "alice", expires_at=clock.now - 1)


async def test_snapshot_for_the_admin_console(store: Store, clock: Clock) -> None:
    quotas = Quotas(pod_quota=50, per_repo_quota=4, store=store, clock=clock)
    await quotas.set_repo_quota("org/repo", 9, "alice")
    running = servers(3) + servers(1, "https://github.com/a/b", "b:1") + servers(2, "https://c")
    snap = quotas.snapshot(running, specs={REPO: SPEC, "https://github.com/a/b": "a/b/HEAD"})
    assert (snap.total, snap.pod_quota, snap.pod_quota_source) == (6, 50, "config")
    assert [(r.repo_url, r.running) for r in snap.repos] == [
        (REPO, 3),
        ("https://c", 2),
        ("https://github.com/a/b", 1),
    ]
    first, unknown, other = snap.repos
    assert first.quota is not None and (first.quota.quota, first.quota.source) == (9, "admin")
    assert unknown.quota is None
    assert other.quota is not None and other.quota.quota == 4
    assert [o.key for o in snap.overrides] == ["org/repo"]


def test_image_without_tag() -> None:
    assert image_without_tag("registry:5000/org/name:tag") == "registry:5000/org/name"
    assert image_without_tag("registry:5000/org/name") == "registry:5000/org/name"
    assert image_without_tag("name@sha256:abc") == "name"


@dataclass(frozen=True)
class Build:
    provider: str
    spec: str
    repo_url: str
    image: str


@dataclass(frozen=True)
class Resolved:
    build: Build


RESOLVED = Resolved(Build("gh", SPEC, REPO, IMAGE))


async def test_gate_lists_servers_only_when_a_quota_applies() -> None:
    listed = 0

    async def unavailable() -> list[Server]:
        nonlocal listed
        listed += 1
        raise ConnectionError("the swarm manager does not answer")

    # No quota at all: the launch goes on even though the listing would fail.
    await Quotas().gate(unavailable)(RESOLVED)
    assert listed == 0
    with pytest.raises(ConnectionError):
        await Quotas(per_repo_quota=2).gate(unavailable)(RESOLVED)
    assert listed == 1


async def test_gate_reports_each_refusal_then_raises() -> None:
    refused: list[tuple[str, str]] = []

    async def running() -> list[Server]:
        return servers(2)

    def on_refused(build: object, refusal: QuotaExceeded) -> None:
        assert isinstance(build, Build)
        refused.append((build.repo_url, refusal.scope))

    gate = Quotas(per_repo_quota=2).gate(running, on_refused=on_refused)
    with pytest.raises(QuotaExceeded, match="Too many users running"):
        await gate(RESOLVED)
    assert refused == [(REPO, "repo_quota")]
    await Quotas(per_repo_quota=3).gate(running, on_refused=on_refused)(RESOLVED)
    assert len(refused) == 1


async def test_every_spelling_of_a_repository_counts_against_its_quota() -> None:
    respelt = ["HTTPS://GitHub.COM./org/repo.git/", "https://github.com:443/org/%72epo"]
    running = [Server(url, f"registry:5000/other-{n}:1") for n, url in enumerate(respelt)]

    async def listing() -> list[Server]:
        return running

    gate = Quotas(per_repo_quota=2).gate(listing)
    other_spelling = Resolved(Build("git", "x/HEAD", "https://github.com/Org/Repo", "i:1"))
    with pytest.raises(QuotaExceeded, match="Too many users running"):
        await gate(other_spelling)
    await Quotas(per_repo_quota=3).gate(listing)(other_spelling)


async def test_quota_patterns_match_every_form_of_a_launch(store: Store, clock: Clock) -> None:
    quotas = Quotas(per_repo_quota=10, store=store, clock=clock)
    await quotas.set_repo_quota("^gh/org/", 1, "alice")
    await quotas.set_repo_quota(r"https://github\.com/big/repo$", 50, "alice")
    # With the provider prefix, as the console's form suggests; a bare spec as BinderHub's.
    assert quotas.quota_for(RepoIdentity("gh", SPEC, REPO)).quota == 1
    assert quotas.quota_for(SPEC).quota == 10
    # The canonical URL, however the launch spelt it.
    respelt = RepoIdentity("git", "y/HEAD", "HTTPS://GitHub.com:443/big/repo.git")
    assert quotas.quota_for(respelt) == RepoQuota(50, "admin", r"https://github\.com/big/repo$")

    async def none() -> list[Server]:
        return servers(1)

    with pytest.raises(QuotaExceeded):
        await quotas.gate(none)(RESOLVED)
