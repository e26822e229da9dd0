"""The admin token: one check for the admin API and for ``/build``'s prebuild path.

The token travels in ``Authorization: Bearer <token>`` or, as JupyterHub spells it,
``Authorization: token <token>``; never in a query parameter, which would end up in access
logs. It is compared in constant time. What a missing or wrong token means is the caller's
business: the admin API refuses (401, 403), ``/build`` treats the request as anyone's.
"""

from __future__ import annotations

import enum
import hmac

#: Authorization schemes that carry the admin token, lower case.
SCHEMES = ("bearer", "token")


class AdminAccess(enum.Enum):
    """What a request's ``Authorization`` header says about the admin token."""

    #: No ``admin_token`` is configured: nobody is an admin.
    DISABLED = "disabled"
    #: No token given (no header, another scheme, or nothing after the scheme).
    MISSING = "missing"
    #: A token, but not the admin token.
    WRONG = "wrong"
    #: The admin token.
    GRANTED = "granted"


def check_admin_token(admin_token: str | None, authorization: str) -> AdminAccess:
    """Whether ``authorization`` (the header's value, ``""`` if absent) carries ``admin_token``."""
    if not admin_token:
        return AdminAccess.DISABLED
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    if scheme.lower() not in SCHEMES or not given:
        return AdminAccess.MISSING
    if not hmac.compare_digest(given.encode(), admin_token.encode()):
        return AdminAccess.WRONG
    return AdminAccess.GRANTED
