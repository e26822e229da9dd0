"""The warm pools' section: which repositories keep servers started ahead, and how many."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

from .base import Section, opt

#: A pool larger than this is a typo (1000 idle servers for one repository), not a plan.
MAX_POOL_SIZE = 1000


def warm_pools(value: Mapping[str, int]) -> Mapping[str, int]:
    """Every key a regex that compiles, every size a whole number from 0 to MAX_POOL_SIZE."""
    for pattern, size in value.items():
        if not pattern.strip():
            raise ValueError("a pool's spec pattern is empty")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
        if size < 0:
            raise ValueError(f"the size of {pattern!r} must be 0 or more, got {size}")
        if size > MAX_POOL_SIZE:
            raise ValueError(f"the size of {pattern!r} must be {MAX_POOL_SIZE} or less, got {size}")
    return types.MappingProxyType(dict(value))


@dataclass(frozen=True)
class PoolConfig(Section):
    """Warm pools: Jupyter servers started ahead for popular repositories."""

    warm_pools: Mapping[str, int] = opt(
        {},
        "Servers to keep started ahead, as {spec pattern: size}. A launch whose image is the "
        "one a pool holds gets one of its servers at once (with a token made for it at "
        "hand-out) and a replacement starts. A pattern is a regex matched like banned_specs "
        "(against the spec without and with its provider prefix and against the canonical "
        "repository URL); a pattern that is itself a launch spec "
        "(gh/org/repo/HEAD, git/<escaped url>/main) is filled from the start, any other fills "
        "for the last spec launched that matched it. A pool follows its spec's ref: a new "
        "commit stops the pool's waiting servers and fills it with the new image (building "
        "it if needed). Pool servers that wait do not count against the quotas; handed out, "
        "they do. Off with auth_enabled (a server then belongs to a logged-in user).",
        check=warm_pools,
    )
    warm_pool_max_age: int = opt(
        900,
        "Seconds a pool server may wait unclaimed before it is replaced by a fresh one (keep "
        "it well below the hub's idle-culler timeout, which counts the wait as inactivity).",
        minimum=1,
    )
    warm_pool_resolve_interval: int = opt(
        60,
        "Seconds between checks of a pool's spec for a new commit (launches of the spec are "
        "noticed at once).",
        minimum=1,
    )
    warm_pool_auto: int = opt(
        0,
        "How many of the most launched specs of the last hour get a pool of their own "
        "(warm_pool_auto_size servers) besides warm_pools; 0 is off. A spec a warm_pools "
        "pattern matches is left to that pattern. A spec enters only with "
        "warm_pool_auto_min_launches launches in the hour, the set changes at most every "
        "warm_pool_auto_change_interval seconds, and a spec that drops out of it is drained. "
        "Each replica counts the launches it serves itself: with several replicas behind a "
        "balancer, each sees its share of them.",
        minimum=0,
        maximum=100,
    )
    warm_pool_auto_size: int = opt(
        1, "Servers in each pool of warm_pool_auto.", minimum=1, maximum=MAX_POOL_SIZE
    )
    warm_pool_auto_min_launches: int = opt(
        3,
        "Launches in the last hour a spec needs to get a pool of warm_pool_auto (one client "
        "launching many specs once each moves nothing).",
        minimum=1,
    )
    warm_pool_auto_change_interval: int = opt(
        600,
        "Seconds at least between two changes of warm_pool_auto's set of specs, so no burst "
        "of launches can make pools drain and refill over and over.",
        minimum=1,
    )
    warm_pool_idle_after: int = opt(
        3600,
        "Seconds without a hand-out after which a pool keeps 1 waiting server instead of its "
        "size (a pool of warm_pool_auto keeps none); the surplus retires as it reaches "
        "warm_pool_max_age, and the next launch of the spec grows it back.",
        minimum=1,
    )
    warm_pool_min_free_percent: int = opt(
        10,
        "Pools start no server while the CPU or the memory that the swarm's ready nodes have "
        "left unreserved (by the reservations of the services on them) is below this percent "
        "of their total: pools give way to users when the swarm runs short. 0 is never.",
        minimum=0,
        maximum=100,
    )
