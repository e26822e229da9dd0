"""Registry credentials: the registry client and the builder against a registry with htpasswd
auth, run as a Swarm service for this module. Credentials must work and never show."""

from __future__ import annotations

import base64
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from build_fixtures import (
    FixtureRegistry,
    build_settings,
    cleanup_builds,
    collect,
    docker,
    ground_request,
    manifest_status,
    run_id,
    running_registry,
    service_json,
    swarm,
)

from swarmbinder.buildjob import (
    BUILDER_DOCKER_CONFIG,
    docker_config_json,
    image_registry_host,
    registry_auth_secret_name,
    url_registry_host,
)
from swarmbinder.builds import BuildManager
from swarmbinder.errors import RegistryError
from swarmbinder.events import Phase
from swarmbinder.jobspec import JobSpec, SecretMount
from swarmbinder.labels import KIND_BUILD, KIND_REGISTRY_AUTH
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.registry import RegistryClient
from swarmbinder.swarm import SwarmClient

__all__ = ["cleanup_builds", "run_id", "swarm"]  # fixtures, imported for pytest


# -- unit ----------------------------------------------------------------------------------------


def test_docker_config_gives_each_host_basic_auth() -> None:
    content = json.loads(docker_config_json(["127.0.0.1:5000", "registry:5000"], "u", "p:w"))
    expected = base64.b64encode(b"u:p:w").decode()
    assert content == {
        "auths": {"127.0.0.1:5000": {"auth": expected}, "registry:5000": {"auth": expected}}
    }


def test_registry_hosts_as_docker_reads_them() -> None:
    assert image_registry_host("127.0.0.1:5000/binder-x:abc") == "127.0.0.1:5000"
    assert image_registry_host("registry.example.org/a/b:c") == "registry.example.org"
    assert image_registry_host("localhost/x:1") == "localhost"
    # no host in the name: Docker Hub, under the key docker itself writes
    assert image_registry_host("user/image:tag") == "https://index.docker.io/v1/"
    assert url_registry_host("http://registry:5000/") == "registry:5000"
    assert url_registry_host("https://registry-1.docker.io") == "https://index.docker.io/v1/"


def test_secret_name_follows_the_content_and_hides_it() -> None:
    one = registry_auth_secret_name(docker_config_json(["h:1"], "user", "secret-one"))
    assert one == registry_auth_secret_name(docker_config_json(["h:1"], "user", "secret-one"))
    two = registry_auth_secret_name(docker_config_json(["h:1"], "user", "secret-two"))
    assert one != two and one.startswith("swarmbinder-registry-auth-")
    assert "secret" not in one.removeprefix("swarmbinder-registry-auth-")
    assert len(one) <= 64  # Swarm's limit on object names


def test_settings_never_show_the_password() -> None:
    settings = build_settings(
        {"images": {"builder": "b"}}, registry_username="u", registry_password="hunter2"
    )
    assert "hunter2" not in repr(settings)


def test_secret_mount_in_the_job_spec() -> None:
    spec = JobSpec(
        name="n", image="i", args=[], secrets=[SecretMount("id1", "name1", "/x/config.json")]
    )
    (secret,) = spec.to_api()["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert secret["SecretID"] == "id1" and secret["SecretName"] == "name1"
    assert secret["File"]["Name"] == "/x/config.json"


# -- the real htpasswd registry ------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(testground: dict[str, Any]) -> Iterator[FixtureRegistry]:
    with running_registry(testground, auth=True) as registry:
        yield registry


@pytest.fixture(scope="module")
def pushed(testground: dict[str, Any], auth_registry: FixtureRegistry) -> Iterator[str]:
    """An image pushed with `docker login` credentials (a client config of its own)."""
    assert auth_registry.username is not None and auth_registry.password is not None
    image = f"{auth_registry.host}/sbtest-auth/pushed-{uuid.uuid4().hex[:8]}:v1"
    with tempfile.TemporaryDirectory(prefix="sbtest-docker-config-") as config_dir:
        env = {"DOCKER_CONFIG": config_dir}
        docker(
            "login",
            "--username",
            auth_registry.username,
            "--password-stdin",
            auth_registry.host,
            input=auth_registry.password,
            env=env,
        )
        docker("tag", testground["images"]["registry"], image)
        try:
            docker("push", "--quiet", image, env=env)
        finally:
            docker("rmi", image)
    yield image


@pytest.mark.swarm
async def test_registry_client_against_htpasswd(
    auth_registry: FixtureRegistry, pushed: str
) -> None:
    name, tag = pushed.rsplit(":", 1)
    async with RegistryClient(auth_registry.url) as anonymous:
        with pytest.raises(RegistryError, match="requires authentication"):
            await anonymous.manifest_exists(name, tag)
    async with RegistryClient(
        auth_registry.url, username=auth_registry.username, password=auth_registry.password
    ) as client:
        await client.ping()
        assert await client.manifest_exists(name, tag)
        assert not await client.manifest_exists(name, "never-pushed")
    async with RegistryClient(
        auth_registry.url, username=auth_registry.username, password="wrong"
    ) as wrong:
        with pytest.raises(RegistryError, match="authentication failed") as caught:
            await wrong.manifest_exists(name, tag)
        assert "wrong" not in str(caught.value)


@pytest.fixture
async def registry_secret_cleanup(
    swarm: SwarmClient, auth_registry: FixtureRegistry, run_id: str
) -> AsyncIterator[None]:
    """Removes this test's build services, then the credentials secret they used (a secret
    cannot be removed while a service refers to it)."""
    yield
    for service in await swarm.list_services({KIND_LABEL: KIND_BUILD}):
        if run_id in service.labels.get("swarmbinder.build-slug", ""):
            await swarm.remove_service(service.id)
    content = docker_config_json(
        [auth_registry.host, url_registry_host(auth_registry.url)],
        auth_registry.username or "",
        auth_registry.password or "",
    )
    await swarm.remove_secret(registry_auth_secret_name(content))


@pytest.mark.swarm
async def test_build_pushes_with_credentials_that_never_show(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    auth_registry: FixtureRegistry,
    registry_secret_cleanup: None,
) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    settings = build_settings(
        testground,
        registry_url=auth_registry.url,
        registry_username=auth_registry.username,
        registry_password=auth_registry.password,
    )
    req = ground_request(testground, "binder-dockerfile", run_id, registry=auth_registry.host)
    manager = BuildManager(swarm, settings)
    try:
        build = await manager.request(req)
        inspected = json.dumps(service_json(req.service_name))
        events = await collect(build)
    finally:
        await manager.close()
    assert events[-1].phase is Phase.BUILT, events[-1].message
    credentials = (auth_registry.username, auth_registry.password)
    assert manifest_status(auth_registry, req.image, auth=credentials) == 200
    assert manifest_status(auth_registry, req.image) == 401  # the registry does want auth

    encoded = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
    for text in [inspected, *(e.message for e in events)]:
        assert auth_registry.password not in text
        assert encoded.decode() not in text
    spec = json.loads(inspected)["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Env"] == [f"DOCKER_CONFIG={BUILDER_DOCKER_CONFIG}"]
    (secret,) = container["Secrets"]
    assert secret["File"]["Name"] == f"{BUILDER_DOCKER_CONFIG}/config.json"
    found = await swarm.find_secret(secret["SecretName"])
    assert found is not None and found.labels[KIND_LABEL] == KIND_REGISTRY_AUTH
    content = docker_config_json(
        [auth_registry.host], auth_registry.username, auth_registry.password
    )
    assert found.name == registry_auth_secret_name(content)  # content-addressed: reused


@pytest.mark.swarm
async def test_build_without_credentials_fails_with_the_push_error(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    auth_registry: FixtureRegistry,
    cleanup_builds: None,
) -> None:
    req = ground_request(testground, "binder-dockerfile", run_id, registry=auth_registry.host)
    manager = BuildManager(swarm, build_settings(testground))
    try:
        events = await collect(await manager.request(req))
    finally:
        await manager.close()
    assert events[-1].phase is Phase.FAILED
    assert "no basic auth credentials" in events[-1].message, events[-1].message
    service = await swarm.inspect_service(req.service_name)
    assert service is not None  # failed builds stay a while for `docker service logs`
