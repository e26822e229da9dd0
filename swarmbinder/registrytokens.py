"""The registry's token issuer: swarmbinder hands out every registry token, scoped and short-lived.

The stack's Distribution registry runs with ``auth: token`` and trusts one certificate, whose
key only Binder holds. Whoever wants to pull or push (a node's Docker engine for a build or a
user server, Binder's own manifest checks, an operator's ``docker login``) is sent to Binder's
token endpoint with a user name and password and gets a JWT that grants only what that account
may do:

- the operator (``registry_username``/``registry_password``): everything;
- the pull account (``registry_pull_username``/``registry_pull_password``, the hub's, sent with
  every user server): ``pull`` on the repositories under the image prefix, nothing else;
- a build credential: ``push`` and ``pull`` on the one image repository its build makes,
  until it expires (the build's ``build_max_age`` from its start) or its build ends.

Build credentials are the only ones that reach a container which reads repository content, and
they carry everything needed to check them: the user name holds the expiry, a nonce and the
repository; the password is an HMAC of the user name under a key derived from the signing key.
So any replica holding the signing key accepts them, a restart forgets nothing, and there is no
table of credentials to leak or to keep in step. Ending a build revokes its credential at once
in the replica that watched it (an in-memory list); elsewhere it dies at its expiry.

Facts this follows (Distribution 2.8, ``registry/auth/token``): the token is a JWS whose header
carries the signing certificate as ``x5c`` (that certificate is the registry's whole
``rootcertbundle``); ``iss`` and ``aud`` must equal the registry's ``issuer`` and ``service``;
``exp``/``nbf`` get 60 s of leeway; ``access`` lists ``{type, name, actions}``. Granting fewer
actions than asked is allowed: the registry then refuses the rest.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RegistryConfig

#: The endpoint's path under Binder's base_url; the registry's realm points here.
TOKEN_PATH = "registry/token"
#: The prefix of every build credential's user name.
BUILD_USER_PREFIX = "build."
#: How long a token is good for. Engines ask again when one expires, so a long push is fine.
DEFAULT_TOKEN_LIFETIME = 300
_CREDENTIAL_KEY_CONTEXT = b"swarmbinder registry build credentials v1"
_PUSH_PULL = ("pull", "push")


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim, or one parsed ``scope``."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(scope: str) -> Access | None:
    """``repository:binder-x:pull,push`` as an Access; None if it does not parse.

    The name sits between the first and the last colon (a resource type may carry a class in
    parentheses, and names never contain a colon).
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    wanted = tuple(sorted({a for a in actions.split(",") if a}))
    return Access(kind, name, wanted)


def image_repository(image: str) -> str:
    """The repository path of an image name, as scopes name it: no registry host, no tag."""
    first, slash, rest = image.partition("/")
    path = rest if slash and ("." in first or ":" in first or first == "localhost") else image
    path = path.split("@", 1)[0]
    head, colon, tag = path.rpartition(":")
    return head if colon and "/" not in tag else path


# -- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningPair:
    """The issuer's private key and the self-signed certificate the registry trusts (PEM)."""

    key_pem: bytes = field(repr=False)
    certificate_pem: bytes


def make_signing_pair(
    *, days: int = 3650, name: str = "swarmbinder registry tokens"
) -> SigningPair:
    """A new P-256 key and its self-signed certificate, for ``swarmbinder up`` or an operator."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SigningPair(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
    )


def _load_pair(key_pem: str, certificate_pem: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The signing key and the certificate's x5c entry; ConfigError naming the bad option."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("registry_token_key", f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("registry_token_key", "must be an EC P-256 key (ES256)")
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError as exc:
        raise ConfigError("registry_token_certificate", f"not a PEM certificate: {exc}") from None
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise ConfigError(
            "registry_token_certificate", "does not belong to registry_token_key (another key)"
        )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return key, base64.b64encode(der).decode("ascii")


def check_signing_pair(key_pem: str, certificate_pem: str) -> None:
    """Raise ConfigError (naming the option) unless the key and certificate make a pair."""
    _load_pair(key_pem, certificate_pem)


def repository_prefix(image_prefix: str) -> str:
    """The repository path every image under ``image_prefix`` starts with."""
    first, slash, rest = image_prefix.partition("/")
    return (
        rest if slash and ("." in first or ":" in first or first == "localhost") else image_prefix
    )


# -- accounts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildCredential:
    """A build's registry login: push and pull on one repository until ``expires``."""

    username: str
    password: str = field(repr=False)
    repository: str
    expires: float


@dataclass(frozen=True)
class Account:
    """Who a token is for, and what it may be granted."""

    name: str
    #: "operator" (everything), "pull" (pull under the prefix), "build" (one repository).
    role: str
    repository: str = ""

    def grant(self, wanted: Access, pull_prefix: str) -> Access | None:
        if self.role == "operator":
            return wanted
        if wanted.type != "repository":
            return None
        if self.role == "pull" and wanted.name.startswith(pull_prefix):
            allowed: Sequence[str] = ("pull",)
        elif self.role == "build" and wanted.name == self.repository:
            allowed = _PUSH_PULL
        else:
            return None
        actions = tuple(a for a in wanted.actions if a in allowed)
        return Access(wanted.type, wanted.name, actions) if actions else None


@dataclass(frozen=True)
class TokenReply:
    token: str = field(repr=False)
    expires_in: int
    issued_at: str
    access: tuple[Access, ...]

    def body(self) -> dict[str, object]:
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": self.issued_at,
        }


class TokenIssuer:
    """Checks registry logins and signs tokens for what each account may do."""

    def __init__(
        self,
        *,
        key_pem: str,
        certificate_pem: str,
        issuer: str,
        service: str,
        lifetime: int = DEFAULT_TOKEN_LIFETIME,
        operator: tuple[str, str] | None = None,
        puller: tuple[str, str] | None = None,
        pull_prefix: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key, self._x5c = _load_pair(key_pem, certificate_pem)
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime
        self._operator = operator
        self._puller = puller
        self.pull_prefix = pull_prefix
        self._clock = clock
        # Derived, not configured: every replica with the signing key checks every credential.
        self._credential_key = hmac.new(
            hashlib.sha256(key_pem.strip().encode()).digest(),
            _CREDENTIAL_KEY_CONTEXT,
            hashlib.sha256,
        ).digest()
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- build credentials ---------------------------------------------------------------------

    def mint_build_credential(self, repository: str, *, valid_for: float) -> BuildCredential:
        expires = int(self._clock() + valid_for) + 1
        username = f"{BUILD_USER_PREFIX}{expires}.{secrets.token_hex(6)}.{repository}"
        return BuildCredential(username, self._password_for(username), repository, expires)

    def revoke(self, username: str) -> None:
        """Refuse the build login ``username`` from now on (its build ended)."""
        expires = _login_expiry(username)
        if expires is None:
            return
        now = self._clock()
        with self._lock:
            self._revoked = {u: e for u, e in self._revoked.items() if e > now}
            self._revoked[username] = expires

    def _password_for(self, username: str) -> str:
        mac = hmac.new(self._credential_key, username.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def _build_account(self, username: str, password: str) -> Account | None:
        parts = username.removeprefix(BUILD_USER_PREFIX).split(".", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2]:
            return None
        if not hmac.compare_digest(self._password_for(username), password):
            return None
        if int(parts[0]) <= self._clock():
            return None
        with self._lock:
            if username in self._revoked:
                return None
        return Account(username, "build", parts[2])

    # -- logins and tokens -----------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> Account | None:
        """The account these credentials belong to, or None (wrong, expired or revoked)."""
        if username.startswith(BUILD_USER_PREFIX):
            return self._build_account(username, password)
        for configured, role in ((self._operator, "operator"), (self._puller, "pull")):
            if configured is not None and _same(configured, (username, password)):
                return Account(username, role)
        return None

    def issue(self, account: Account, scopes: Iterable[str]) -> TokenReply:
        """A token granting ``account`` what it may of ``scopes`` (possibly nothing)."""
        granted: dict[tuple[str, str], Access] = {}
        for scope in scopes:
            wanted = parse_scope(scope)
            if wanted is None:
                continue
            access = account.grant(wanted, self.pull_prefix)
            if access is None:
                continue
            key = (access.type, access.name)
            if key in granted:
                merged = tuple(sorted(set(granted[key].actions) | set(access.actions)))
                access = Access(access.type, access.name, merged)
            granted[key] = access
        now = int(self._clock())
        lifetime = self.lifetime
        if account.role == "build":
            # Never beyond the credential: a token must not outlive the build's login.
            expires_at = int(account.name.removeprefix(BUILD_USER_PREFIX).split(".", 1)[0])
            lifetime = max(1, min(lifetime, expires_at - now))
        claims = {
            "iss": self.issuer,
            "sub": account.name,
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [a.claim() for a in granted.values()],
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})
        issued = datetime.datetime.fromtimestamp(now, datetime.UTC)
        return TokenReply(
            token, lifetime, issued.isoformat().replace("+00:00", "Z"), tuple(granted.values())
        )

    def own_token(self, scopes: Iterable[str]) -> TokenReply:
        """A token for Binder's own registry requests: pull only, under the prefix."""
        return self.issue(Account("swarmbinder", "pull"), scopes)


def _login_expiry(username: str) -> float | None:
    """The expiry a build login's user name carries; None if it is not one."""
    if not username.startswith(BUILD_USER_PREFIX):
        return None
    stamp = username.removeprefix(BUILD_USER_PREFIX).split(".", 1)[0]
    return float(stamp) if stamp.isdigit() else None


def _same(a: tuple[str, str], b: tuple[str, str]) -> bool:
    # Both compared whole, in constant time, so neither half leaks by timing.
    return hmac.compare_digest(
        f"{len(a[0])}:{a[0]}{a[1]}".encode(), f"{len(b[0])}:{b[0]}{b[1]}".encode()
    )


def issuer_from_config(registry: RegistryConfig) -> TokenIssuer | None:
    """The issuer the registry options describe; None without ``registry_token_key``."""
    if registry.registry_token_key is None or registry.registry_token_certificate is None:
        return None
    operator = puller = None
    if registry.registry_username is not None and registry.registry_password is not None:
        operator = (registry.registry_username, registry.registry_password)
    if registry.registry_pull_username is not None and registry.registry_pull_password is not None:
        puller = (registry.registry_pull_username, registry.registry_pull_password)
    return TokenIssuer(
        key_pem=registry.registry_token_key,
        certificate_pem=registry.registry_token_certificate,
        issuer=registry.registry_token_issuer,
        service=registry.registry_token_service,
        lifetime=registry.registry_token_lifetime,
        operator=operator,
        puller=puller,
        pull_prefix=repository_prefix(registry.image_prefix),
    )
