"""Where Binder's own user-driven requests may go: the guard against server-side request forgery.

A launch spec names a host (``git/http%3A%2F%2F10.0.0.5%2Frepo/main``, a CKAN dataset URL, a DOI
that redirects anywhere), and the repo providers then connect to it from inside the operator's
network. :class:`OutboundPolicy` refuses every destination that is not a globally routable
address (loopback, link-local with the cloud metadata address 169.254.169.254, private and
unique-local, carrier-grade NAT, unspecified, multicast, reserved, documentation ranges, and
IPv6 forms that embed one of those) unless ``allowed_outbound_networks`` lists it.

The check sits where the address is used, not in a separate lookup, so a name that resolves to
a public address once and a private one the next time (DNS rebinding) gains nothing:

* :class:`GuardedConnector` checks the addresses aiohttp is about to connect to, for names it
  resolved and for IP literals alike, on the first request and on every redirect (aiohttp
  follows redirects through the same connector);
* :func:`resolve_checked` resolves a host once and checks every address, for callers that hand
  the connection to another program; ``git ls-remote`` pins curl to those addresses.

Only the providers' session is guarded: the hub, the registry and the Docker engine are chosen
by the operator, not by users. docs/security.md says what an operator adds on a cluster.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult

from .errors import SpecError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The option that widens the policy, named in every refusal so an operator knows what to set.
OPTION = "allowed_outbound_networks"

# What each refused range is called in messages; the first match names an address. Anything
# else that is not globally routable is refused under a generic name (see _kind).
_NAMED_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), kind)
    for cidr, kind in (
        ("0.0.0.0/8", "an unspecified address"),  # Linux connects 0.0.0.0 to the host itself
        ("::/128", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),  # with the cloud metadata 169.254.169.254
        ("fe80::/10", "a link-local address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("fc00::/7", "a private address"),  # unique local addresses, IPv6's RFC 1918
        ("fec0::/10", "a private address"),  # deprecated site-local; Python calls it global
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
    )
)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which a NAT64 gateway or a
# 6to4 relay may deliver to: their IPv4 part is checked too.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class DestinationRefused(SpecError, status=403):
    """A spec leads to an address Binder may not connect to: a client error (403), not ours."""

    def __init__(self, host: str, address: str, kind: str) -> None:
        reason = f"{kind} ({OPTION} does not list it)"
        if _bare(host) == address:
            message = f"Refusing to connect to {address}: {reason}."
            user_message = message
        else:
            message = f"Refusing to connect to {host} ({address}): {reason}."
            # The user learns the kind of address, not which internal address a name has.
            user_message = f"Refusing to connect to {host}: it resolves to {reason}."
        super().__init__(message, user_message=user_message)
        self.host = host
        self.address = address
        self.kind = kind


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address, in any form a socket call would accept, else None.

    Besides the canonical forms this takes what ``inet_aton`` takes (``2130706433``,
    ``0x7f000001``, ``127.1``, ``0177.0.0.1``), which resolvers and curl turn into addresses,
    and IPv6 brackets and zone ids (``[fe80::1%eth0]``).
    """
    bare = _bare(text)
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        if not bare or ":" in bare or not all(c.isalnum() or c == "." for c in bare):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(bare.partition("%")[0])
    return address


def _bare(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _kind(address: IPAddress) -> str | None:
    """What makes ``address`` a refused destination ("a loopback address"), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _kind(embedded)
            if inner is not None:
                return inner
            if address.ipv4_mapped is not None or address in _NAT64:
                # ::ffff:a.b.c.d is a.b.c.d itself; DNS64 gives IPv6-only hosts 64:ff9b::
                # addresses for every IPv4-only name, and the gateway delivers to a.b.c.d.
                return None
        if address in _NAT64_LOCAL:
            return "an address that is not globally routable"
    for network, kind in _NAMED_RANGES:
        if address.version == network.version and address in network:
            return kind
    if address.is_reserved or not address.is_global:
        return "an address that is not globally routable"
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Globally routable addresses, plus the networks the operator allows.

    The default instance (no networks) is the strict policy every provider starts from.
    """

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> OutboundPolicy:
        """From ``allowed_outbound_networks`` (already checked by the config loader)."""
        return cls(tuple(ipaddress.ip_network(cidr) for cidr in cidrs))

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be connected to ("a private address"), or None if it may."""
        parsed = parse_address(address)
        if parsed is None:
            return "not an IP address"
        # ::ffff:127.0.0.1 is 127.0.0.1 on the wire: an IPv4 network in the list allows it.
        plain = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
        for candidate in (parsed, plain):
            if candidate is None:
                continue
            if any(candidate.version == n.version and candidate in n for n in self.allowed):
                return None
        return _kind(parsed)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise :class:`DestinationRefused` unless every address of ``host`` is allowed.

        All, not any: a name that resolves to a public and a private address could otherwise
        steer the connection to the private one.
        """
        for address in addresses:
            kind = self.refusal(address)
            if kind is not None:
                raise DestinationRefused(host, _bare(address).partition("%")[0], kind)

    def check_literal(self, host: str) -> None:
        """Check ``host`` if it is an IP address in any form; names are left for connect time."""
        address = parse_address(host)
        if address is not None:
            self.check(host, [str(address)])


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only to addresses the policy allows.

    aiohttp resolves every connection's host in ``_resolve_host``, including redirects, and
    returns IP literals there without asking the resolver; the addresses it returns are the
    ones it connects to, so checking them leaves no gap for a second, different answer.
    """

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        hosts = await super()._resolve_host(host, port, traces=traces)
        self.policy.check(host, [entry["host"] for entry in hosts])
        return hosts


def guarded_session(policy: OutboundPolicy, **kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession whose every connection, redirects included, passes ``policy``.

    It does not read proxy settings from the environment: through a proxy the policy would
    check the proxy's address, not the destination's.
    """
    return aiohttp.ClientSession(connector=GuardedConnector(policy), trust_env=False, **kwargs)


def session_policy(session: aiohttp.ClientSession) -> OutboundPolicy:
    """The policy guarding ``session``; TypeError for a session that is not guarded.

    Callers that are handed a session for user-driven requests ask this instead of trusting
    it: a plain ClientSession passed by mistake would silently reach everything.
    """
    connector = session.connector
    if not isinstance(connector, GuardedConnector) or session.trust_env:
        raise TypeError("the repo providers need a session made by outbound.guarded_session()")
    return connector.policy


async def lookup(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (OSError if none): the one lookup for subprocesses."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(policy: OutboundPolicy, host: str, port: int) -> list[str]:
    """The addresses of ``host``, all of them allowed; pin the connection to these.

    Raises :class:`DestinationRefused`, or OSError when the name does not resolve.
    """
    literal = parse_address(host)
    addresses = [str(literal)] if literal is not None else await lookup(_bare(host), port)
    policy.check(host, addresses)
    return addresses
