"""Build tokens paid for from the rate limit: a launch from the loading page counts once.

BinderHub hands a build token to every ``/v2/`` page and lets a ``/build`` that carries a valid
one skip the per-IP rate limit ("build token defined, no limit"), so a script that loads the
page before each ``/build`` is never limited. Here the accounting is:

* **minting** counts: the loading page charges one request to the client's rate limit (the same
  limiter, under the same per-/64 key as ``/build``) before it issues a token. Over the limit
  the page is still shown, with the limit's message, a 429 and ``Retry-After``, and no token;
* **first use** is free: a ``/build`` with a valid token not yet used here is not counted again,
  so a person who opens a launch link pays one request for it, as before;
* **reuse** counts: the same token again (a replayed URL, a retry after a dropped stream) is
  charged like a request without a token, so one page load does not buy unlimited launches for
  the token's lifetime.

Spent tokens are remembered in memory until they expire (``build_token_expires_seconds``), per
process: with N replicas a replayed token is free at most once at each, N launches for one page
load at worst, and every one after that is counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .buildtokens import BuildTokenClaims
from .ratelimit import RateLimitExceeded, RateLimitStatus

#: More tokens than this in flight at once (unexpired and used) and the oldest are forgotten:
#: such a token could then be used free once more, which costs its holder a page load anyway.
DEFAULT_MAX_SPENT = 100_000


@dataclass(frozen=True)
class Charge:
    """What the rate limit said to a page that wanted to mint a token."""

    #: Where the client stands after this charge (None: no limit applies).
    status: RateLimitStatus | None = None
    #: The refusal when the client is over its limit: mint no token.
    refusal: RateLimitExceeded | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    def headers(self) -> dict[str, str]:
        """BinderHub's rate-limit headers: ``X-RateLimit-*``, or ``Retry-After`` on a refusal."""
        if self.refusal is not None:
            return self.refusal.headers()
        return self.status.headers() if self.status is not None else {}


async def charge(
    rate_limit: Callable[[str], Awaitable[RateLimitStatus | None]] | None, key: str
) -> Charge:
    """Count one token for the client ``key`` (:func:`~.clientip.limit_key`); never raises
    but for a store that does not answer (503, as at ``/build``)."""
    if rate_limit is None:
        return Charge()
    try:
        return Charge(status=await rate_limit(key))
    except RateLimitExceeded as refusal:
        return Charge(refusal=refusal)


class SpentTokens:
    """Token ids already used for a ``/build`` in this process, each kept until it expires."""

    def __init__(
        self, *, max_tokens: int = DEFAULT_MAX_SPENT, clock: Callable[[], float] = time.time
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._max = max_tokens
        self._clock = clock
        # Insertion order is close to expiry order (every token lives as long), so expired
        # ids are found at the front.
        self._spent: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._spent)

    def first_use(self, claims: BuildTokenClaims) -> bool:
        """True the first time a valid token is used; False for a reuse, or a token that has
        no id to remember it by (so it is never free)."""
        if not claims.token_id:
            return False
        self._forget_expired()
        if claims.token_id in self._spent:
            return False
        self._spent[claims.token_id] = claims.expires_at
        while len(self._spent) > self._max:
            self._spent.popitem(last=False)
        return True

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._spent:
            token_id, expires_at = next(iter(self._spent.items()))
            if expires_at > now:
                return
            del self._spent[token_id]
