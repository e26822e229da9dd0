"""Build tokens: what the loading page issues and /build accepts or refuses."""

from __future__ import annotations

import logging

import jwt
import pytest

from swarmbinder.policy import buildtokens
from swarmbinder.policy.buildtokens import (
    BuildTokenExpired,
    BuildTokenInvalid,
    BuildTokenOriginMismatch,
    BuildTokens,
    build_audience,
    token_origin,
)

SECRET = "ab" * 32
AUD = "gh/binder-examples/requirements/HEAD"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_issued_token_has_binderhubs_claims() -> None:
    clock = Clock()
    tokens = BuildTokens(SECRET, expires_seconds=300, clock=clock)
    token = tokens.issue(AUD, "binder.example.org")
    # BinderHub decodes its tokens exactly like this, with the hex secret as bytes
    claims = jwt.decode(
        token,
        bytes.fromhex(SECRET),
        algorithms=["HS256"],
        audience=AUD,
        options={"verify_exp": False},
    )
    # BinderHub's three claims, plus a random id that tells a token's first use from a replay.
    token_id = claims.pop("jti")
    assert claims == {"exp": 1_700_000_300, "aud": AUD, "origin": "binder.example.org"}
    assert len(token_id) >= 16 and token_id != claims_of(tokens.issue(AUD, "x"))["jti"]
    assert tokens.verify(token, AUD, "binder.example.org").token_id == token_id


def claims_of(token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_valid_token_verifies() -> None:
    tokens = BuildTokens(SECRET)
    token = tokens.issue(AUD, "localhost:8585")
    claims = tokens.verify(token, AUD, "localhost:8585")
    assert claims.audience == AUD
    assert claims.origin == "localhost:8585"
    assert tokens.check(token, AUD, "localhost:8585") is True


def test_missing_token_is_not_an_error() -> None:
    tokens = BuildTokens(SECRET)
    assert tokens.check(None, AUD, "h") is False
    assert tokens.check("", AUD, "h") is False


def test_expired_token_is_refused_with_403() -> None:
    clock = Clock()
    tokens = BuildTokens(SECRET, expires_seconds=10, clock=clock)
    token = tokens.issue(AUD, "h")
    clock.now += 9
    tokens.verify(token, AUD, "h")
    clock.now += 1
    with pytest.raises(BuildTokenExpired) as info:
        tokens.verify(token, AUD, "h")
    assert info.value.status_code == 403
    assert "expired" in info.value.user_message


def test_token_for_another_repository_is_refused() -> None:
    tokens = BuildTokens(SECRET)
    token = tokens.issue(AUD, "h")
    with pytest.raises(BuildTokenInvalid, match="another repository"):
        tokens.verify(token, "gh/someone/else/HEAD", "h")


def test_token_signed_with_another_secret_is_refused() -> None:
    token = BuildTokens("cd" * 32).issue(AUD, "h")
    with pytest.raises(BuildTokenInvalid, match="bad signature") as info:
        BuildTokens(SECRET).verify(token, AUD, "h")
    assert info.value.status_code == 403


@pytest.mark.parametrize("garbage", ["not-a-token", "a.b.c", "\u00e9\u00e9.x.y", "x" * 5000])
def test_garbage_is_refused_not_crashed(garbage: str) -> None:
    with pytest.raises(BuildTokenInvalid):
        BuildTokens(SECRET).verify(garbage, AUD, "h")


def test_token_without_expiry_is_refused() -> None:
    token = jwt.encode({"aud": AUD, "origin": "h"}, bytes.fromhex(SECRET), algorithm="HS256")
    with pytest.raises(BuildTokenInvalid, match="'exp'"):
        BuildTokens(SECRET).verify(token, AUD, "h")


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode({"exp": 2**40, "aud": AUD, "origin": "h"}, None, algorithm="none")
    with pytest.raises(BuildTokenInvalid):
        BuildTokens(SECRET).verify(token, AUD, "h")


def test_origin_mismatch_is_refused_when_checked() -> None:
    tokens = BuildTokens(SECRET, check_origin=True)
    token = tokens.issue(AUD, "binder.example.org")
    with pytest.raises(BuildTokenOriginMismatch) as info:
        tokens.verify(token, AUD, "evil.example.com")
    assert info.value.status_code == 403


def test_origin_mismatch_is_accepted_when_not_checked() -> None:
    tokens = BuildTokens(SECRET, check_origin=False)
    token = tokens.issue(AUD, "binder.example.org")
    claims = tokens.verify(token, AUD, "evil.example.com")
    assert claims.origin == "binder.example.org"


def test_random_secret_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    buildtokens._random_secret_warned = False
    with caplog.at_level(logging.WARNING, logger="swarmbinder.policy.buildtokens"):
        first = BuildTokens(None)
        second = BuildTokens(None)
    warnings = [r for r in caplog.records if "build_token_secret" in r.getMessage()]
    assert len(warnings) == 1
    # each process (here: instance) draws its own secret, so tokens do not cross over
    token = first.issue(AUD, "h")
    assert first.check(token, AUD, "h")
    with pytest.raises(BuildTokenInvalid):
        second.verify(token, AUD, "h")


def test_short_secret_works_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="swarmbinder.policy.buildtokens"):
        tokens = BuildTokens("abcd")
    assert any("shorter" in r.getMessage() for r in caplog.records)
    # the same short secret on another replica accepts the token
    assert BuildTokens("abcd").check(tokens.issue(AUD, "h"), AUD, "h")


def test_secret_never_appears_in_errors() -> None:
    token = BuildTokens("cd" * 32).issue(AUD, "h")
    with pytest.raises(BuildTokenInvalid) as info:
        BuildTokens(SECRET).verify(token, AUD, "h")
    assert SECRET not in str(info.value) and SECRET not in info.value.user_message


def test_token_origin_prefers_origin_header() -> None:
    assert token_origin({"Host": "a:1", "Origin": "https://b.example:8443"}) == "b.example:8443"
    assert token_origin({"Host": "a:1"}) == "a:1"
    assert token_origin({}) == ""
    # an opaque origin must not turn into the empty string a missing Host gives
    assert token_origin({"Origin": "null"}) == "null"


def test_build_audience_keeps_escapes_and_drops_trailing_slash() -> None:
    assert build_audience("gl", "group%2Fproject/main/") == "gl/group%2Fproject/main"
