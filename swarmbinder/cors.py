"""``cors_allow_origin``: which other origins may call the API from a browser.

BinderHub sets ``Access-Control-Allow-Origin: <cors_allow_origin>`` (when configured) and
``Access-Control-Allow-Headers: cache-control`` (always: EventSource polyfills send it) on its
responses, and answers ``OPTIONS`` preflights with an empty 200 carrying the same headers. That
is what lets another site's page open ``/build/...`` as an EventSource or read ``/api/...``.

Here it applies to ``/build/`` and ``/api/`` under ``base_url``, but never to ``/api/admin/``:
the admin API is for the console and scripts holding its token, not for other sites' pages.
``/versions`` sets its own ``*``.
"""

from __future__ import annotations

from collections.abc import Mapping

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
#: BinderHub's value; the EventSource polyfill in binderhub-client sends Cache-Control.
ALLOWED_REQUEST_HEADERS = "cache-control"


def check_allow_origin(value: str) -> str:
    """``value`` if it can be a header value; :class:`ValueError` otherwise."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("cors_allow_origin must be a single line")
    return value.strip()


def cors_applies(path: str, base_url: str = "/") -> bool:
    """Whether a request for ``path`` gets CORS headers (``base_url`` starts and ends in /)."""
    if path.startswith(f"{base_url}api/admin/") or path == f"{base_url}api/admin":
        return False
    return path.startswith((f"{base_url}build/", f"{base_url}api/"))


def cors_headers(allow_origin: str) -> Mapping[str, str]:
    """The headers a response (or a preflight answer) under :func:`cors_applies` carries."""
    headers = {ALLOW_HEADERS: ALLOWED_REQUEST_HEADERS}
    if allow_origin:
        headers[ALLOW_ORIGIN] = allow_origin
    return headers
