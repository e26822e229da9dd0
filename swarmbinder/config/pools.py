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
