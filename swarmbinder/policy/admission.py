"""Who may start a launch: network bans, build tokens and the per-IP rate limit, in
BinderHub's order (``BaseHandler.prepare`` then ``BuildHandler.get``).

The rules themselves live in their own modules (:mod:`bans`, :mod:`buildtokens`,
:mod:`ratelimit`, :mod:`clientip`); this module only decides the order and what a refusal
looks like, so the ``/build`` handler stays a parser and tests can drive admission without HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .clientip import limit_key
from .ratelimit import RateLimitStatus


@dataclass(frozen=True)
class Admitted:
    """A request that may go on."""

    client_ip: str
    #: A valid build token, used for the first time, came with it: the loading page that minted
    #: it already counted this launch against the rate limit (see :mod:`.tokenmint`).
    have_build_token: bool
    #: The JupyterHub user when ``auth_enabled``; ``None`` means a temporary user.
    username: str | None = None
    #: Where the client stands with the rate limit (None: no limit applied), for BinderHub's
    #: ``X-RateLimit-*`` response headers.
    rate_limit: RateLimitStatus | None = None


class Admission:
    """Each check raises a :class:`~swarmbinder.errors.SwarmbinderError` with its status.

    ``authenticate`` (with ``auth_enabled``) returns the logged-in user's name, or raises
    when there is none. It is not asked about an ``operator`` request: one the caller found
    carrying the admin token, to build without launching (``swarmbinder prebuild --url``),
    which has no hub login to show and needs none.
    """

    def __init__(
        self,
        *,
        client_ip: Callable[[str, Mapping[str, str]], str],
        check_network: Callable[[str], None],
        verify_token: Callable[[str, str, Mapping[str, str]], bool] | None = None,
        rate_limit: Callable[[str], Awaitable[RateLimitStatus | None]] | None = None,
        authenticate: Callable[[Mapping[str, str]], Awaitable[str | None]] | None = None,
    ) -> None:
        self._client_ip = client_ip
        self._check_network = check_network
        self._verify_token = verify_token
        self._rate_limit = rate_limit
        self._authenticate = authenticate

    async def admit(
        self,
        *,
        peer: str,
        headers: Mapping[str, str],
        path: str,
        build_token: str | None,
        operator: bool = False,
    ) -> Admitted:
        ip = self._client_ip(peer, headers)
        self._check_network(ip)
        # BinderHub's order: the login is required (``@authenticated``) before the token and
        # rate limit are looked at, and a logged-in user is not rate limited.
        authenticate = self._authenticate if not operator else None
        username = await authenticate(headers) if authenticate else None
        have_token = False
        limit: RateLimitStatus | None = None
        if build_token and self._verify_token is not None:
            # An invalid token is refused outright rather than ignored: a page that embeds a
            # stale token should say so, not silently fall back to the rate limit.
            have_token = self._verify_token(build_token, path, headers)
        # An operator (admin token, e.g. a prebuild of many specs) is not rate limited either.
        if not (have_token or operator) and username is None and self._rate_limit is not None:
            # Counted per /64 for IPv6: a host picks its own address within one.
            limit = await self._rate_limit(limit_key(ip))
        return Admitted(
            client_ip=ip, have_build_token=have_token, username=username, rate_limit=limit
        )
