"""The canonical repository URL and the forms a spec pattern is matched against."""

from __future__ import annotations

import itertools
import random

import pytest

from swarmbinder.errors import SpecBanned
from swarmbinder.policy.canonical import (
    RepoIdentity,
    canonical_repo_url,
    normalise_escapes,
    remove_dot_segments,
    same_repository,
    spec_of,
    subjects_of,
)
from swarmbinder.policy.specpolicy import SpecPolicy

REPO = "https://github.com/org/repo"


@pytest.mark.parametrize(
    "spelling",
    [
        "https://github.com/org/repo",
        "HTTPS://GitHub.COM/org/repo",
        "https://github.com./org/repo",
        "https://github.com:443/org/repo",
        "https://github.com/org/repo/",
        "https://github.com/org/repo.git",
        "https://github.com/org/repo.git/",
        "https://github.com/org/repo/.git",
        "https://github.com/org/%72epo",
        "https://github.com/%6F%72%67/repo",
        "https://github.com/org/./repo",
        "https://github.com/x/../org/repo",
        "https://github.com/org/x/%2e%2E/repo",
        "https://github.com//org//repo",
        "https://user:secret@github.com/org/repo",
        "https://github.com/org/repo?tab=readme#top",
        "  https://github.com/org/repo  ",
        "HTTPS://GitHub.COM.:443/org/./x/../%72epo.git/",
    ],
)
def test_every_spelling_has_one_canonical_form(spelling: str) -> None:
    assert canonical_repo_url(spelling) == REPO


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        # A port that is not the scheme's default is part of the address.
        ("https://git.example.org:8443/r.git", "https://git.example.org:8443/r"),
        ("http://git.example.org:80/r", "http://git.example.org/r"),
        ("http://git.example.org:443/r", "http://git.example.org:443/r"),
        ("git://git.example.org:9418/r.git", "git://git.example.org/r"),
        ("ssh://git@git.example.org:22/r.git", "ssh://git.example.org/r"),
        # git's scp-like form is an ssh URL
        ("git@GitHub.com:org/repo.git", "ssh://github.com/org/repo"),
        # reserved characters stay escaped, with upper-case hex
        ("https://h.example/a%2fb/c%3a", "https://h.example/a%2Fb/c%3A"),
        # the path keeps its case
        ("https://h.example/Org/Repo", "https://h.example/Org/Repo"),
        # '..' never climbs above the host
        ("https://h.example/../../r", "https://h.example/r"),
        ("https://[2001:DB8::1]:443/r", "https://[2001:db8::1]/r"),
        ("https://[2001:db8::1]:8443/r", "https://[2001:db8::1]:8443/r"),
        ("https://h.example", "https://h.example"),
        ("https://h.example/", "https://h.example"),
    ],
)
def test_canonical_forms(url: str, canonical: str) -> None:
    assert canonical_repo_url(url) == canonical


@pytest.mark.parametrize(
    "text", ["10.5281/zenodo.3242074", "", "not a url", "doi:10.1/x", "https://", "file:///x"]
)
def test_what_is_not_a_url_with_a_host_is_left_alone(text: str) -> None:
    assert canonical_repo_url(text) == text


def test_escapes_and_dot_segments() -> None:
    assert normalise_escapes("%41%7e%2F%2f%20") == "A~%2F%2F%20"
    assert remove_dot_segments("/a/./b/../c/") == "/a/c"
    assert remove_dot_segments("/..") == ""
    assert remove_dot_segments("") == ""


def test_same_repository_ignores_the_case_of_the_path() -> None:
    assert same_repository("https://github.com/Org/Repo.git", "HTTPS://github.com./org/repo/")
    assert not same_repository("https://github.com/org/repo", "https://github.com/org/repo2")
    assert not same_repository("https://a.example/r", "https://b.example/r")


def _spellings(rng: random.Random) -> str:
    """A random, possibly odd spelling of a random URL."""
    scheme = rng.choice(["https", "HTTP", "git", "Ssh", "git+ssh"])
    host = rng.choice(["GitHub.com", "h.example.", "[::1]", "x.y.z", "%67h.example"])
    port = rng.choice(["", ":443", ":80", ":22", ":9418", ":8080", ":x"])
    user = rng.choice(["", "git@", "u:p@"])
    parts = [
        rng.choice(["a", "B", ".", "..", "", "%2e", "%2E%2e", "%7e", "%2f", "r.git", ".git", "c~"])
        for _ in range(rng.randrange(0, 6))
    ]
    tail = rng.choice(["", "/", "?q=1", "#f", ".git", ".git/", "//"])
    return f"{scheme}://{user}{host}{port}/{'/'.join(parts)}{tail}"


def test_canonicalisation_is_idempotent() -> None:
    # A fixed seed: the same thousands of odd spellings every run.
    rng = random.Random(14)
    corpus = [_spellings(rng) for _ in range(3000)]
    corpus += ["git@h.example:a/b.git", "10.1/x", "", "https://", "nonsense"]
    for url in corpus:
        once = canonical_repo_url(url)
        assert canonical_repo_url(once) == once, url
        assert same_repository(url, once), url


def test_canonical_urls_have_no_dot_segments_or_trailing_suffixes() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        canonical = canonical_repo_url(_spellings(rng))
        path = canonical.split("://", 1)[1].partition("/")[2]
        segments = path.split("/") if path else []
        assert not any(s in {".", ".."} for s in segments), canonical
        assert not canonical.endswith(("/", ".git")), canonical
        assert canonical == canonical.strip()


def test_an_identity_is_matched_as_spec_prefixed_spec_and_canonical_url() -> None:
    identity = RepoIdentity("git", "https%3A%2F%2FGitHub.COM.%2Forg%2Frepo.git/HEAD", REPO + "/")
    assert identity.subjects() == (
        "https%3A%2F%2FGitHub.COM.%2Forg%2Frepo.git/HEAD",
        "git/https%3A%2F%2FGitHub.COM.%2Forg%2Frepo.git/HEAD",
        REPO,
    )
    assert RepoIdentity("gh", "org/repo/HEAD").subjects() == ("org/repo/HEAD", "gh/org/repo/HEAD")
    assert subjects_of("org/repo/HEAD") == ("org/repo/HEAD",)
    assert spec_of(identity) == identity.spec


@pytest.mark.parametrize(
    "pattern",
    [
        "org/repo",  # BinderHub's form: after the prefix
        "^gh/org/.*",  # with the prefix, as the console suggests
        r"https://github\.com/org/repo$",  # the canonical repository URL
        ".*repo",
    ],
)
def test_a_ban_in_any_form_matches(pattern: str) -> None:
    policy = SpecPolicy.from_config(banned_specs=[{"pattern": pattern, "reason": "r"}])
    identity = RepoIdentity("gh", "Org/Repo/HEAD", "https://github.com/Org/Repo")
    with pytest.raises(SpecBanned) as info:
        policy.check(identity)
    # The message names the spec as the user wrote it, in BinderHub's words.
    assert info.value.user_message == (
        "Sorry, Org/Repo/HEAD is not allowed to launch. Please contact admins for more info! (r)"
    )
    policy.check(RepoIdentity("gh", "other/thing/HEAD", "https://github.com/other/thing"))


def test_a_prefixed_ban_used_to_miss_and_now_matches() -> None:
    # The measured case: a ban written as the console's form suggests.
    policy = SpecPolicy.from_config(banned_specs=["^git/.*minimal.*"])
    spec = "https%3A%2F%2Fgit.example.org%2Fminimal.git/HEAD"
    assert not policy.is_banned(spec)  # a bare spec is matched as BinderHub does
    assert policy.is_banned(RepoIdentity("git", spec, "https://git.example.org/minimal.git"))


def test_allowed_specs_quota_and_spec_config_match_every_form() -> None:
    policy = SpecPolicy.from_config(
        allowed_specs=[r"https://github\.com/allowed/"],
        high_quota_specs=["^gh/popular/"],
        spec_config=[{"pattern": r"https://github\.com/popular/big$", "config": {"quota": 7}}],
    )
    allowed = RepoIdentity("git", "x/HEAD", "HTTPS://GitHub.com:443/allowed/r.git")
    assert not policy.is_banned(allowed)
    assert policy.is_banned(RepoIdentity("gh", "allowedx/r/HEAD", "https://github.com/other/r"))
    big = RepoIdentity("gh", "popular/big/HEAD", "https://github.com/popular/big")
    small = RepoIdentity("gh", "popular/small/HEAD", "https://github.com/popular/small")
    assert policy.quota_for(big, 1, 5) == 7
    assert policy.quota_for(small, 1, 5) == 5
    assert policy.quota_for("popular/small/HEAD", 1, 5) == 1


def test_every_combination_of_spellings_is_one_repository() -> None:
    schemes = ["https", "HTTPS"]
    hosts = ["github.com", "GitHub.COM.", "github.com:443", "u@github.com"]
    paths = ["/org/repo", "/org/%72epo", "/org/./repo", "/a/../org/repo", "/%6Frg/repo"]
    tails = ["", "/", ".git", ".git/"]
    for scheme, host, path, tail in itertools.product(schemes, hosts, paths, tails):
        assert canonical_repo_url(f"{scheme}://{host}{path}{tail}") == REPO
