"""Launch quotas: how many user servers may run, in all and per repository.

BinderHub's rules (``binderhub/quota.py``), checked before a build and again before a launch:

* ``pod_quota`` caps every running user server together: ``None`` is no cap, ``0`` accepts no
  launch (maintenance). Refused with "Too many users on this BinderHub! Try again soon."
* a repository's quota caps the servers running *its* image: ``per_repo_quota``, or
  ``per_repo_quota_higher`` for specs matching ``high_quota_specs``, replaced by a matching
  ``spec_config`` entry's ``quota``; ``0`` means no cap. Refused with
  "Too many users running {repo_url}! Try again soon."

The pod quota is checked first, as in BinderHub, and both compare "already running" against the
quota, so a quota of 3 allows a third server but not a fourth.

On top of the config an admin can set, live and persisted in the store, a quota for the specs
matching a pattern (optionally until a time) and the pod quota. The override set most recently
wins when several patterns match a spec. Clearing an override falls back to the config.
Patterns (``high_quota_specs``, ``spec_config``, an admin's) match a spec in every form
:mod:`canonical` lists (without and with the provider prefix, and the canonical repository URL),
and servers count against a repository's quota under any spelling of its URL.
Overrides are kept in memory, so a check never waits on the store; an expired override stops
applying at its expiry even before :meth:`Quotas.load` removes it from the store.

Replicas share the quotas through the store: :meth:`Quotas.launch_gate` holds a claim for each
launch in progress (see :mod:`swarmbinder.store.shared`), counted with the running servers by
every replica's check, so concurrent launches through several replicas cannot all squeeze under
one quota. A claim ends with its launch, or expires ``claim_seconds`` after it was made when its
replica died mid-launch.

The running servers come from whoever lists them (the Swarm side): any objects with a
``repo_url`` and an ``image``. A server counts for a repository when either matches (the image
compared without its tag, as BinderHub does, since every ref of a repo shares the image name).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import QuotaExceeded, SwarmbinderError
from ..store import LaunchClaim, QuotaOverride, QuotaScope
from .canonical import RepoIdentity, Subject, canonical_repo_url, same_repository, subjects_of
from .specpolicy import SpecPolicy

log = logging.getLogger(__name__)

QuotaSource = Literal["default", "high_quota_specs", "spec_config", "admin"]

POD_QUOTA_MESSAGE = "Too many users on this BinderHub! Try again soon."
REPO_QUOTA_MESSAGE = "Too many users running {repo}! Try again soon."

#: An upper bound on any quota an admin sets: a typo of 10000000 should not read as "no cap".
MAX_QUOTA = 1_000_000
#: How long a launch's claim lasts when nothing ends it (its replica died): a launch timeout.
DEFAULT_CLAIM_SECONDS = 660.0


class RunningServer(Protocol):
    """One running user server, as the Swarm-side listing describes it."""

    @property
    def repo_url(self) -> str: ...

    @property
    def image(self) -> str: ...


class _Build(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def spec(self) -> str: ...

    @property
    def repo_url(self) -> str: ...

    @property
    def image(self) -> str: ...


class _Resolved(Protocol):
    @property
    def build(self) -> _Build: ...


class QuotaStore(Protocol):
    """The part of :class:`~swarmbinder.store.Store` that keeps quota overrides."""

    async def set_quota(
        self, scope: QuotaScope, key: str, quota: int, expires_at: float | None, actor: str
    ) -> QuotaOverride: ...

    async def clear_quota(self, scope: QuotaScope, key: str, actor: str) -> bool: ...

    async def list_quotas(self, now: float) -> list[QuotaOverride]: ...


class LaunchBudget(Protocol):
    """The part of :class:`~swarmbinder.store.Store` that keeps launch claims."""

    async def claim_launch(
        self, claim: LaunchClaim, *, listed_at: float, check: Callable[[int, int], None]
    ) -> None: ...

    async def release_launch(self, reservation_id: str) -> None: ...


class InvalidQuota(SwarmbinderError, status=400):
    """A quota override an admin asked for cannot be used."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"invalid quota: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class RepoQuota:
    """A spec's quota and where it comes from (0: no cap)."""

    quota: int
    source: QuotaSource
    #: The admin override's pattern and expiry, when ``source == "admin"``.
    pattern: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class QuotaCheck:
    """A check that passed: what was running, and the quotas it was held against."""

    total: int
    matching: int
    repo_quota: int
    pod_quota: int | None


@dataclass(frozen=True)
class RepoUsage:
    repo_url: str
    running: int
    #: ``None`` when the repo's spec is not known, so its quota cannot be worked out.
    quota: RepoQuota | None


@dataclass(frozen=True)
class QuotaSnapshot:
    """Usage against quotas, for the admin console."""

    total: int
    pod_quota: int | None
    pod_quota_source: Literal["config", "admin"]
    repos: tuple[RepoUsage, ...]
    overrides: tuple[QuotaOverride, ...]


def image_without_tag(image: str) -> str:
    """``registry:5000/org/name:tag`` to ``registry:5000/org/name`` (a digest goes too)."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def count_matching(servers: Iterable[RunningServer], repo_url: str, image: str) -> int:
    base = image_without_tag(image) if image else ""
    return sum(
        1
        for server in servers
        # Any spelling of the repository counts against its quota.
        if (repo_url and server.repo_url and same_repository(server.repo_url, repo_url))
        or (base and image_without_tag(server.image) == base)
    )


@dataclass(frozen=True)
class _Override:
    record: QuotaOverride
    regex: re.Pattern[str] | None


class Quotas:
    def __init__(
        self,
        *,
        pod_quota: int | None = None,
        per_repo_quota: int = 0,
        per_repo_quota_higher: int = 0,
        policy: SpecPolicy | None = None,
        store: QuotaStore | None = None,
        clock: Callable[[], float] = time.time,
        budget: LaunchBudget | None = None,
        claim_seconds: float = DEFAULT_CLAIM_SECONDS,
    ) -> None:
        """The config's quotas; ``policy`` carries ``high_quota_specs`` and ``spec_config``
        (:func:`swarmbinder.resolve.policy_from_config`); ``store`` keeps admin overrides;
        ``budget`` keeps the claims of launches in progress (``None``: no claims, each check
        counts the running servers alone)."""
        self._config_pod_quota = pod_quota
        self._per_repo_quota = per_repo_quota
        self._per_repo_quota_higher = per_repo_quota_higher
        self._policy = policy or SpecPolicy()
        self._store = store
        self._clock = clock
        self._budget = budget
        self._claim_seconds = claim_seconds
        self._overrides: tuple[_Override, ...] = ()
        self._lock = asyncio.Lock()

    # -- answers (every launch) ----------------------------------------------------------------

    @property
    def pod_quota(self) -> int | None:
        override = self._pod_override()
        return self._config_pod_quota if override is None else override.quota

    def quota_for(self, spec: Subject) -> RepoQuota:
        """The quota of ``spec``: a bare spec (as in the URL after the provider prefix), or a
        :class:`~swarmbinder.policy.canonical.RepoIdentity`, whose every form a pattern may
        match (so another spelling of a repository gets its quota too)."""
        now = self._clock()
        for item in sorted(
            self._live_overrides(now), key=lambda o: o.record.created_at, reverse=True
        ):
            if item.regex is not None and any(item.regex.match(s) for s in subjects_of(spec)):
                record = item.record
                return RepoQuota(record.quota, "admin", record.key, record.expires_at)
        quota = self._policy.quota_for(spec, self._per_repo_quota, self._per_repo_quota_higher)
        if self._policy.config_for(spec).get("quota") is not None:
            return RepoQuota(quota, "spec_config")
        if self._policy.has_higher_quota(spec):
            return RepoQuota(quota, "high_quota_specs")
        return RepoQuota(quota, "default")

    def check(
        self, spec: Subject, repo_url: str, image: str, servers: Sequence[RunningServer]
    ) -> QuotaCheck:
        """Raise :class:`~swarmbinder.errors.QuotaExceeded` if one more server for this repo
        would go over a quota; ``scope`` is BinderHub's status, ``pod_quota`` or ``repo_quota``.
        """
        return self._check_counts(
            spec, repo_url, len(servers), count_matching(servers, repo_url, image)
        )

    def _check_counts(self, spec: Subject, repo_url: str, total: int, matching: int) -> QuotaCheck:
        pod_quota = self.pod_quota
        if pod_quota is not None and total >= pod_quota:
            log.error("BinderHub is full: %d/%d", total, pod_quota)
            raise QuotaExceeded(POD_QUOTA_MESSAGE, quota=pod_quota, used=total, scope="pod_quota")
        repo_quota = self.quota_for(spec).quota
        if repo_quota and matching >= repo_quota:
            log.error(
                "%s has exceeded quota: %d/%d (%d total)", repo_url, matching, repo_quota, total
            )
            raise QuotaExceeded(
                REPO_QUOTA_MESSAGE.format(repo=repo_url),
                quota=repo_quota,
                used=matching,
                scope="repo_quota",
            )
        return QuotaCheck(total, matching, repo_quota, pod_quota)

    def needs_servers(self, spec: Subject) -> bool:
        """Whether :meth:`check` can refuse ``spec`` at all. When no quota applies the running
        servers need not be listed, so launches go on while the listing is unavailable."""
        return self.pod_quota is not None or self.quota_for(spec).quota > 0

    def gate(
        self,
        list_servers: Callable[[], Awaitable[Sequence[RunningServer]]],
        *,
        on_refused: Callable[[_Build, QuotaExceeded], None] | None = None,
    ) -> Callable[[_Resolved], Awaitable[None]]:
        """The launch flow's ``check_quota``: list the servers (only when a quota applies) and
        :meth:`check`; ``on_refused`` sees each refusal first (to count it in the metrics)."""

        async def check_quota(resolved: _Resolved) -> None:
            build = resolved.build
            identity = RepoIdentity(build.provider, build.spec, build.repo_url)
            if not self.needs_servers(identity):
                return
            servers = await list_servers()
            try:
                self.check(identity, build.repo_url, build.image, servers)
            except QuotaExceeded as refusal:
                if on_refused is not None:
                    on_refused(build, refusal)
                raise

        return check_quota

    def launch_gate(
        self,
        list_servers: Callable[[], Awaitable[Sequence[RunningServer]]],
        *,
        on_refused: Callable[[_Build, QuotaExceeded], None] | None = None,
    ) -> Callable[[_Resolved], AbstractAsyncContextManager[None]]:
        """The launch flow's ``launch_budget``: :meth:`gate`'s check, and then (with a
        ``budget``) a claim on a place under the quotas, checked against the running servers
        plus the other launches' claims in one atomic step and held while the block runs."""

        @asynccontextmanager
        async def launch_budget(resolved: _Resolved) -> AsyncIterator[None]:
            build = resolved.build
            identity = RepoIdentity(build.provider, build.spec, build.repo_url)
            if not self.needs_servers(identity):
                yield
                return
            listed_at = self._clock()
            servers = await list_servers()
            claim: LaunchClaim | None = None
            try:
                running = self.check(identity, build.repo_url, build.image, servers)
                if self._budget is not None:
                    claim = LaunchClaim(
                        reservation_id=uuid.uuid4().hex,
                        repo_key=canonical_repo_url(build.repo_url).casefold()
                        if build.repo_url
                        else "",
                        image=image_without_tag(build.image) if build.image else "",
                        expires_at=listed_at + self._claim_seconds,
                    )

                    def with_claims(claimed: int, claimed_matching: int) -> None:
                        self._check_counts(
                            identity,
                            build.repo_url,
                            running.total + claimed,
                            running.matching + claimed_matching,
                        )

                    await self._budget.claim_launch(claim, listed_at=listed_at, check=with_claims)
            except QuotaExceeded as refusal:
                if on_refused is not None:
                    on_refused(build, refusal)
                raise
            try:
                yield
            finally:
                if claim is not None and self._budget is not None:
                    await self._release(self._budget, claim)

        return launch_budget

    async def _release(self, budget: LaunchBudget, claim: LaunchClaim) -> None:
        try:
            await budget.release_launch(claim.reservation_id)
        except SwarmbinderError as error:
            # The claim expires by itself; until then it only makes the quota stricter.
            log.warning("cannot release launch claim %s: %s", claim.reservation_id, error)

    def snapshot(
        self, servers: Sequence[RunningServer], specs: Mapping[str, str] | None = None
    ) -> QuotaSnapshot:
        """Running servers per repository against their quotas.

        ``specs`` maps a repo URL to a spec of it (e.g. from the build records); a repository
        without one is listed with ``quota=None``.
        """
        specs = specs or {}
        counts: dict[str, int] = {}
        for server in servers:
            counts[server.repo_url] = counts.get(server.repo_url, 0) + 1
        repos = tuple(
            RepoUsage(
                repo_url,
                running,
                self.quota_for(specs[repo_url]) if repo_url in specs else None,
            )
            for repo_url, running in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        now = self._clock()
        return QuotaSnapshot(
            total=len(servers),
            pod_quota=self.pod_quota,
            pod_quota_source="config" if self._pod_override() is None else "admin",
            repos=repos,
            overrides=tuple(item.record for item in self._live_overrides(now)),
        )

    # -- the admin's changes ---------------------------------------------------------------------

    async def load(self) -> None:
        """Read the overrides from the store; expired ones are removed (and audited) there.

        Call at startup, and now and then (once a minute) so expiries reach the audit log.
        """
        if self._store is None:
            return
        async with self._lock:
            records = await self._store.list_quotas(self._clock())
            self._overrides = tuple(_compile(record) for record in records)

    async def set_repo_quota(
        self, pattern: str, quota: int, actor: str, *, expires_at: float | None = None
    ) -> QuotaOverride:
        """Set the quota of every spec matching ``pattern`` (a regex, as ``spec_config``)."""
        _check_quota(quota)
        _check_pattern(pattern)
        if expires_at is not None and expires_at <= self._clock():
            raise InvalidQuota("the expiry is in the past")
        return await self._set("repo", pattern, quota, expires_at, actor)

    async def set_pod_quota(
        self, quota: int, actor: str, *, expires_at: float | None = None
    ) -> QuotaOverride:
        _check_quota(quota)
        if expires_at is not None and expires_at <= self._clock():
            raise InvalidQuota("the expiry is in the past")
        return await self._set("pod", "", quota, expires_at, actor)

    async def clear_repo_quota(self, pattern: str, actor: str) -> bool:
        return await self._clear("repo", pattern, actor)

    async def clear_pod_quota(self, actor: str) -> bool:
        return await self._clear("pod", "", actor)

    async def _set(
        self, scope: QuotaScope, key: str, quota: int, expires_at: float | None, actor: str
    ) -> QuotaOverride:
        store = self._require_store()
        async with self._lock:
            record = await store.set_quota(scope, key, quota, expires_at, actor)
            kept = tuple(
                o for o in self._overrides if (o.record.scope, o.record.key) != (scope, key)
            )
            self._overrides = (*kept, _compile(record))
        log.info("%s quota %r set to %d by %s", scope, key, quota, actor)
        return record

    async def _clear(self, scope: QuotaScope, key: str, actor: str) -> bool:
        store = self._require_store()
        async with self._lock:
            cleared = await store.clear_quota(scope, key, actor)
            self._overrides = tuple(
                o for o in self._overrides if (o.record.scope, o.record.key) != (scope, key)
            )
        if cleared:
            log.info("%s quota %r cleared by %s", scope, key, actor)
        return cleared

    def _require_store(self) -> QuotaStore:
        if self._store is None:
            raise SwarmbinderError(
                "quota change without a store",
                user_message="This service keeps no state: quotas can only be set in its config.",
            )
        return self._store

    def _live_overrides(self, now: float) -> list[_Override]:
        return [
            o for o in self._overrides if o.record.expires_at is None or o.record.expires_at > now
        ]

    def _pod_override(self) -> QuotaOverride | None:
        for item in self._live_overrides(self._clock()):
            if item.record.scope == "pod":
                return item.record
        return None


def _compile(record: QuotaOverride) -> _Override:
    if record.scope != "repo":
        return _Override(record, None)
    try:
        return _Override(record, re.compile(record.key, re.IGNORECASE))
    except re.error:
        # Written by something that did not validate; it cannot match, so it cannot apply.
        log.warning("ignoring quota override with an invalid pattern %r", record.key)
        return _Override(record, None)


def _check_quota(quota: object) -> None:
    if isinstance(quota, bool) or not isinstance(quota, int):
        raise InvalidQuota(f"must be a whole number, not {quota!r}")
    if quota < 0:
        raise InvalidQuota(f"must be 0 or more, not {quota}")
    if quota > MAX_QUOTA:
        raise InvalidQuota(f"must be at most {MAX_QUOTA}, not {quota}")


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidQuota("the repository pattern is empty")
    if len(pattern) > 1000 or any(ch in pattern for ch in "\r\n\0"):
        raise InvalidQuota("the repository pattern is too long or has line breaks")
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise InvalidQuota(f"{pattern!r} is not a valid regular expression: {e}") from None
