"""The registry token issuer: who gets which access, signatures the registry accepts, and the
token endpoint's answers. The real registry's side is in test_registry_tokens_real.py."""

from __future__ import annotations

import base64
import logging
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from build_fixtures import make_issuer
from cryptography import x509

from swarmbinder.config import Config, load_config
from swarmbinder.errors import ConfigError
from swarmbinder.handlers.registrytoken import add_registry_token_route
from swarmbinder.registrytokens import (
    Access,
    image_repository,
    make_signing_pair,
    parse_scope,
    repository_prefix,
)

PAIR = make_signing_pair()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def claims_of(token: str) -> dict[str, Any]:
    """The token checked as the registry checks it: the key from the x5c certificate."""
    header = jwt.get_unverified_header(token)
    (der,) = header["x5c"]
    certificate = x509.load_der_x509_certificate(base64.b64decode(der))
    assert certificate == x509.load_pem_x509_certificate(PAIR.certificate_pem)
    claims: dict[str, Any] = jwt.decode(
        token,
        certificate.public_key(),  # type: ignore[arg-type]
        algorithms=["ES256"],
        audience="swarmbinder-registry",
        issuer="swarmbinder",
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    return claims


def test_scopes_and_names() -> None:
    assert parse_scope("repository:binder-x:push,pull") == Access(
        "repository", "binder-x", ("pull", "push")
    )
    assert parse_scope("repository:org/name:pull") == Access("repository", "org/name", ("pull",))
    assert parse_scope("registry:catalog:*") == Access("registry", "catalog", ("*",))
    assert parse_scope("nonsense") is None
    assert parse_scope("repository::pull") is None
    assert image_repository("127.0.0.1:5000/binder-a-b:0123abc") == "binder-a-b"
    assert image_repository("registry.example.org/org/binder-a:tag") == "org/binder-a"
    assert image_repository("binder-a:tag") == "binder-a"
    assert image_repository("localhost/binder-a@sha256:00") == "binder-a"
    assert repository_prefix("127.0.0.1:5000/binder-") == "binder-"
    assert repository_prefix("registry.example.org/org/binder-") == "org/binder-"


def test_a_build_login_reaches_only_its_own_repository() -> None:
    issuer = make_issuer(PAIR, prefix="binder-")
    credential = issuer.mint_build_credential("binder-mine", valid_for=600)
    assert credential.password not in repr(credential)
    account = issuer.authenticate(credential.username, credential.password)
    assert account is not None and account.role == "build"
    reply = issuer.issue(
        account,
        [
            "repository:binder-mine:push,pull",
            "repository:binder-other:push,pull",
            "repository:binder-mine-2:pull",  # a prefix of it is another repository
            "registry:catalog:*",
        ],
    )
    assert reply.access == (Access("repository", "binder-mine", ("pull", "push")),)
    claims = claims_of(reply.token)
    assert claims["access"] == [
        {"type": "repository", "name": "binder-mine", "actions": ["pull", "push"]}
    ]
    assert claims["sub"] == credential.username


def test_a_changed_or_guessed_build_login_is_refused() -> None:
    issuer = make_issuer(PAIR)
    credential = issuer.mint_build_credential("sbtest-a", valid_for=600)
    other_repository = credential.username.replace("sbtest-a", "sbtest-b")
    assert issuer.authenticate(other_repository, credential.password) is None
    later = credential.username.replace(
        str(int(credential.expires)), str(int(credential.expires) + 10**6)
    )
    assert issuer.authenticate(later, credential.password) is None
    assert issuer.authenticate(credential.username, credential.password + "x") is None
    assert issuer.authenticate("build.nonsense", "x") is None
    # Another deployment's key makes other passwords.
    stranger = make_issuer().mint_build_credential("sbtest-a", valid_for=600)
    assert issuer.authenticate(stranger.username, stranger.password) is None


def test_a_build_login_expires_and_can_be_revoked() -> None:
    clock = Clock()
    issuer = make_issuer(PAIR, clock=clock)
    credential = issuer.mint_build_credential("sbtest-a", valid_for=100)
    account = issuer.authenticate(credential.username, credential.password)
    assert account is not None
    # A token never outlives the login it was issued for.
    clock.now += 90
    assert issuer.issue(account, []).expires_in <= 11
    clock.now += 12
    assert issuer.authenticate(credential.username, credential.password) is None

    clock.now -= 102
    second = issuer.mint_build_credential("sbtest-a", valid_for=100)
    assert issuer.authenticate(second.username, second.password) is not None
    issuer.revoke(second.username)
    assert issuer.authenticate(second.username, second.password) is None


def test_operator_and_pull_accounts() -> None:
    issuer = make_issuer(PAIR, prefix="binder-")
    operator = issuer.authenticate("binder", "operator-pw")
    assert operator is not None
    everything = issuer.issue(operator, ["repository:anything:push,pull,delete"]).access
    assert everything == (Access("repository", "anything", ("delete", "pull", "push")),)
    puller = issuer.authenticate("puller", "pull-pw")
    assert puller is not None
    granted = issuer.issue(
        puller, ["repository:binder-a:pull,push", "repository:elsewhere:pull"]
    ).access
    assert granted == (Access("repository", "binder-a", ("pull",)),)
    assert issuer.authenticate("binder", "pull-pw") is None
    assert issuer.authenticate("puller", "operator-pw") is None
    assert issuer.authenticate("nobody", "") is None


def test_token_claims_as_the_registry_reads_them() -> None:
    clock = Clock()
    issuer = make_issuer(PAIR, clock=clock, lifetime=300)
    operator = issuer.authenticate("binder", "operator-pw")
    assert operator is not None
    reply = issuer.issue(operator, [])
    claims = claims_of(reply.token)
    assert claims["iss"] == "swarmbinder" and claims["aud"] == "swarmbinder-registry"
    assert claims["exp"] == int(clock.now) + 300 and claims["nbf"] <= int(clock.now)
    assert claims["access"] == [] and claims["jti"]
    assert jwt.get_unverified_header(reply.token)["alg"] == "ES256"
    assert reply.body()["token"] == reply.body()["access_token"] == reply.token
    assert str(reply.body()["issued_at"]).endswith("Z")


def load_config_from_mapping(options: dict[str, object]) -> Config:
    return load_config(None, env={}, overrides=options)


def registry_options(**extra: object) -> dict[str, object]:
    return {
        "image_prefix": "127.0.0.1:5000/binder-",
        "registry_username": "binder",
        "registry_password": "pw",
        **extra,
    }


def test_config_refuses_half_or_mismatched_pairs() -> None:
    key, cert = PAIR.key_pem.decode(), PAIR.certificate_pem.decode()
    with pytest.raises(ConfigError, match="registry_token_certificate"):
        load_config_from_mapping(registry_options(registry_token_key=key))
    other = make_signing_pair()
    with pytest.raises(ConfigError, match="registry_token_certificate.*another key"):
        load_config_from_mapping(
            registry_options(
                registry_token_key=key, registry_token_certificate=other.certificate_pem.decode()
            )
        )
    with pytest.raises(ConfigError, match="registry_token_key.*PEM"):
        load_config_from_mapping(
            registry_options(registry_token_key="not a key", registry_token_certificate=cert)
        )
    with pytest.raises(ConfigError, match="registry_pull_username.*registry_token_key"):
        load_config_from_mapping(
            registry_options(registry_pull_username="p", registry_pull_password="q")
        )
    config = load_config_from_mapping(
        registry_options(
            registry_token_key=key,
            registry_token_certificate=cert,
            registry_pull_username="p",
            registry_pull_password="q",
        )
    )
    assert config.registry.registry_token_key == key


# -- the endpoint ---------------------------------------------------------------------------


@pytest.fixture
async def realm(aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    add_registry_token_route(app, "/", make_issuer(PAIR, prefix="binder-"))
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    return client


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


async def test_endpoint_grants_what_the_login_may(
    realm: TestClient[web.Request, web.Application],
) -> None:
    reply = await realm.get(
        "/registry/token",
        params=[
            ("service", "swarmbinder-registry"),
            ("scope", "repository:binder-a:pull,push"),
            ("scope", "repository:other:pull"),
        ],
        headers=basic("puller", "pull-pw"),
    )
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "no-store"
    body = await reply.json()
    assert body["expires_in"] == 300
    assert claims_of(body["token"])["access"] == [
        {"type": "repository", "name": "binder-a", "actions": ["pull"]}
    ]


async def test_endpoint_refuses_bad_logins_without_logging_them(
    realm: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    anonymous = await realm.get("/registry/token", params={"service": "swarmbinder-registry"})
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = await realm.get(
        "/registry/token",
        params={"service": "swarmbinder-registry", "scope": "repository:binder-a:pull"},
        headers=basic("binder", "guessed-password-123"),
    )
    assert wrong.status == 401
    assert "refused" in (await wrong.json())["errors"][0]["message"]
    assert "guessed-password-123" not in caplog.text
    assert "registry token refused" in caplog.text and "'binder'" in caplog.text
    garbled = await realm.get("/registry/token", headers={"Authorization": "Basic %%%"})
    assert garbled.status == 401
    elsewhere = await realm.get(
        "/registry/token", params={"service": "another"}, headers=basic("binder", "operator-pw")
    )
    assert elsewhere.status == 400
    assert "unknown service" in (await elsewhere.json())["errors"][0]["message"]
