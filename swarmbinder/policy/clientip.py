"""The address a request really came from, for bans and rate limits.

Behind a reverse proxy every request's peer is the proxy, so the client is named in
``X-Forwarded-For``. That header is written by whoever sent the request, so it is believed only
as far as it was written by proxies we trust (``trusted_proxies``): each proxy *appends* the
address it received the request from, so the chain is read from the right, starting at the
peer, and the first hop that is not a trusted proxy is the client. Anything to the left of that
hop was supplied by the client itself and is ignored; taking the leftmost entry (as many
implementations do) would let any client choose its own address and step around a ban.

BinderHub gets this from Tornado's ``xheaders=True``, which believes the last entry of the
header from any peer; here a deployment without ``trusted_proxies`` trusts no header at all.

Per-client limits (the rate limit, the open event streams) count by :func:`limit_key`, not by
address: one IPv6 host is normally given a whole /64 and can pick a fresh address from it for
every request, so counting per address would let it step around any limit.

The scheme the client used (for a cookie's ``Secure`` flag and the launch URLs a server is
told) is the same question: behind the TLS proxy the peer speaks plain HTTP, so the proxy's
``X-Forwarded-Proto`` is believed, from a trusted peer only (else any client could mark its
plain-HTTP request https, or the reverse).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from ..errors import SwarmbinderError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_PROTO = "X-Forwarded-Proto"
#: The IPv6 prefix one client is counted by: RFC 6177 assigns end sites a /64 at the least
#: (SLAAC hosts make their own addresses inside it), so a /64 is one client, never less.
IPV6_CLIENT_PREFIX = 64


class InvalidNetwork(SwarmbinderError, status=400):
    """A network is not in CIDR notation (or has host bits set)."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"{text!r} is not a network in CIDR notation: {problem}")
        self.text = text
        self.problem = problem


@runtime_checkable
class _MultiHeaders(Protocol):
    """aiohttp's ``CIMultiDictProxy``: a header sent more than once has several values."""

    def getall(self, key: str, default: list[str]) -> list[str]: ...


def parse_network(text: str) -> IPNetwork:
    """``"10.0.0.0/8"`` or ``"2001:db8::/32"`` (a bare address is a /32 or /128).

    Host bits must be clear, as for BinderHub's ``ban_networks``: ``10.0.0.1/8`` is more likely
    a typo than a wish to ban ``10.0.0.0/8``, so it is refused with the network it would mean.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidNetwork(str(text), "empty")
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as e:
        problem = str(e)
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            pass
        else:
            problem = f"it has host bits set; did you mean {loose}?"
        raise InvalidNetwork(text, problem) from None


def parse_ip(text: str) -> IPAddress | None:
    """An address as a proxy or socket writes it, or ``None`` when it is not one.

    Accepts ``1.2.3.4:5678`` and ``[2001:db8::1]:443`` (some proxies keep the port) and unwraps
    IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports for IPv4 clients), so
    one address has one spelling whichever way it arrived.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def limit_key(address: str) -> str:
    """The key every per-client limit counts ``address`` under.

    IPv4 as is; IPv6 as its /64 network (``2001:db8:1:2::/64``), since a host chooses its own
    address within it; IPv4-mapped IPv6 (``::ffff:192.0.2.1``) as the IPv4 address it is.
    Text that is no address (a test's peer name, an odd socket) is its own key.
    """
    ip = parse_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    # Masking the integer is a quarter of the cost of building an IPv6Network.
    host_bits = 128 - IPV6_CLIENT_PREFIX
    return f"{ipaddress.IPv6Address(int(ip) >> host_bits << host_bits)}/{IPV6_CLIENT_PREFIX}"


def in_networks(ip: IPAddress, networks: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first of ``networks`` holding ``ip`` (IPv4 never matches an IPv6 network)."""
    for network in networks:
        if ip.version == network.version and ip in network:
            return network
    return None


class ClientIP:
    """Finds the client address of a request; call it with the peer and the headers."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted = tuple(parse_network(text) for text in trusted_proxies)

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        return self._trusted

    def _is_trusted(self, ip: IPAddress) -> bool:
        return in_networks(ip, self._trusted) is not None

    def __call__(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address as text; the peer (as given) when no proxy is trusted.

        ``headers`` may be a plain mapping or aiohttp's multi-dict; several
        ``X-Forwarded-For`` lines count as one comma-separated list, in order.
        """
        peer_text = peer or ""
        current = parse_ip(peer_text)
        if current is None or not self._trusted or not self._is_trusted(current):
            return str(current) if current is not None else peer_text
        for entry in reversed(_forwarded_for(headers)):
            if not self._is_trusted(current):
                break
            hop = parse_ip(entry)
            if hop is None:
                # A trusted proxy would not write garbage: the chain is broken here, and the
                # last hop we could vouch for is the best answer we have.
                break
            current = hop
        return str(current)

    def scheme(self, peer: str | None, headers: Mapping[str, str], own: str) -> str:
        """``http`` or ``https`` as the client used it: ``own`` (the connection's) unless the
        peer is a trusted proxy that says otherwise in ``X-Forwarded-Proto`` (its last value,
        the one the nearest proxy wrote)."""
        current = parse_ip(peer or "")
        if current is None or not self._is_trusted(current):
            return own
        said = _header_values(headers, FORWARDED_PROTO)
        last = said[-1].lower() if said else ""
        return last if last in ("http", "https") else own

    def limit_key(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """:func:`limit_key` of the request's client address."""
        return limit_key(self(peer, headers))


def _forwarded_for(headers: Mapping[str, str]) -> list[str]:
    return _header_values(headers, FORWARDED_FOR)


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """The comma-separated entries of every ``name`` line, in order."""
    if isinstance(headers, _MultiHeaders):
        values = headers.getall(name, [])
    else:
        value = headers.get(name)
        if value is None:
            # A plain dict is case-sensitive; HTTP header names are not.
            value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
        values = [] if value is None else [value]
    return [entry.strip() for value in values for entry in value.split(",") if entry.strip()]
