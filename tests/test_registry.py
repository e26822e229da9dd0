from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from docker_cli import adocker as docker
from fakes.fake_registry import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    OCI_MANIFEST,
    AuthMode,
    FakeRegistry,
    ImageKind,
)
from pytest_aiohttp import AiohttpServer

from swarmbinder.errors import RegistryError
from swarmbinder.registry import MANIFEST_ACCEPT, RegistryClient

USER = "binder"
PASSWORD = "s3cret-Pa55word"
MANIFEST = "/v2/binder/repo/manifests/{}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Serve = Callable[[FakeRegistry], Awaitable[str]]
MakeClient = Callable[..., RegistryClient]


@pytest.fixture
def serve(aiohttp_server: AiohttpServer) -> Serve:
    async def start(fake: FakeRegistry) -> str:
        server = await aiohttp_server(fake.app())
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[MakeClient]:
    clients: list[RegistryClient] = []

    def make(url: str, **kwargs: Any) -> RegistryClient:
        kwargs.setdefault("clock", clock)
        client = RegistryClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def start(
    serve: Serve, make_client: MakeClient, *, creds: bool = False, **fake_kwargs: Any
) -> tuple[FakeRegistry, RegistryClient]:
    if fake_kwargs.get("auth", "anonymous") != "anonymous" and "username" not in fake_kwargs:
        fake_kwargs |= {"username": USER, "password": PASSWORD}
    fake = FakeRegistry(**fake_kwargs)
    url = await serve(fake)
    client_kwargs: dict[str, Any] = {"username": USER, "password": PASSWORD} if creds else {}
    return fake, make_client(url, **client_kwargs)


# -- lookups and content negotiation ---------------------------------------------------------


async def test_anonymous_lookup_is_one_head(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client)
    digest = fake.push("binder/repo", "abc")

    assert await client.manifest_exists("binder/repo", "abc")
    assert await client.get_manifest_digest("binder/repo", "abc") == digest  # cached
    assert not await client.manifest_exists("binder/repo", "missing")
    assert not await client.manifest_exists("binder/other", "abc")
    assert [(r.method, r.path) for r in fake.requests] == [
        ("HEAD", MANIFEST.format("abc")),
        ("HEAD", MANIFEST.format("missing")),
        ("HEAD", "/v2/binder/other/manifests/abc"),
    ]


async def test_accept_names_all_four_types_docker_first(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client)
    await client.manifest_exists("binder/repo", "abc")
    accepted = [part.strip() for part in fake.requests[0].accept.split(",")]
    assert accepted == [DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]
    assert fake.requests[0].accept == MANIFEST_ACCEPT


@pytest.mark.parametrize("kind", ["docker", "oci", "docker-list", "oci-index"])
async def test_every_manifest_type_is_found_with_its_own_digest(
    serve: Serve, make_client: MakeClient, kind: ImageKind
) -> None:
    fake, client = await start(serve, make_client)
    digest = fake.push("binder/repo", "abc", kind)
    assert await client.get_manifest_digest("binder/repo", "abc") == digest


async def test_fake_downconverts_like_distribution_2_8(serve: Serve) -> None:
    """The trap the Accept header avoids: only the OCI type gets a schema 1 manifest."""
    fake = FakeRegistry()
    url = await serve(fake)
    digest = fake.push("binder/repo", "abc", "docker")
    fake.push("binder/repo", "oci", "oci")
    async with aiohttp.ClientSession() as session:
        only_oci = {"Accept": OCI_MANIFEST}
        async with session.get(f"{url}{MANIFEST.format('abc')}", headers=only_oci) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] != digest
            assert "prettyjws" in resp.headers["Content-Type"]
        docker_only = {"Accept": DOCKER_MANIFEST_V2}
        async with session.get(f"{url}{MANIFEST.format('oci')}", headers=docker_only) as resp:
            assert resp.status == 404


async def test_full_image_name_with_this_registry_host(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client)
    fake.push("binder/repo", "abc")
    host = client.url.removeprefix("http://")
    assert await client.manifest_exists(f"{host}/binder/repo", "abc")
    with pytest.raises(ValueError, match="not in registry"):
        await client.manifest_exists("quay.io/binder/repo", "abc")
    assert fake.count() == 1


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("binder/Repo", "abc"),
        ("binder/repo:abc", "abc"),
        ("binder/../x", "abc"),
        ("binder/repo", "a/b"),
        ("binder/repo", "-abc"),
        ("binder/repo", "abc?x=1"),
    ],
)
async def test_bad_names_are_caller_errors(
    serve: Serve, make_client: MakeClient, image: str, tag: str
) -> None:
    fake, client = await start(serve, make_client)
    with pytest.raises(ValueError):
        await client.manifest_exists(image, tag)
    assert fake.count() == 0


async def test_digest_reference_is_accepted(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client)
    digest = fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", digest)


def test_registry_url_forms() -> None:
    assert RegistryClient("127.0.0.1:5000").url == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").url == "http://localhost:5000"
    assert RegistryClient("registry.example.org").url == "https://registry.example.org"
    assert RegistryClient("https://registry.example.org/v2/").url == "https://registry.example.org"
    with pytest.raises(ValueError, match="username/password"):
        RegistryClient("https://u:p@registry.example.org")
    with pytest.raises(ValueError, match="together"):
        RegistryClient("registry.example.org", username="u", password=None)


# -- caching and sharing -------------------------------------------------------------------


async def test_positive_answers_are_cached_briefly(
    serve: Serve, make_client: MakeClient, clock: FakeClock
) -> None:
    fake, client = await start(serve, make_client)
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    clock.advance(29)
    assert await client.manifest_exists("binder/repo", "abc")
    assert fake.count() == 1
    clock.advance(2)
    assert await client.manifest_exists("binder/repo", "abc")
    assert fake.count() == 2


async def test_negative_answers_are_never_cached(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client)
    assert not await client.manifest_exists("binder/repo", "abc")
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    assert fake.count() == 2


async def test_cache_can_be_disabled(serve: Serve, make_client: MakeClient) -> None:
    fake = FakeRegistry()
    client = make_client(await serve(fake), positive_cache_seconds=0)
    fake.push("binder/repo", "abc")
    for _ in range(3):
        assert await client.manifest_exists("binder/repo", "abc")
    assert fake.count() == 3


async def test_concurrent_identical_lookups_share_one_request(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client)
    fake.push("binder/repo", "abc")
    fake.hold("manifests")
    lookups = [asyncio.create_task(client.manifest_exists("binder/repo", "abc")) for _ in range(5)]
    await fake.arrived["manifests"].wait()
    fake.release("manifests")
    assert await asyncio.gather(*lookups) == [True] * 5
    assert fake.count() == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client)
    fake.push("binder/repo", "abc")
    fake.hold("manifests")
    first = asyncio.create_task(client.manifest_exists("binder/repo", "abc"))
    second = asyncio.create_task(client.manifest_exists("binder/repo", "abc"))
    await fake.arrived["manifests"].wait()
    first.cancel()
    fake.release("manifests")
    assert await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake.count() == 1


async def test_head_refused_falls_back_to_get_and_remembers(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client)
    digest = fake.push("binder/repo", "abc", "docker-list")
    fake.head_allowed = False
    assert await client.get_manifest_digest("binder/repo", "abc") == digest
    assert not await client.manifest_exists("binder/repo", "missing")
    assert [r.method for r in fake.requests] == ["HEAD", "GET", "GET"]


# -- authentication --------------------------------------------------------------------------


async def test_basic_auth_is_sent_after_the_challenge_then_up_front(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="basic")
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    assert not await client.manifest_exists("binder/repo", "missing")
    assert [r.authorization.split(" ")[0] for r in fake.requests] == ["", "Basic", "Basic"]


async def test_basic_auth_without_credentials(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, auth="basic")
    with pytest.raises(RegistryError, match="requires authentication"):
        await client.manifest_exists("binder/repo", "abc")


async def test_bearer_token_is_fetched_once_and_reused(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="bearer")
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    assert not await client.manifest_exists("binder/repo", "missing")
    assert await client.list_tags("binder/repo") == ["abc"]

    assert len(fake.token_requests) == 1
    request = fake.token_requests[0]
    assert request.scopes == ("repository:binder/repo:pull",)
    assert request.service == "fake-registry"
    assert request.account == USER
    # 401, retry with the token; then the token up front
    assert [r.authorization.split(" ")[0] for r in fake.requests if r.path != "/token"] == [
        "",
        "Bearer",
        "Bearer",
        "Bearer",
    ]


async def test_bearer_tokens_are_per_scope(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="bearer")
    assert not await client.manifest_exists("binder/one", "abc")
    assert not await client.manifest_exists("binder/two", "abc")
    assert [t.scopes for t in fake.token_requests] == [
        ("repository:binder/one:pull",),
        ("repository:binder/two:pull",),
    ]


async def test_anonymous_bearer_tokens(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, auth="bearer", username=None)
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    assert fake.token_requests[0].account == ""


async def test_token_is_refetched_shortly_before_it_expires(
    serve: Serve, make_client: MakeClient, clock: FakeClock
) -> None:
    fake = FakeRegistry(auth="bearer", username=USER, password=PASSWORD, token_lifetime=60)
    client = make_client(
        await serve(fake), username=USER, password=PASSWORD, positive_cache_seconds=0
    )
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    clock.advance(45)
    assert await client.manifest_exists("binder/repo", "abc")
    assert len(fake.token_requests) == 1
    clock.advance(6)  # 51 s: inside the refresh margin of a 60 s token
    assert await client.manifest_exists("binder/repo", "abc")
    assert len(fake.token_requests) == 2
    # the fresh token is sent up front, with no 401 round trip
    assert fake.requests[-1].authorization == f"Bearer {fake.issued_tokens[1]}"


async def test_token_without_lifetime_defaults_to_sixty_seconds(
    serve: Serve, make_client: MakeClient, clock: FakeClock
) -> None:
    fake = FakeRegistry(auth="bearer", token_lifetime=None)
    client = make_client(await serve(fake), positive_cache_seconds=0)
    await client.manifest_exists("binder/repo", "abc")
    clock.advance(45)
    await client.manifest_exists("binder/repo", "abc")
    clock.advance(10)
    await client.manifest_exists("binder/repo", "abc")
    assert len(fake.token_requests) == 2


async def test_revoked_token_is_replaced_once(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="bearer")
    fake.push("binder/repo", "abc")
    assert not await client.manifest_exists("binder/repo", "missing")
    fake.revoke_tokens()
    assert await client.manifest_exists("binder/repo", "abc")
    assert len(fake.token_requests) == 2


async def test_concurrent_challenges_share_one_token_fetch(
    serve: Serve, make_client: MakeClient
) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="bearer")
    fake.hold("token")
    lookups = [
        asyncio.create_task(client.manifest_exists("binder/repo", tag)) for tag in ("a", "b", "c")
    ]
    await fake.arrived["token"].wait()
    fake.release("token")
    assert await asyncio.gather(*lookups) == [False, False, False]
    assert len(fake.token_requests) == 1


@pytest.mark.parametrize("mode", ["basic", "bearer"])
async def test_wrong_credentials_say_authentication_failed(
    serve: Serve, make_client: MakeClient, mode: AuthMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeRegistry(auth=mode, username=USER, password="the-right-one")
    client = make_client(await serve(fake), username=USER, password=PASSWORD)
    with pytest.raises(RegistryError, match="authentication failed") as lookup:
        await client.manifest_exists("binder/repo", "abc")
    with pytest.raises(RegistryError, match="authentication failed") as ping:
        await client.ping()
    for error in (lookup.value, ping.value):
        assert client.url in str(error)
        assert PASSWORD not in str(error)
        assert PASSWORD not in error.user_message
    assert PASSWORD not in caplog.text


async def test_valid_token_without_permission(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(
        serve, make_client, creds=True, auth="bearer", allowed_actions=frozenset({"pull"})
    )
    fake.push("binder/repo", "abc")
    with pytest.raises(RegistryError, match="may not DELETE"):
        await client.delete_tag("binder/repo", "abc")


async def test_tokens_never_reach_messages_or_logs(
    serve: Serve, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, client = await start(
        serve, make_client, creds=True, auth="bearer", allowed_actions=frozenset({"pull"})
    )
    fake.push("binder/repo", "abc")
    assert await client.manifest_exists("binder/repo", "abc")
    with pytest.raises(RegistryError) as raised:
        await client.delete_tag("binder/repo", "abc")
    fake.fail_status = 500
    with pytest.raises(RegistryError) as failed:
        await client.list_tags("binder/repo")
    secrets = [PASSWORD, *fake.issued_tokens]
    assert len(secrets) == 3
    for secret in secrets:
        for text in (str(raised.value), str(failed.value), caplog.text):
            assert secret not in text


# -- ping, failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["anonymous", "basic", "bearer"])
async def test_ping(serve: Serve, make_client: MakeClient, mode: str) -> None:
    fake, client = await start(serve, make_client, creds=mode != "anonymous", auth=mode)
    await client.ping()
    assert fake.count("GET", "/v2/") >= 1


async def test_ping_without_credentials(serve: Serve, make_client: MakeClient) -> None:
    _, client = await start(serve, make_client, auth="bearer")
    with pytest.raises(RegistryError, match="requires authentication and no credentials"):
        await client.ping()


async def test_registry_down(make_client: MakeClient, unused_tcp_port: int) -> None:
    client = make_client(f"http://127.0.0.1:{unused_tcp_port}")
    for call in (client.ping(), client.manifest_exists("binder/repo", "abc")):
        with pytest.raises(RegistryError, match=f"registry http://127.0.0.1:{unused_tcp_port}"):
            await call


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(serve: Serve, make_client: MakeClient, status: int) -> None:
    fake, client = await start(serve, make_client)
    fake.fail_status = status
    with pytest.raises(RegistryError, match=f"{client.url}.*-> {status}") as raised:
        await client.manifest_exists("binder/repo", "abc")
    assert raised.value.user_message == "The image registry is not available right now."
    with pytest.raises(RegistryError, match="UNAVAILABLE"):
        await client.list_tags("binder/repo")


async def test_slow_registry_times_out(serve: Serve, make_client: MakeClient) -> None:
    fake = FakeRegistry()
    client = make_client(await serve(fake), timeout=aiohttp.ClientTimeout(total=0.2))
    fake.hold("manifests")
    with pytest.raises(RegistryError, match="did not answer HEAD .* within 0.2s"):
        await client.manifest_exists("binder/repo", "abc")
    fake.release("manifests")


# -- tags and deletion ---------------------------------------------------------------------------


async def test_list_tags_follows_pagination(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, page_size=2)
    for tag in ("e", "d", "c", "b", "a"):
        fake.push("binder/repo", tag)
    assert await client.list_tags("binder/repo") == ["a", "b", "c", "d", "e"]
    assert fake.count("GET", "/v2/binder/repo/tags/list") == 3
    assert await client.list_tags("binder/unknown") == []


async def test_delete_tag_deletes_by_digest(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client, creds=True, auth="bearer")
    digest = fake.push("binder/repo", "abc")
    fake.push("binder/repo", "keep")
    assert await client.manifest_exists("binder/repo", "abc")
    assert await client.delete_tag("binder/repo", "abc")
    assert fake.requests[-1].method == "DELETE"
    assert fake.requests[-1].path == MANIFEST.format(digest)
    assert not await client.manifest_exists("binder/repo", "abc")  # cache forgotten
    assert not await client.delete_tag("binder/repo", "abc")
    assert await client.list_tags("binder/repo") == ["keep"]
    assert [t.scopes for t in fake.token_requests] == [
        ("repository:binder/repo:pull",),
        ("repository:binder/repo:delete",),
    ]


async def test_delete_disabled(serve: Serve, make_client: MakeClient) -> None:
    fake, client = await start(serve, make_client)
    fake.push("binder/repo", "abc")
    fake.delete_enabled = False
    with pytest.raises(RegistryError, match="does not allow deleting"):
        await client.delete_tag("binder/repo", "abc")


# -- session ownership ---------------------------------------------------------------------------


async def test_injected_session_is_left_open(serve: Serve) -> None:
    fake = FakeRegistry()
    fake.push("binder/repo", "abc")
    url = await serve(fake)
    async with aiohttp.ClientSession() as session:
        async with RegistryClient(url, session=session) as client:
            assert await client.manifest_exists("binder/repo", "abc")
        assert not session.closed
        with pytest.raises(RuntimeError, match="closed"):
            await client.manifest_exists("binder/repo", "missing")


async def test_owned_session_is_closed(serve: Serve) -> None:
    url = await serve(FakeRegistry())
    client = RegistryClient(url)
    await client.ping()
    session = client._session
    await client.aclose()
    await client.aclose()
    assert session is not None and session.closed


# -- against the real registry of the test ground ------------------------------------------------


@pytest.fixture
async def pushed_image(testground: dict[str, Any]) -> AsyncIterator[tuple[str, str]]:
    """A fresh repository in the real registry holding one tag; yields (full name, tag)."""
    registry = testground["registry"]
    name = f"{registry}/swarmbinder-test/registry-{uuid.uuid4().hex[:12]}"
    await docker("tag", testground["images"]["singleuser"], f"{name}:pushed")
    try:
        await docker("push", "--quiet", f"{name}:pushed")
        yield name, "pushed"
        async with RegistryClient(registry) as client:
            with contextlib.suppress(RegistryError):  # deletion may be disabled
                await client.delete_tag(name, "pushed")
    finally:
        await docker("rmi", f"{name}:pushed")  # the local tag only; the image stays


@pytest.mark.swarm
async def test_real_registry_sees_a_pushed_image(
    testground: dict[str, Any], pushed_image: tuple[str, str]
) -> None:
    name, tag = pushed_image
    async with RegistryClient(testground["registry"]) as client:
        await client.ping()
        assert await client.manifest_exists(name, tag)
        assert not await client.manifest_exists(name, "never-pushed")
        assert await client.list_tags(name) == [tag]
        # The digest docker recorded at push time: a down-converted schema 1 would differ.
        digest = await client.get_manifest_digest(name, tag)
        repo_digests = json.loads(
            await docker("inspect", "--format", "{{json .RepoDigests}}", name + ":" + tag)
        )
        assert f"{name}@{digest}" in repo_digests


@pytest.mark.swarm
async def test_real_registry_delete(
    testground: dict[str, Any], pushed_image: tuple[str, str]
) -> None:
    name, tag = pushed_image
    async with RegistryClient(testground["registry"]) as client:
        try:
            deleted = await client.delete_tag(name, tag)
        except RegistryError as exc:
            if "does not allow deleting" in str(exc):
                pytest.skip("the test ground's registry has deletion disabled")
            raise
        assert deleted
        assert not await client.manifest_exists(name, tag)
