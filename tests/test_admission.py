"""Admission's order and exemptions, without HTTP."""

from __future__ import annotations

import pytest

from swarmbinder.policy.admission import Admission
from swarmbinder.policy.ratelimit import RateLimiter, RateLimitExceeded


def make_admission(limit: int = 1) -> Admission:
    return Admission(
        client_ip=lambda peer, headers: peer,
        check_network=lambda ip: None,
        rate_limit=RateLimiter(limit, 3600).check,
    )


async def test_anonymous_requests_are_rate_limited() -> None:
    admission = make_admission()
    first = await admission.admit(peer="10.0.0.1", headers={}, path="gh/a/b/c", build_token=None)
    assert first.rate_limit is not None and first.rate_limit.remaining == 0
    with pytest.raises(RateLimitExceeded):
        await admission.admit(peer="10.0.0.1", headers={}, path="gh/a/b/c", build_token=None)


async def test_an_operator_is_not_rate_limited() -> None:
    admission = make_admission()
    for _ in range(3):
        admitted = await admission.admit(
            peer="10.0.0.1", headers={}, path="gh/a/b/c", build_token=None, operator=True
        )
        assert admitted.rate_limit is None


async def test_ipv6_clients_are_counted_per_64() -> None:
    """A host that takes a new address from its /64 for each request is one client."""
    admission = make_admission(limit=2)
    for peer in ("2001:db8:a:b::1", "2001:db8:a:b::2"):
        await admission.admit(peer=peer, headers={}, path="gh/a/b/c", build_token=None)
    with pytest.raises(RateLimitExceeded):
        await admission.admit(
            peer="2001:db8:a:b:1:2:3:4", headers={}, path="gh/a/b/c", build_token=None
        )
    other = await admission.admit(
        peer="2001:db8:a:c::1", headers={}, path="gh/a/b/c", build_token=None
    )
    assert other.rate_limit is not None and other.rate_limit.remaining == 1
