"""``GET <base_url>registry/token``: the registry's token realm (Distribution's token auth).

Docker engines (and ``docker login``, and any registry client) come here after the registry
answered 401, with HTTP basic credentials and the scopes they want. The answer is a token for
what the account may do of those scopes, possibly nothing: the registry then refuses the rest.
A wrong, expired or revoked login gets 401; it is logged with its user name, never its password.
"""

from __future__ import annotations

import base64
import binascii
import logging

from aiohttp import web

from ..keys import REGISTRY_TOKENS
from ..registrytokens import TOKEN_PATH, TokenIssuer

log = logging.getLogger(__name__)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon and username else None


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="swarmbinder registry"'} if status == 401 else {}
    # The registry's error shape, so docker prints the message.
    body = {"errors": [{"code": "UNAUTHORIZED" if status == 401 else "DENIED", "message": message}]}
    return web.json_response(body, status=status, headers=headers)


async def registry_token(request: web.Request) -> web.Response:
    issuer = request.app[REGISTRY_TOKENS]
    service = request.query.get("service", issuer.service)
    if service != issuer.service:
        return _refuse(
            400, f"unknown service {service!r}: this endpoint issues for {issuer.service!r}"
        )
    credentials = _basic_credentials(request.headers.get("Authorization", ""))
    if credentials is None:
        return _refuse(401, "registry login required (HTTP basic auth)")
    username, password = credentials
    account = issuer.authenticate(username, password)
    if account is None:
        log.warning(
            "registry token refused: wrong, expired or revoked login for user %r from %s",
            username[:120],
            request.remote,
        )
        return _refuse(401, "registry login refused: wrong, expired or revoked credentials")
    scopes = [s for value in request.query.getall("scope", []) for s in value.split(" ") if s]
    reply = issuer.issue(account, scopes)
    log.debug(
        "registry token for %s: %s",
        account.name,
        ", ".join(f"{a.name}:{','.join(a.actions)}" for a in reply.access) or "no access",
    )
    return web.json_response(reply.body(), headers={"Cache-Control": "no-store"})


def add_registry_token_route(app: web.Application, base_url: str, issuer: TokenIssuer) -> None:
    app[REGISTRY_TOKENS] = issuer
    app.router.add_get(f"{base_url}{TOKEN_PATH}", registry_token)
