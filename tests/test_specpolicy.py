from __future__ import annotations

from typing import Any

import pytest

from swarmbinder.errors import ConfigError, SpecBanned
from swarmbinder.policy.canonical import RepoIdentity
from swarmbinder.policy.specpolicy import SpecPolicy, policy_for


def test_empty_policy_allows_everything() -> None:
    policy = SpecPolicy()
    assert not policy.is_banned("anyone/anything/HEAD")
    policy.check("anyone/anything/HEAD")


def test_banned_specs_match_from_the_start_ignoring_case() -> None:
    policy = SpecPolicy.from_config(banned_specs=["^ines/spacy-binder.*", "evil/"])
    assert policy.is_banned("ines/spacy-binder/HEAD")
    assert policy.is_banned("INES/Spacy-Binder/main")
    assert policy.is_banned("Evil/repo/HEAD")
    # re.match, as BinderHub: anchored at the start only
    assert not policy.is_banned("not-evil/repo/HEAD")
    assert not policy.is_banned("someone/evil/HEAD")
    assert policy.is_banned("evil/").pattern == "evil/"


def test_pattern_without_end_anchor_matches_longer_specs() -> None:
    policy = SpecPolicy.from_config(banned_specs=["user/repo"])
    assert policy.is_banned("user/repo/HEAD")
    assert policy.is_banned("user/repository/HEAD")


def test_ban_reason_reaches_the_error() -> None:
    policy = SpecPolicy.from_config(
        banned_specs=[{"pattern": "^crypto/", "reason": "Mining is not allowed."}]
    )
    decision = policy.is_banned("crypto/miner/HEAD")
    assert decision.banned and decision.reason == "Mining is not allowed."
    with pytest.raises(SpecBanned) as info:
        policy.check("crypto/miner/HEAD")
    assert info.value.reason == "Mining is not allowed."
    assert "crypto/miner/HEAD" in info.value.user_message
    assert "Mining is not allowed." in info.value.user_message


def test_allowed_specs_ban_everything_else() -> None:
    policy = SpecPolicy.from_config(allowed_specs=["^our-org/", "^friend/one/"])
    assert not policy.is_banned("our-org/x/HEAD")
    assert not policy.is_banned("Our-Org/y/main")
    assert not policy.is_banned("friend/one/HEAD")
    decision = policy.is_banned("friend/two/HEAD")
    assert decision.banned and "allowed" in decision.reason and decision.pattern is None


def test_banned_beats_allowed() -> None:
    policy = SpecPolicy.from_config(allowed_specs=["^our-org/"], banned_specs=["^our-org/bad"])
    assert policy.is_banned("our-org/bad/HEAD")
    assert not policy.is_banned("our-org/good/HEAD")


def test_quota_default_and_higher() -> None:
    policy = SpecPolicy.from_config(high_quota_specs=["^jupyterlab/"])
    assert policy.quota_for("someone/repo/HEAD", 100, 200) == 100
    assert policy.quota_for("JupyterLab/jupyterlab-demo/HEAD", 100, 200) == 200
    assert policy.has_higher_quota("jupyterlab/x/HEAD")
    assert not policy.has_higher_quota("x/jupyterlab/HEAD")


def test_spec_config_overrides_in_order() -> None:
    policy = SpecPolicy.from_config(
        high_quota_specs=["^big/"],
        spec_config=[
            {"pattern": "^big/", "config": {"quota": 999}},
            {"pattern": "^big/small", "config": {"quota": 3, "note": "tiny"}},
            {"pattern": "^other/", "config": {"note": "no quota here"}},
        ],
    )
    assert policy.quota_for("big/repo/HEAD", 10, 20) == 999
    assert policy.quota_for("big/small-repo/HEAD", 10, 20) == 3
    assert policy.config_for("big/small-repo/HEAD") == {"quota": 3, "note": "tiny"}
    assert policy.quota_for("other/repo/HEAD", 10, 20) == 10
    assert policy.quota_for("BIG/SMALL/HEAD", 10, 20) == 3
    assert policy.config_for("nobody/x/HEAD") == {}


def test_zero_quota_from_spec_config_means_unlimited_and_is_kept() -> None:
    policy = SpecPolicy.from_config(spec_config=[{"pattern": "^vip/", "config": {"quota": 0}}])
    assert policy.quota_for("vip/repo/HEAD", 10, 20) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"banned_specs": ["("]},
        {"banned_specs": [42]},
        {"banned_specs": [{"pattern": "x", "why": "typo"}]},
        {"banned_specs": [{"pattern": "x", "reason": 1}]},
        {"allowed_specs": ["[a-"]},
        {"high_quota_specs": [None]},
        {"spec_config": ["^x"]},
        {"spec_config": [{"pattern": "^x"}]},
        {"spec_config": [{"pattern": "^x", "config": {"quota": -1}}]},
        {"spec_config": [{"pattern": "^x", "config": {"quota": "5"}}]},
        {"spec_config": [{"pattern": "^x", "config": {"quota": True}}]},
        {"spec_config": [{"pattern": 1, "config": {}}]},
        {"spec_config": [{"pattern": "^x", "config": {}, "extra": 1}]},
    ],
)
def test_malformed_config_is_refused_with_the_option_named(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        SpecPolicy.from_config(**kwargs)
    assert info.value.option == next(iter(kwargs))


def test_policy_is_immutable_and_comparable() -> None:
    a = SpecPolicy.from_config(banned_specs=["^x/"])
    b = SpecPolicy.from_config(banned_specs=["^x/"])
    assert a == b
    with pytest.raises(AttributeError):
        a.banned_specs = ()  # type: ignore[misc]


def test_policy_for_provider() -> None:
    gh = SpecPolicy.from_config(banned_specs=["^x/"])
    assert policy_for({"gh": gh}, "gh") is gh
    assert not policy_for({"gh": gh}, "gl").is_banned("x/y/HEAD")


def test_a_providers_own_allowed_specs_hold_its_launches_only() -> None:
    """BinderHub's GitHubRepoProvider.allowed_specs lets GitLab and git launches through."""
    policy = SpecPolicy.from_config(
        allowed_specs=[{"pattern": "^gh/our-org/", "provider": "gh"}, "^friend"]
    )
    ours = RepoIdentity("gh", "our-org/x/HEAD", "https://github.com/our-org/x")
    theirs = RepoIdentity("gh", "someone/x/HEAD", "https://github.com/someone/x")
    friend = RepoIdentity("gh", "friend/x/HEAD", "https://github.com/friend/x")
    gitlab = RepoIdentity("gl", "someone%2Fx/HEAD", "https://gitlab.com/someone/x")
    gitlab_friend = RepoIdentity("gl", "friend%2Fx/HEAD", "https://gitlab.com/friend/x")
    assert not policy.is_banned(ours)
    assert not policy.is_banned(friend)  # a plain rule holds every provider
    assert policy.is_banned(theirs).reason == "It is not on the list of repositories allowed here."
    # gl has no rule of its own: only the plain ones hold it
    assert policy.is_banned(gitlab)
    assert not policy.is_banned(gitlab_friend)
    only_github = SpecPolicy.from_config(allowed_specs=[{"pattern": "^gh/a/", "provider": "gh"}])
    assert not only_github.is_banned(gitlab)
    assert only_github.is_banned(theirs)
    # a bare spec (provider unknown) is held to every rule
    assert only_github.is_banned("gl/someone/x/HEAD")


def test_a_providers_allowed_specs_item_is_checked() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        SpecPolicy.from_config(allowed_specs=[{"pattern": "^a/", "provider": "gh", "x": 1}])
    with pytest.raises(ConfigError, match="provider must be a string"):
        SpecPolicy.from_config(allowed_specs=[{"pattern": "^a/", "provider": 3}])
