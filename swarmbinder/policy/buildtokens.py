"""Build tokens: short-lived proof that a ``/build`` request comes from our own loading page.

The loading page ``/v2/<provider>/<spec>`` embeds a token; the page's EventSource sends it back
as ``/build/<provider>/<spec>?build_token=...``. The page paid for the token from the per-IP
rate limit, so the token's first use is not counted again (:mod:`.tokenmint`); a request with an
invalid one is refused (403); a request without one is treated as an anonymous API client.
The token is BinderHub's HS256 JWT with the same claims, and one more::

    {"exp": <unix time>, "aud": "<provider>/<spec>", "origin": "<host[:port]>", "jti": "<id>"}

``aud`` is the launch path exactly as it appears in the URL (percent-escapes kept), so a token
issued for one repository is useless for another. ``origin`` is the ``Origin`` header's
``host[:port]`` when the browser sent one, else the ``Host`` header (:func:`token_origin`).
``jti`` (ours; BinderHub's tokens have none) names one token, so that its first use can be told
from a replay (:mod:`.tokenmint`).

Without a configured ``build_token_secret`` a random secret is drawn per process: tokens then die
with the process and differ between replicas, which is logged loudly once.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from ..errors import SwarmbinderError

__all__ = [
    "BuildTokenError",
    "BuildTokenExpired",
    "BuildTokenInvalid",
    "BuildTokenOriginMismatch",
    "BuildTokenClaims",
    "BuildTokens",
    "build_audience",
    "token_origin",
]

log = logging.getLogger(__name__)

_ALGORITHM = "HS256"
#: RFC 7518 3.2: an HS256 key should be at least as long as the hash (PyJWT warns below this).
_MIN_KEY_BYTES = 32
_random_secret_warned = False


class BuildTokenError(SwarmbinderError, status=403):
    """A build token was sent and is not acceptable: the request is refused with 403."""


class BuildTokenInvalid(BuildTokenError):
    """Malformed, signed with another secret, or issued for another repository."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"Invalid build token: {detail}",
            user_message=f"Invalid build token: {detail}. Reload the launch page to get a new one.",
        )
        self.detail = detail


class BuildTokenExpired(BuildTokenError):
    def __init__(self) -> None:
        super().__init__(
            "Invalid build token: expired",
            user_message="Invalid build token: it has expired. Reload the launch page.",
        )


class BuildTokenOriginMismatch(BuildTokenError):
    def __init__(self, token_origin: str, request_origin: str) -> None:
        super().__init__(
            f"Invalid build token: issued for origin {token_origin!r}, "
            f"used from {request_origin!r}",
            user_message="Invalid build token: it was issued for another site.",
        )
        self.token_origin = token_origin
        self.request_origin = request_origin


@dataclass(frozen=True)
class BuildTokenClaims:
    """What a verified token says."""

    audience: str
    origin: str
    expires_at: int
    #: The ``jti`` claim; empty for a token without one (issued by another implementation).
    token_id: str = ""


def build_audience(provider: str, spec: str) -> str:
    """The ``aud`` claim for a launch path: ``<provider>/<spec>`` with no trailing slash.

    ``spec`` is the raw path segment (percent-escapes as sent): the loading page and the
    ``/build`` request carry the same raw text, decoding would merge distinct ``gl``/``git``
    specs. The trailing slash goes because :func:`~swarmbinder.providers.parse_spec` drops it.
    """
    return f"{provider}/{spec.rstrip('/')}"


def token_origin(headers: Mapping[str, str]) -> str:
    """BinderHub's token origin: the ``Origin`` header's ``host[:port]``, else the ``Host``.

    Browsers send no ``Origin`` on same-origin GETs (page loads, EventSource), so both the page
    and the ``/build`` request normally fall back to ``Host``; a cross-site page that replays a
    token does send its ``Origin``, which then fails the check.
    """
    origin = headers.get("Origin")
    if origin is not None:
        # "null" (sandboxed frames, file://) has no netloc: it must not match a real host
        return urlsplit(origin).netloc or origin
    return headers.get("Host", "")


def _signing_key(secret: str | None) -> bytes:
    global _random_secret_warned
    if secret is None:
        if not _random_secret_warned:
            _random_secret_warned = True
            log.warning(
                "No build_token_secret configured: generated a random one for this process. "
                "Build tokens will not survive a restart and will not be accepted by other "
                "replicas. Set build_token_secret (e.g. `openssl rand -hex 32`)."
            )
        return secrets.token_bytes(_MIN_KEY_BYTES)
    key = bytes.fromhex(secret)
    if len(key) < _MIN_KEY_BYTES:
        # Stretching keeps a short secret usable (and identical across replicas) without
        # PyJWT warning on every token; it is still only as strong as the secret.
        log.warning(
            "build_token_secret is %d bytes, shorter than the recommended %d; "
            "generate one with `openssl rand -hex 32`.",
            len(key),
            _MIN_KEY_BYTES,
        )
        key = hashlib.sha256(b"swarmbinder build token\0" + key).digest()
    return key


class BuildTokens:
    """Issues and verifies build tokens with one secret; share one instance per process.

    ``secret`` is the hex string of ``build_token_secret`` (None: random, logged once).
    ``clock`` returns unix seconds, for tests.
    """

    def __init__(
        self,
        secret: str | None,
        *,
        expires_seconds: int = 300,
        check_origin: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if expires_seconds < 1:
            raise ValueError("expires_seconds must be at least 1")
        self._key = _signing_key(secret)
        self.expires_seconds = expires_seconds
        self.check_origin = check_origin
        self._clock = clock

    def issue(self, audience: str, origin: str) -> str:
        """A token for the launch path ``audience`` (see :func:`build_audience`)."""
        payload = {
            "exp": int(self._clock()) + self.expires_seconds,
            "aud": audience,
            "origin": origin,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(payload, self._key, algorithm=_ALGORITHM)

    def verify(self, token: str, audience: str, origin: str) -> BuildTokenClaims:
        """The claims of a valid ``token`` for ``audience`` used from ``origin``.

        Raises :class:`BuildTokenExpired`, :class:`BuildTokenInvalid` (bad signature, wrong
        repository, malformed) or :class:`BuildTokenOriginMismatch` (only when origin checks
        are on; otherwise a mismatch is logged and accepted, as BinderHub does).
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=audience,
                # expiry is checked below against our clock, which tests can move
                options={"require": ["exp", "aud"], "verify_exp": False},
            )
        except jwt.InvalidAudienceError:
            raise BuildTokenInvalid("it was issued for another repository") from None
        except jwt.InvalidSignatureError:
            raise BuildTokenInvalid("bad signature") from None
        except jwt.PyJWTError as e:
            raise BuildTokenInvalid(_describe(e)) from None
        expires_at = claims.get("exp")
        if not isinstance(expires_at, int):
            raise BuildTokenInvalid("its expiry is not a number")
        if expires_at <= self._clock():
            raise BuildTokenExpired()
        claimed_origin = claims.get("origin")
        if not isinstance(claimed_origin, str):
            raise BuildTokenInvalid("it names no origin")
        if claimed_origin != origin:
            if self.check_origin:
                raise BuildTokenOriginMismatch(claimed_origin, origin)
            log.info(
                "Accepting build token for %s from origin %r, issued for %r "
                "(build_token_check_origin is off)",
                audience,
                origin,
                claimed_origin,
            )
        token_id = claims.get("jti")
        return BuildTokenClaims(
            audience=audience,
            origin=claimed_origin,
            expires_at=expires_at,
            token_id=token_id if isinstance(token_id, str) else "",
        )

    def check(self, token: str | None, audience: str, origin: str) -> bool:
        """BinderHub's check: False without a token, True for a valid one, raises otherwise."""
        if not token:
            return False
        self.verify(token, audience, origin)
        return True


def _describe(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"it has no {error.claim!r} claim"
    if isinstance(error, jwt.DecodeError):
        return "it is not a well-formed token"
    return "it cannot be verified"
