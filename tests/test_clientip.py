from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from swarmbinder.policy.clientip import (
    ClientIP,
    InvalidNetwork,
    limit_key,
    parse_ip,
    parse_network,
)
from swarmbinder.policy.ratelimit import RateLimiter, RateLimitExceeded

PROXIES = ("10.0.0.0/8", "fd00::/8")


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    client_ip = ClientIP()
    assert client_ip("203.0.113.7", {"X-Forwarded-For": "198.51.100.1"}) == "203.0.113.7"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    client_ip = ClientIP(PROXIES)
    assert client_ip("203.0.113.7", {"X-Forwarded-For": "10.1.2.3"}) == "203.0.113.7"


def test_the_hop_before_a_trusted_proxy_is_the_client() -> None:
    client_ip = ClientIP(PROXIES)
    assert client_ip("10.0.0.2", {"X-Forwarded-For": "198.51.100.1"}) == "198.51.100.1"


def test_spoofed_entries_left_of_the_first_untrusted_hop_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1"; our two proxies appended what they saw.
    client_ip = ClientIP(PROXIES)
    headers = {"X-Forwarded-For": "1.1.1.1, 198.51.100.1, 10.0.0.9"}
    assert client_ip("10.0.0.2", headers) == "198.51.100.1"


def test_a_chain_of_only_trusted_proxies_gives_the_leftmost() -> None:
    client_ip = ClientIP(PROXIES)
    assert client_ip("10.0.0.2", {"X-Forwarded-For": "10.0.0.5, 10.0.0.9"}) == "10.0.0.5"


def test_garbage_from_a_proxy_stops_the_walk_at_the_last_good_hop() -> None:
    client_ip = ClientIP(PROXIES)
    headers = {"X-Forwarded-For": "198.51.100.1, unknown, 10.0.0.9"}
    assert client_ip("10.0.0.2", headers) == "10.0.0.9"


def test_trusted_peer_without_header_is_the_client() -> None:
    assert ClientIP(PROXIES)("10.0.0.2", {}) == "10.0.0.2"


def test_header_names_are_case_insensitive_in_a_plain_dict() -> None:
    assert ClientIP(PROXIES)("10.0.0.2", {"x-forwarded-for": "198.51.100.1"}) == "198.51.100.1"


def test_repeated_headers_are_one_list_in_order() -> None:
    raw: CIMultiDict[str] = CIMultiDict()
    raw.add("X-Forwarded-For", "1.1.1.1, 198.51.100.1")
    raw.add("X-Forwarded-For", "10.0.0.9")
    assert ClientIP(PROXIES)("10.0.0.2", CIMultiDictProxy(raw)) == "198.51.100.1"


def test_ipv6_proxies_and_clients() -> None:
    client_ip = ClientIP(PROXIES)
    headers = {"X-Forwarded-For": "2001:db8::1, fd00::7"}
    assert client_ip("fd00::1", headers) == "2001:db8::1"


def test_ports_and_brackets_are_dropped() -> None:
    client_ip = ClientIP(PROXIES)
    assert client_ip("10.0.0.2", {"X-Forwarded-For": "198.51.100.1:5555"}) == "198.51.100.1"
    assert client_ip("10.0.0.2", {"X-Forwarded-For": "[2001:db8::1]:443"}) == "2001:db8::1"


def test_ipv4_mapped_peer_is_plain_ipv4() -> None:
    client_ip = ClientIP(PROXIES)
    assert client_ip("::ffff:203.0.113.7", {}) == "203.0.113.7"
    # ... and is recognised as a trusted proxy by its IPv4 network.
    assert client_ip("::ffff:10.0.0.2", {"X-Forwarded-For": "198.51.100.1"}) == "198.51.100.1"


def test_a_peer_that_is_not_an_address_is_returned_as_is() -> None:
    assert ClientIP(PROXIES)("", {"X-Forwarded-For": "198.51.100.1"}) == ""
    assert ClientIP(PROXIES)(None, {}) == ""


def test_bad_trusted_proxy_is_a_clear_error() -> None:
    with pytest.raises(InvalidNetwork, match="not a network"):
        ClientIP(["10.0.0.0/33"])
    with pytest.raises(InvalidNetwork, match="did you mean 10.0.0.0/8"):
        parse_network("10.0.0.1/8")


def test_parse_ip_refuses_non_addresses() -> None:
    assert parse_ip("localhost") is None
    assert parse_ip("[::1") is None
    assert str(parse_ip(" 192.0.2.1 ")) == "192.0.2.1"


# -- the key per-client limits count by -------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:0:0:0:9", "2001:db8:1:2::/64"),  # one network, however it is spelled
        ("[2001:db8:1:2::7]:443", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another client
        ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack socket's IPv4 client
        ("::1", "::/64"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_limit_key_counts_ipv6_by_its_64(address: str, key: str) -> None:
    assert limit_key(address) == key


async def test_a_client_cycling_through_its_64_shares_one_allowance() -> None:
    """What a hostile IPv6 host tries: a fresh address from its own /64 for every request."""
    limiter = RateLimiter(3, 3600)
    client_ip = ClientIP()
    for host in range(1, 4):
        await limiter.check(client_ip.limit_key(f"2001:db8:5:6::{host:x}", {}))
    with pytest.raises(RateLimitExceeded):
        await limiter.check(client_ip.limit_key("2001:db8:5:6:abcd::99", {}))
    # A neighbour in another /64 has an allowance of its own.
    assert await limiter.check(client_ip.limit_key("2001:db8:5:7::1", {})) is not None


def test_limit_key_of_a_forwarded_client() -> None:
    client_ip = ClientIP(PROXIES)
    headers = {"X-Forwarded-For": "2001:db8:9:9::42"}
    assert client_ip.limit_key("10.0.0.2", headers) == "2001:db8:9:9::/64"
    # The proxy's own address when the peer is not trusted.
    assert client_ip.limit_key("2001:db8:1:1::5", headers) == "2001:db8:1:1::/64"


def test_the_scheme_is_the_connections_unless_a_trusted_proxy_says_otherwise() -> None:
    behind = ClientIP(["10.0.0.0/8"])
    said = {"X-Forwarded-Proto": "https"}
    assert behind.scheme("10.0.0.2", said, "http") == "https"
    assert behind.scheme("203.0.113.9", said, "http") == "http"  # a client writing it
    assert ClientIP().scheme("10.0.0.2", said, "http") == "http"
    assert behind.scheme("10.0.0.2", {}, "http") == "http"
    assert behind.scheme("10.0.0.2", {"x-forwarded-proto": "javascript"}, "http") == "http"
    # The nearest proxy's word, the last in the list, counts.
    assert behind.scheme("10.0.0.2", {"X-Forwarded-Proto": "https, http"}, "https") == "http"
