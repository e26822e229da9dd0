"""The pool rules: which specs get a pool, and what to start and stop, as pure functions.

A ``warm_pools`` pattern is matched like ``banned_specs`` (:mod:`~swarmbinder.policy.canonical`
lists the forms). A pool needs one concrete spec to resolve and launch: a pattern that is itself
a launch spec (it matches itself, anchors aside) is that spec from the start; any other pattern
follows the launches that match it, holding the spec last launched. A launch of another matching
spec takes the pool over only once the pool's spec has gone unlaunched for
:data:`LEARNED_SPEC_HOLD` seconds, so nobody can make a pool drain and refill by alternating
specs.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..labels import POOL_RETIRING
from ..policy.canonical import Subject, subjects_of

#: How long a pattern's learned spec holds its pool against other matching specs.
LEARNED_SPEC_HOLD = 3600.0
#: A listed pool server the hub does not know is left alone this long: its spawn (by another
#: replica, or just begun) may not have reached the hub's answer yet.
UNKNOWN_SERVER_GRACE = 120.0
#: Hand-outs remembered per pool, for "handed out in the last hour".
HANDOUT_WINDOW = 3600.0

_REGEX_SPECIALS = frozenset("*+?[](){}|\\^$")


@dataclass(frozen=True)
class PoolRule:
    """One ``warm_pools`` entry."""

    pattern: str
    size: int
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, subject: Subject) -> bool:
        return any(self.regex.match(form) for form in subjects_of(subject))

    @property
    def literal_spec(self) -> str | None:
        """The launch spec (``provider/spec``) the pattern names, if it names exactly one."""
        candidate = self.pattern.removeprefix("^").removesuffix("$")
        # "." is the one special character a spec holds (hosts, .git); it matches itself
        if "/" not in candidate or candidate.endswith("/"):
            return None  # a prefix ("gh/org/") names many specs
        if any(c in _REGEX_SPECIALS for c in candidate):
            return None
        return candidate


def rules_from_config(warm_pools: Mapping[str, int]) -> tuple[PoolRule, ...]:
    """The rules of ``warm_pools`` (checked when the config loaded); size 0 is no pool."""
    return tuple(PoolRule(pattern, size) for pattern, size in warm_pools.items() if size > 0)


@dataclass
class Backoff:
    """Retries of something that failed: after ``start`` seconds, doubling up to ``cap``."""

    start: float = 30.0
    cap: float = 3600.0
    failures: int = 0
    retry_at: float = -math.inf

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> float:
        """Record a failure; the seconds until the next try."""
        delay = min(self.cap, self.start * 2.0**self.failures)
        self.failures += 1
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = -math.inf


@dataclass
class PoolTarget:
    """One pool: its rule, the spec it keeps warm, and what is known of that spec now."""

    rule: PoolRule
    path: str
    #: The image the spec resolved to last ("" until it has resolved once).
    image: str = ""
    #: Whether ``image`` is in the registry (a missing one is built first).
    image_ready: bool = False
    resolved_at: float = -math.inf
    last_launch: float = -math.inf
    building: bool = False
    build_backoff: Backoff = field(default_factory=Backoff)
    spawn_backoff: Backoff = field(default_factory=lambda: Backoff(start=10.0, cap=600.0))
    last_error: str = ""
    handed_out: deque[float] = field(default_factory=deque)
    #: A pool of ``warm_pool_auto`` (its rule names its spec alone).
    auto: bool = False
    #: Since when the pool counts as used: made, or its spec launched, or a server handed out.
    active_at: float = -math.inf
    #: No hand-out or launch for ``warm_pool_idle_after``: the pool keeps 1 (auto: 0) waiting.
    idle: bool = False

    @property
    def size(self) -> int:
        if self.idle:
            return min(self.rule.size, 0 if self.auto else 1)
        return self.rule.size

    def touch(self, now: float) -> None:
        """A launch of the spec or a hand-out: the pool is in use (grows back if idle)."""
        self.active_at = max(self.active_at, now)
        self.idle = False

    def check_idle(self, now: float, idle_after: float) -> None:
        self.idle = now - max(self.active_at, self.last_launch) >= idle_after

    def count_handout(self, now: float) -> None:
        self.handed_out.append(now)
        self.handouts_in_window(now)

    def handouts_in_window(self, now: float) -> int:
        while self.handed_out and self.handed_out[0] < now - HANDOUT_WINDOW:
            self.handed_out.popleft()
        return len(self.handed_out)


def targets_from_rules(rules: Iterable[PoolRule]) -> list[PoolTarget]:
    """The pools known before any launch: one per pattern that names a spec."""
    return [PoolTarget(rule, spec) for rule in rules if (spec := rule.literal_spec) is not None]


def notice_launch(
    targets: list[PoolTarget],
    rules: Sequence[PoolRule],
    path: str,
    identity: Subject,
    now: float,
) -> list[PoolTarget]:
    """Record a launch of ``path``; the pools whose spec it is (to be resolved again soon).

    A pattern without a spec of its own adopts ``path`` when it has no spec yet, or when its
    spec went unlaunched for :data:`LEARNED_SPEC_HOLD` (the old spec's servers then drain).
    """
    touched: list[PoolTarget] = []
    for rule in rules:
        if not rule.matches(identity):
            continue
        mine = [t for t in targets if t.rule is rule]
        same = [t for t in mine if t.path.casefold() == path.casefold()]
        if same:
            for target in same:
                target.last_launch = now
                target.touch(now)
            touched.extend(same)
            continue
        if rule.literal_spec is not None:
            continue  # a pattern naming a spec keeps that spec
        if mine and now - mine[0].last_launch < LEARNED_SPEC_HOLD:
            continue
        for old in mine:
            targets.remove(old)
        target = PoolTarget(rule, path, last_launch=now, active_at=now)
        targets.append(target)
        touched.append(target)
    return touched


@dataclass(frozen=True)
class PoolServer:
    """A pool server, as Swarm lists it and the manager knows it."""

    service_id: str
    service_name: str
    user: str
    image: str
    #: Epoch seconds its service was created (``-inf`` when Swarm did not say).
    created: float
    #: ``swarmbinder.pool-claimed``: ``""`` while it waits.
    claim: str = ""
    #: The spec it was started for (``swarmbinder.spec``; ``""`` when the label is missing).
    spec: str = ""

    @property
    def waiting(self) -> bool:
        return not self.claim


@dataclass(frozen=True)
class Plan:
    """What one round of the manager does."""

    #: Unclaimed servers to stop: no pool wants their image, too old, or unknown to the hub.
    retire: tuple[PoolServer, ...]
    #: Servers to start, per target (in the order targets were given).
    start: tuple[tuple[PoolTarget, int], ...]
    #: Waiting servers per image, for the console and /metrics.
    waiting: Mapping[str, int]


def plan(
    targets: Sequence[PoolTarget],
    servers: Sequence[PoolServer],
    *,
    starting: Mapping[str, str],
    ready: set[str],
    unknown_to_hub: set[str],
    now: float,
    max_age: float,
    dropped: frozenset[str] = frozenset(),
) -> Plan:
    """Compare the pools with the servers.

    ``starting`` maps the users of spawns in flight to their image (they may not be listed yet);
    ``ready`` holds the users the hub called ready; ``unknown_to_hub`` those it has no pool
    server for. A server being retired (``retiring``) is retired again: a retirement cut short
    by a restart is finished.

    A waiting server of an image no pool here wants is retired when its spec is one of these
    pools' (a new commit), or in ``dropped`` (casefolded specs whose pools this manager just
    gave up), or unlabelled; a server of a spec this manager has no pool for may be another
    replica's (each counts its own launches, so their auto pools differ): it is left until
    ``max_age``, or replicas would drain each other's pools in turn.
    """
    own_specs = {t.path.casefold() for t in targets}
    sizes: dict[str, int] = {}
    for target in targets:
        # an idle pool of size 0 still holds its image: its waiting servers retire at max age
        if target.image and target.image_ready:
            sizes[target.image] = max(sizes.get(target.image, 0), target.size)
    retire: list[PoolServer] = []
    held: dict[str, set[str]] = {image: set() for image in sizes}
    waiting: dict[str, int] = {}
    for server in servers:
        if server.claim == POOL_RETIRING:
            retire.append(server)
            continue
        if not server.waiting:
            continue  # handed out: the user's now
        if server.user in starting:
            continue
        spec = server.spec.casefold()
        unwanted = server.image not in sizes and (not spec or spec in own_specs or spec in dropped)
        stale = unwanted or now - server.created > max_age
        lost = server.user in unknown_to_hub and now - server.created > UNKNOWN_SERVER_GRACE
        if stale or lost:
            retire.append(server)
            continue
        if server.image not in held:
            continue  # another replica's pool: see above
        held[server.image].add(server.user)
        if server.user in ready:
            waiting[server.image] = waiting.get(server.image, 0) + 1
    for user, image in starting.items():
        if image in held:
            held[image].add(user)
    start: list[tuple[PoolTarget, int]] = []
    for target in targets:
        if not (target.image and target.image_ready) or target.image not in held:
            continue
        missing = sizes[target.image] - len(held[target.image])
        if missing > 0:
            start.append((target, missing))
            # two targets on one image fill it once
            held[target.image].update(f"\0planned{n}" for n in range(missing))
    return Plan(tuple(retire), tuple(start), waiting)
