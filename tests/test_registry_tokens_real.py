"""The token issuer against the real Distribution registry (``auth: token``) and the real engine:
a build's login pushes its own image repository and nothing else, stops working when it expires
or its build ends, and never shows; the pull account only pulls; Binder signs its own tokens."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from build_fixtures import (
    FixtureRegistry,
    TokenRealm,
    build_settings,
    cleanup_builds,
    collect,
    docker,
    ground_request,
    make_issuer,
    manifest_status,
    run_id,
    service_json,
    swarm,
    token_registry,
)

from swarmbinder.builds import BuildManager
from swarmbinder.errors import BuildFailed, SwarmRequestFailed
from swarmbinder.events import Phase
from swarmbinder.labels import KIND_BUILD_AUTH
from swarmbinder.labels import LABEL_BUILD as BUILD_OF_LABEL
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.registry import RegistryClient
from swarmbinder.registrytokens import TokenIssuer, make_signing_pair
from swarmbinder.swarm import SecretInfo, SwarmClient

__all__ = ["cleanup_builds", "run_id", "swarm"]  # fixtures, imported for pytest

pytestmark = pytest.mark.swarm

PAIR = make_signing_pair()


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return make_issuer(PAIR, prefix="sbtest-")


@pytest.fixture(scope="module")
def realm(issuer: TokenIssuer) -> Iterator[TokenRealm]:
    with TokenRealm(issuer) as served:
        yield served


@pytest.fixture(scope="module")
def registry(testground: dict[str, Any], realm: TokenRealm) -> Iterator[FixtureRegistry]:
    with token_registry(testground, PAIR.certificate_pem, realm.url) as running:
        yield running


@pytest.fixture(scope="module")
def tiny_image(testground: dict[str, Any]) -> Iterator[str]:
    """A one-file image: pushes in a moment."""
    name = f"sbtest-tiny-{uuid.uuid4().hex[:8]}:1"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = uuid.uuid4().bytes
        info = tarfile.TarInfo("hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(
        ["docker", "import", "-", name], input=archive.getvalue(), check=True, capture_output=True
    )
    yield name
    subprocess.run(["docker", "rmi", "-f", name], check=False, capture_output=True)


def push_as(
    registry: FixtureRegistry, image: str, repository: str, login: tuple[str, str] | None
) -> tuple[bool, str]:
    """``docker push`` of ``image`` as ``registry/repository:tag`` with ``login`` (the engine
    fetches the token, as it does for builds); whether it worked, and what docker said."""
    target = f"{registry.host}/{repository}:t{uuid.uuid4().hex[:6]}"
    docker("tag", image, target)
    with tempfile.TemporaryDirectory(prefix="sbtest-docker-config-") as config_dir:
        if login is not None:
            auth = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            Path(config_dir, "config.json").write_text(
                json.dumps({"auths": {registry.host: {"auth": auth}}})
            )
        try:
            return True, docker("push", target, env={"DOCKER_CONFIG": config_dir})
        except AssertionError as failed:
            return False, str(failed)
        finally:
            docker("rmi", target)


def test_a_build_login_pushes_its_own_repository_only(
    issuer: TokenIssuer, registry: FixtureRegistry, tiny_image: str
) -> None:
    credential = issuer.mint_build_credential("sbtest-mine", valid_for=600)
    login = (credential.username, credential.password)
    ok, said = push_as(registry, tiny_image, "sbtest-mine", login)
    assert ok, said
    refused, said = push_as(registry, tiny_image, "sbtest-another", login)
    assert not refused and "denied" in said
    # Without a login nothing at all.
    anonymous, said = push_as(registry, tiny_image, "sbtest-mine", None)
    assert not anonymous
    # The operator may push anywhere.
    operator, said = push_as(registry, tiny_image, "sbtest-another", ("binder", "operator-pw"))
    assert operator, said


def test_a_build_login_stops_working_when_it_expires_or_is_revoked(
    issuer: TokenIssuer, registry: FixtureRegistry, tiny_image: str
) -> None:
    short = issuer.mint_build_credential("sbtest-short", valid_for=2)
    ok, said = push_as(registry, tiny_image, "sbtest-short", (short.username, short.password))
    assert ok, said
    time.sleep(max(0.0, short.expires - time.time()) + 1)
    expired, said = push_as(registry, tiny_image, "sbtest-short", (short.username, short.password))
    assert not expired and ("unauthorized" in said.lower() or "denied" in said.lower()), said

    revoked = issuer.mint_build_credential("sbtest-short", valid_for=600)
    issuer.revoke(revoked.username)
    ok, said = push_as(registry, tiny_image, "sbtest-short", (revoked.username, revoked.password))
    assert not ok


def test_the_pull_account_pulls_and_cannot_push(
    issuer: TokenIssuer, registry: FixtureRegistry, tiny_image: str
) -> None:
    ok, said = push_as(registry, tiny_image, "sbtest-pulled", ("binder", "operator-pw"))
    assert ok, said
    pushed, said = push_as(registry, tiny_image, "sbtest-pulled", ("puller", "pull-pw"))
    assert not pushed and "denied" in said


async def test_binder_signs_its_own_tokens_for_its_registry_checks(
    issuer: TokenIssuer, registry: FixtureRegistry, tiny_image: str
) -> None:
    # Off the loop: docker push blocks for seconds.
    ok, said = await asyncio.to_thread(
        push_as, registry, tiny_image, "sbtest-checked", ("binder", "operator-pw")
    )
    assert ok, said

    def own(scopes: list[str]) -> tuple[str, float]:
        reply = issuer.own_token(scopes)
        return reply.token, float(reply.expires_in)

    async with RegistryClient(registry.url, token_source=own) as client:
        await client.ping()
        assert not await client.manifest_exists("sbtest-checked", "never-pushed")
    async with RegistryClient(registry.url) as anonymous:
        with pytest.raises(Exception, match="credentials|authentication"):
            await anonymous.manifest_exists("sbtest-checked", "never-pushed")


# -- builds ----------------------------------------------------------------------------------


async def build_logins(swarm: SwarmClient, service: str) -> list[SecretInfo]:
    return await swarm.list_secrets({KIND_LABEL: KIND_BUILD_AUTH, BUILD_OF_LABEL: service})


async def test_a_build_pushes_with_a_login_of_its_own_that_ends_with_it(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    issuer: TokenIssuer,
    realm: TokenRealm,
    registry: FixtureRegistry,
    cleanup_builds: None,
) -> None:
    settings = build_settings(testground, registry_url=registry.url, issuer=issuer)
    req = ground_request(testground, "binder-dockerfile", run_id, registry=registry.host)
    manager = BuildManager(swarm, settings)
    try:
        build = await manager.request(req)
        inspected = service_json(req.service_name)
        (login,) = await build_logins(swarm, req.service_name)
        events = await collect(build)
        credential = build.credential
        assert (
            credential is not None
            and credential.repository == req.image.split("/")[1].split(":")[0]
        )
        # Its build has ended: the login is refused from now on.
        assert issuer.authenticate(credential.username, credential.password) is None
        await manager.cleanup()
        assert await build_logins(swarm, req.service_name) == []
    finally:
        await manager.close()
    assert events[-1].phase is Phase.BUILT, events[-1].message
    assert manifest_status(registry, req.image) == 401  # anonymous: no
    container = inspected["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert [s["SecretName"] for s in container["Secrets"]] == [login.name]
    assert container["Env"] == ["DOCKER_CONFIG=/etc/swarmbinder/docker"]
    text = json.dumps(inspected) + "".join(e.message for e in events)
    assert credential.password not in text

    def own(scopes: list[str]) -> tuple[str, float]:
        reply = issuer.own_token(scopes)
        return reply.token, float(reply.expires_in)

    name, tag = req.image.split("/", 1)[1].rsplit(":", 1)
    async with RegistryClient(registry.url, token_source=own) as client:
        assert await client.manifest_exists(name, tag)


class _SecretsRefused(SwarmClient):
    """The real engine, except that making a secret fails as a full raft store would."""

    async def ensure_secret(self, name: str, data: bytes, labels: Any = None) -> SecretInfo:
        raise SwarmRequestFailed("create secret", 500, "raft: no space left")


@pytest.fixture
async def refusing_swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    client = _SecretsRefused.connect()
    yield client
    await client.close()


async def test_a_build_whose_login_cannot_be_made_fails_clearly_and_leaves_nothing(
    testground: dict[str, Any],
    refusing_swarm: SwarmClient,
    run_id: str,
    issuer: TokenIssuer,
    registry: FixtureRegistry,
    cleanup_builds: None,
) -> None:
    settings = build_settings(testground, registry_url=registry.url, issuer=issuer)
    req = ground_request(testground, "binder-dockerfile", run_id, registry=registry.host)
    manager = BuildManager(refusing_swarm, settings)
    try:
        with pytest.raises(BuildFailed) as failed:
            await manager.request(req)
    finally:
        await manager.close()
    assert "registry login" in failed.value.user_message
    assert await refusing_swarm.inspect_service(req.service_name) is None
    assert await build_logins(refusing_swarm, req.service_name) == []
