"""What the store keeps, as frozen records, and the errors it raises.

Shared by both backends: :class:`~swarmbinder.store.api.Store` returns these whichever database
is underneath, so the policy and admin code never learn which one it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..buildstatus import BuildStatus
from ..errors import SwarmbinderError

BanKind = Literal["spec", "network"]
QuotaScope = Literal["repo", "pod"]

BUILD_STATUSES: frozenset[str] = frozenset(BuildStatus)
BAN_KINDS: frozenset[str] = frozenset(get_args(BanKind))
QUOTA_SCOPES: frozenset[str] = frozenset(get_args(QuotaScope))

#: The actor named in audit rows the store writes on its own (quota overrides expiring).
SYSTEM_ACTOR = "system"


class StoreError(SwarmbinderError):
    """The store's database could not be opened, read or written. ``where`` is the SQLite
    file's path or the PostgreSQL ``store_url`` (which never holds the password)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(
            f"store {where}: {problem}",
            user_message="swarmbinder could not read or write its state.",
        )
        self.path = where
        self.problem = problem


class StoreClosed(StoreError):
    """The store was used after :meth:`Store.close`."""

    def __init__(self, where: str) -> None:
        super().__init__(where, "used after close")


class StoreUnavailable(StoreError, status=503):
    """The database server did not answer (down, restarting, unreachable, or too slow).

    A 503, never a 500: nothing is wrong with the request, and the same request succeeds once
    the database is back (the connection pool reconnects by itself).
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.user_message = (
            "swarmbinder's database is not answering right now. Please try again in a minute."
        )


@dataclass(frozen=True)
class BuildRecord:
    """One build, as the admin API shows it after its Swarm service is gone."""

    build_id: str
    provider: str
    spec: str
    repo_url: str
    ref: str
    image: str
    node: str
    status: BuildStatus
    reason: str
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class BanRecord:
    """A ban set at run time. ``pattern`` is a spec regex or a CIDR; the policy checks it."""

    ban_id: int
    kind: BanKind
    pattern: str
    reason: str
    created_by: str
    created_at: float


@dataclass(frozen=True)
class QuotaOverride:
    """A quota set at run time. ``key`` is a repo spec pattern, or ``""`` for the pod quota."""

    scope: QuotaScope
    key: str
    quota: int
    expires_at: float | None
    created_by: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    entry_id: int
    at: float
    actor: str
    action: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class RateWindow:
    """One client's fixed rate-limit window after counting a request (may be negative)."""

    remaining: int
    #: Unix time (whole seconds) at which the window resets.
    reset: int


@dataclass(frozen=True)
class LaunchClaim:
    """A launch in progress that holds a place under the quotas until it ends or expires."""

    reservation_id: str
    #: The canonical repository URL, case-folded, and the image without its tag: a claim
    #: counts against a repository's quota when either matches, as a running server does.
    repo_key: str
    image: str
    #: Unix times. A claim released after a replica listed the running servers still counts
    #: for that replica's check: its server may have started after the listing.
    expires_at: float


def build_record(row: tuple[Any, ...]) -> BuildRecord:
    build_id, provider, spec, repo_url, ref, image, node, status, reason, started, finished = row
    return BuildRecord(
        build_id,
        provider,
        spec,
        repo_url,
        ref,
        image,
        node,
        BuildStatus(status),
        reason,
        started,
        finished,
    )


def ban_detail(ban: BanRecord) -> dict[str, Any]:
    return {"ban_id": ban.ban_id, "kind": ban.kind, "pattern": ban.pattern, "reason": ban.reason}


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, not {value!r}")


def check_quota_key(scope: str, key: str) -> None:
    if scope not in QUOTA_SCOPES:
        raise ValueError(f"unknown quota scope {scope!r}; expected one of {sorted(QUOTA_SCOPES)}")
    if scope == "pod" and key != "":
        raise ValueError(f"the pod quota has no key, got {key!r}")
    if scope == "repo" and not key:
        raise ValueError("a repo quota needs a spec pattern as its key")
