"""Network and spec bans: the config file's, with an admin's live changes layered on top.

Network bans are BinderHub's ``ban_networks``: a CIDR (IPv4 or IPv6) and a label; a request
from inside one is refused with 403 and ``Requests from {label} are not allowed``. Spec bans are
:mod:`specpolicy`'s rules (``banned_specs``/``allowed_specs``); this module only adds the
admin's spec bans to that policy, it does not match specs itself.

The config's bans are the starting point and never change while the service runs. An admin
adds and removes bans through :class:`BanList`, which writes them to the store (so they survive
a restart) and applies them to its in-memory view at once, so the next request sees them; no
request ever waits on the store. :meth:`BanList.load` reads the store at startup (and can be
called again to pick up changes another process made).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import ConfigError, SwarmbinderError
from ..store import BanKind, BanRecord
from .canonical import Subject
from .clientip import InvalidNetwork, IPNetwork, in_networks, parse_ip, parse_network
from .specpolicy import SpecPolicy, SpecRule

log = logging.getLogger(__name__)

BanSource = Literal["config", "admin"]

#: Longest pattern or reason an admin may set: long enough for any real regex, short enough
#: that a ban list cannot be used to store blobs or slow every launch down.
MAX_PATTERN_LENGTH = 1000
MAX_REASON_LENGTH = 500


class InvalidBan(SwarmbinderError, status=400):
    """A ban an admin asked for cannot be used (says which pattern and why)."""

    def __init__(self, kind: str, pattern: str, problem: str) -> None:
        super().__init__(f"invalid {kind} ban {pattern!r}: {problem}")
        self.kind = kind
        self.pattern = pattern
        self.problem = problem


class NetworkBanned(SwarmbinderError, status=403):
    """The request comes from a banned network."""

    def __init__(self, ip: str, network: str, label: str) -> None:
        # BinderHub's words; the address stays in the log message, not in what the client sees.
        super().__init__(
            f"request from {ip} matches banned network {network}: {label}",
            user_message=f"Requests from {label} are not allowed",
        )
        self.ip = ip
        self.network = network
        self.label = label


@dataclass(frozen=True)
class NetworkBan:
    network: IPNetwork
    label: str
    source: BanSource
    #: The store's id for admin bans (what ``DELETE /api/admin/bans/{id}`` takes).
    ban_id: int | None = None


@dataclass(frozen=True)
class BanEntry:
    """One ban as the admin console lists it."""

    kind: BanKind
    pattern: str
    reason: str
    source: BanSource
    ban_id: int | None = None
    created_by: str | None = None
    created_at: float | None = None


class BanStore(Protocol):
    """The part of :class:`~swarmbinder.store.Store` that keeps admin bans."""

    async def add_ban(self, kind: BanKind, pattern: str, reason: str, actor: str) -> BanRecord: ...

    async def remove_ban(self, ban_id: int, actor: str) -> bool: ...

    async def list_bans(self) -> list[BanRecord]: ...


def validate_ban(kind: str, pattern: str, reason: str = "") -> None:
    """Raise :class:`InvalidBan` unless ``pattern`` is a usable ban of ``kind``."""
    if kind not in ("spec", "network"):
        raise InvalidBan(kind, pattern, "kind must be 'spec' or 'network'")
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidBan(kind, str(pattern), "the pattern is empty")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidBan(kind, pattern[:40] + "...", f"longer than {MAX_PATTERN_LENGTH} characters")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise InvalidBan(kind, pattern, f"the reason must be text of at most {MAX_REASON_LENGTH}")
    if any(ch in pattern or ch in reason for ch in "\r\n\0"):
        # The label and reason end up in log lines and user messages.
        raise InvalidBan(kind, pattern, "line breaks and NUL are not allowed")
    if kind == "network":
        try:
            parse_network(pattern)
        except InvalidNetwork as e:
            raise InvalidBan(
                kind, pattern, f"not a network in CIDR notation: {e.problem}"
            ) from None
    else:
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise InvalidBan(kind, pattern, f"not a valid regular expression: {e}") from None


class BanList:
    """Every ban in force. Checks are synchronous and cheap; changes are async (the store)."""

    def __init__(
        self,
        *,
        ban_networks: Mapping[str, str] | None = None,
        policy: SpecPolicy | None = None,
        store: BanStore | None = None,
    ) -> None:
        """``ban_networks`` is the config's CIDR-to-label mapping; ``policy`` the config's spec
        policy (:func:`swarmbinder.resolve.policy_from_config`); ``store`` keeps admin bans
        (``None``: admin changes are refused)."""
        self._config_networks = tuple(
            NetworkBan(_config_network(cidr), label, "config")
            for cidr, label in (ban_networks or {}).items()
        )
        self._config_policy = policy or SpecPolicy()
        self._store = store
        self._admin: tuple[BanRecord, ...] = ()
        self._networks = self._config_networks
        self._policy = self._config_policy
        # Serialises store round trips with the in-memory update that follows them, so a load
        # that read the store before an add cannot overwrite the add's result.
        self._lock = asyncio.Lock()

    # -- checks (every request) ----------------------------------------------------------------

    def network_ban(self, ip: str) -> NetworkBan | None:
        """The ban covering ``ip``, if any; an address that does not parse is never banned."""
        address = parse_ip(ip)
        if address is None:
            return None
        for ban in self._networks:
            if in_networks(address, (ban.network,)) is not None:
                return ban
        return None

    def check_network(self, ip: str) -> None:
        """Raise :class:`NetworkBanned` (403) if ``ip`` is inside a banned network."""
        ban = self.network_ban(ip)
        if ban is not None:
            error = NetworkBanned(ip, str(ban.network), ban.label)
            log.warning("blocking %s", error)
            raise error

    @property
    def policy(self) -> SpecPolicy:
        """The config's spec policy with the admin's spec bans added: pass it to ``resolve``."""
        return self._policy

    def check_spec(self, spec: Subject) -> None:
        """Raise :class:`~swarmbinder.errors.SpecBanned` if ``spec`` may not launch (a bare
        spec, or a :class:`~swarmbinder.policy.canonical.RepoIdentity` to match every form)."""
        self._policy.check(spec)

    # -- the admin's view and changes ------------------------------------------------------------

    def entries(self) -> list[BanEntry]:
        """Config bans first (as configured), then the admin's, oldest first."""
        entries = [
            BanEntry("network", str(ban.network), ban.label, "config")
            for ban in self._config_networks
        ]
        entries += [
            BanEntry("spec", rule.pattern, rule.reason, "config")
            for rule in self._config_policy.banned_specs
        ]
        entries += [
            BanEntry(r.kind, r.pattern, r.reason, "admin", r.ban_id, r.created_by, r.created_at)
            for r in self._admin
        ]
        return entries

    async def load(self) -> None:
        """Read the admin's bans from the store; a stored ban that no longer validates is
        skipped with a warning rather than taking the service down."""
        if self._store is None:
            return
        async with self._lock:
            self._apply(await self._store.list_bans())

    async def add(self, kind: BanKind, pattern: str, reason: str, actor: str) -> BanEntry:
        """Validate, persist and apply a ban; :class:`InvalidBan` (400) when it cannot work."""
        validate_ban(kind, pattern, reason)
        store = self._require_store()
        async with self._lock:
            record = await store.add_ban(kind, pattern.strip(), reason, actor)
            self._apply((*self._admin, record))
        log.info("ban %d added by %s: %s %r", record.ban_id, actor, kind, record.pattern)
        return BanEntry(
            record.kind,
            record.pattern,
            record.reason,
            "admin",
            record.ban_id,
            record.created_by,
            record.created_at,
        )

    async def remove(self, ban_id: int, actor: str) -> bool:
        """Remove an admin ban; False when there is none with that id (config bans have none)."""
        store = self._require_store()
        async with self._lock:
            removed = await store.remove_ban(ban_id, actor)
            self._apply(tuple(r for r in self._admin if r.ban_id != ban_id))
        if removed:
            log.info("ban %d removed by %s", ban_id, actor)
        return removed

    def _require_store(self) -> BanStore:
        if self._store is None:
            raise SwarmbinderError(
                "ban change without a store",
                user_message="This service keeps no state, so bans can only be set in its config.",
            )
        return self._store

    def _apply(self, records: Iterable[BanRecord]) -> None:
        admin: list[BanRecord] = []
        networks: list[NetworkBan] = []
        spec_rules: list[SpecRule] = []
        for record in records:
            try:
                validate_ban(record.kind, record.pattern, record.reason)
            except InvalidBan as e:
                log.warning("ignoring stored ban %d: %s", record.ban_id, e)
                continue
            admin.append(record)
            if record.kind == "network":
                label = record.reason or str(parse_network(record.pattern))
                networks.append(
                    NetworkBan(parse_network(record.pattern), label, "admin", record.ban_id)
                )
            else:
                spec_rules.append(SpecRule(record.pattern, record.reason))
        # Build everything first and swap at the end: a check never sees half an update.
        self._admin = tuple(admin)
        self._networks = self._config_networks + tuple(networks)
        self._policy = dataclasses.replace(
            self._config_policy,
            banned_specs=self._config_policy.banned_specs + tuple(spec_rules),
        )


def _config_network(cidr: str) -> IPNetwork:
    try:
        return parse_network(cidr)
    except InvalidNetwork as e:
        raise ConfigError("ban_networks", str(e)) from None
