"""Where the repo providers may connect: the policy, the guarded session and ``git ls-remote``.

Every server here listens on loopback (127.0.0.1, or 127.0.0.2 as the "other" host a redirect
leads to); refused destinations are refused before a packet leaves, so no test sends traffic
anywhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from app_support import ground_outbound
from fakes.git_daemon import free_port, git
from fakes.github import FakeGitHub
from pytest_aiohttp import AiohttpServer

from swarmbinder import outbound
from swarmbinder.config import load_config
from swarmbinder.errors import SpecError
from swarmbinder.events import Phase
from swarmbinder.launch_flow import LaunchFlow, LaunchRequest
from swarmbinder.outbound import (
    DestinationRefused,
    GuardedConnector,
    OutboundPolicy,
    guarded_session,
    parse_address,
    session_policy,
)
from swarmbinder.providers import (
    GitHubRepoProvider,
    GitRepoProvider,
    ZenodoProvider,
    default_registry,
)
from swarmbinder.resolve import (
    Resolved,
    policy_from_config,
    provider_session,
    providers_from_config,
    resolve,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_cidrs(["127.0.0.0/8"])
#: 127.0.0.1 only: 127.0.0.2 stands for "some other internal host".
ONLY_ONE = OutboundPolicy.from_cidrs(["127.0.0.1/32"])
SHA = "a" * 40

# -- the policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("10.0.0.5", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("fec0::1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "a broadcast address"),
        ("240.0.0.1", "an address that is not globally routable"),
        ("192.0.2.1", "an address that is not globally routable"),
        ("198.18.0.1", "an address that is not globally routable"),
        ("2001:db8::1", "an address that is not globally routable"),
        ("2001::1", "an address that is not globally routable"),  # Teredo
        ("::7f00:1", "an address that is not globally routable"),  # IPv4-compatible
        ("64:ff9b:1::a00:5", "an address that is not globally routable"),
        # IPv4 inside IPv6: judged by the IPv4 address the packets reach
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:169.254.169.254", "a link-local address"),
        ("::ffff:10.0.0.5", "a private address"),
        ("64:ff9b::a9fe:a9fe", "a link-local address"),  # NAT64 of 169.254.169.254
        ("2002:a00:5::1", "a private address"),  # 6to4 of 10.0.0.5
        # legacy numeric forms resolvers and curl accept
        ("2130706433", "a loopback address"),
        ("0x7f000001", "a loopback address"),
        ("0177.0.0.1", "a loopback address"),
        ("127.1", "a loopback address"),
        ("[::1]", "a loopback address"),
    ],
)
def test_refused_destinations(address: str, kind: str) -> None:
    assert STRICT.refusal(address) == kind


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "140.82.112.3", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_global_addresses_pass(address: str) -> None:
    assert STRICT.refusal(address) is None


def test_names_are_not_addresses() -> None:
    assert parse_address("localhost") is None
    assert parse_address("github.com") is None
    assert parse_address("127.0.0.1 x") is None
    assert STRICT.refusal("localhost") == "not an IP address"


def test_allowed_networks_let_their_addresses_through() -> None:
    policy = OutboundPolicy.from_cidrs(["10.20.0.0/16", "fd00::/8", "169.254.169.254/32"])
    assert policy.refusal("10.20.3.4") is None
    assert policy.refusal("fd00::5") is None
    assert policy.refusal("169.254.169.254") is None  # the operator said so
    assert policy.refusal("10.21.0.1") == "a private address"
    assert policy.refusal("169.254.169.253") == "a link-local address"
    # An IPv4 network also allows the IPv4-mapped form, which is the same destination.
    assert LOOPBACK.refusal("::ffff:127.0.0.1") is None
    assert LOOPBACK.refusal("::1") == "a loopback address"
    assert ONLY_ONE.refusal("127.0.0.2") == "a loopback address"


def test_every_address_of_a_name_must_pass() -> None:
    with pytest.raises(DestinationRefused) as info:
        STRICT.check("mixed.example", ["8.8.8.8", "10.0.0.5"])
    assert info.value.address == "10.0.0.5"
    STRICT.check("public.example", ["8.8.8.8", "2606:4700::1111"])


def test_refusal_messages() -> None:
    with pytest.raises(DestinationRefused) as literal:
        STRICT.check_literal("10.0.0.5")
    assert (
        str(literal.value)
        == literal.value.user_message
        == (
            "Refusing to connect to 10.0.0.5: a private address "
            "(allowed_outbound_networks does not list it)."
        )
    )
    assert literal.value.status_code == 403
    assert isinstance(literal.value, SpecError)

    with pytest.raises(DestinationRefused) as named:
        STRICT.check("internal.example", ["10.0.0.5"])
    assert str(named.value) == (
        "Refusing to connect to internal.example (10.0.0.5): a private address "
        "(allowed_outbound_networks does not list it)."
    )
    # Users learn that the name is internal, not its internal address.
    assert named.value.user_message == (
        "Refusing to connect to internal.example: it resolves to a private address "
        "(allowed_outbound_networks does not list it)."
    )
    STRICT.check_literal("internal.example")  # names wait for connect time


# -- the guarded session, against real servers on loopback ---------------------------------


@dataclass
class Seen:
    """A server on one loopback address and the paths it was asked for."""

    url: str
    paths: list[str]


def _recording(paths: list[str], answer: Any) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        paths.append(request.path_qs)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_get("/{path:.*}", answer)
    return app


@pytest.fixture
async def other_host(aiohttp_server: AiohttpServer) -> Seen:
    """127.0.0.2: the internal host a redirect tries to lead to."""
    paths: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"reached": request.path})

    server = await aiohttp_server(_recording(paths, ok), host="127.0.0.2")
    return Seen(str(server.make_url("")).rstrip("/"), paths)


@pytest.fixture
async def redirector(aiohttp_server: AiohttpServer, other_host: Seen) -> Seen:
    """127.0.0.1, allowed: answers every request with a redirect to the other host."""
    paths: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{other_host.url}{request.path_qs}")

    server = await aiohttp_server(_recording(paths, redirect))
    return Seen(str(server.make_url("")).rstrip("/"), paths)


async def test_provider_reaches_a_loopback_api_only_when_allowed(
    aiohttp_server: AiohttpServer,
) -> None:
    fake = FakeGitHub()
    fake.add_repo("u", "r", {"HEAD": SHA})
    server = await aiohttp_server(fake.app())
    api = str(server.make_url("")).rstrip("/")

    async with guarded_session(STRICT) as session:
        provider = default_registry(session, github_api_base_url=api).get("gh", "u/r/HEAD")
        with pytest.raises(DestinationRefused) as info:
            await provider.get_resolved_ref()
    assert info.value.user_message == (
        "Refusing to connect to 127.0.0.1: a loopback address "
        "(allowed_outbound_networks does not list it)."
    )
    assert fake.requests == []

    async with guarded_session(LOOPBACK) as session:
        provider = default_registry(session, github_api_base_url=api).get("gh", "u/r/HEAD")
        assert await provider.get_resolved_ref() == SHA
    assert len(fake.requests) == 1


async def test_a_provider_without_a_session_opens_a_strict_one(
    aiohttp_server: AiohttpServer,
) -> None:
    fake = FakeGitHub()
    fake.add_repo("u", "r", {"HEAD": SHA})
    api = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    async with GitHubRepoProvider("u/r/HEAD", api_base_url=api, access_token="") as provider:
        with pytest.raises(DestinationRefused):
            await provider.get_resolved_ref()
    assert fake.requests == []


async def test_redirect_to_a_refused_address_is_refused(redirector: Seen, other_host: Seen) -> None:
    """The DOI resolver (allowed) sends the provider on to 127.0.0.2 (not allowed)."""
    async with guarded_session(ONLY_ONE) as session:
        zenodo = ZenodoProvider(
            "10.5281/zenodo.3242074", doi_resolver_url=f"{redirector.url}/doi", session=session
        )
        with pytest.raises(DestinationRefused) as info:
            await zenodo.get_resolved_ref()
    assert info.value.address == "127.0.0.2"
    assert redirector.paths == ["/doi/10.5281/zenodo.3242074"]
    assert other_host.paths == []  # the redirect was never followed

    # The same redirect, followed when both hosts are allowed: the check is the only difference.
    async with guarded_session(LOOPBACK) as session:
        async with session.get(f"{redirector.url}/records/1") as response:
            assert (response.status, str(response.url)) == (200, f"{other_host.url}/records/1")
    assert other_host.paths == ["/records/1"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "0x7f000002",  # a name to aiohttp: its resolver turns it into 127.0.0.2
        "2130706434",  # aiohttp refuses the non-canonical literal itself
        "[::ffff:127.0.0.2]",
        "[::1]",
        "localhost",
    ],
)
async def test_literal_forms_and_names_are_checked(other_host: Seen, host: str) -> None:
    port = other_host.url.rsplit(":", 1)[1]
    async with guarded_session(STRICT) as session:
        with pytest.raises((DestinationRefused, aiohttp.InvalidURL)):
            async with session.get(f"http://{host}:{port}/"):
                pass
    assert other_host.paths == []


class FlippingResolver(AbstractResolver):
    """A name that resolves to an allowed address once and to a refused one next time."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers.pop(0)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def test_rebinding_is_checked_on_the_address_connected_to(other_host: Seen) -> None:
    port = other_host.url.rsplit(":", 1)[1]
    policy = OutboundPolicy.from_cidrs(["127.0.0.2/32"])
    resolver = FlippingResolver(["127.0.0.2", "127.0.0.3"])
    connector = GuardedConnector(policy, resolver=resolver, use_dns_cache=False, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://rebind.test:{port}/first") as response:
            assert response.status == 200
        with pytest.raises(DestinationRefused) as info:
            async with session.get(f"http://rebind.test:{port}/second"):
                pass
    assert info.value.address == "127.0.0.3"
    assert other_host.paths == ["/first"]


# -- wiring ----------------------------------------------------------------------------------


async def test_providers_need_a_guarded_session() -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(TypeError, match="guarded_session"):
            default_registry(plain)
    async with aiohttp.ClientSession(connector=GuardedConnector(STRICT), trust_env=True) as env:
        with pytest.raises(TypeError):
            session_policy(env)


async def test_config_reaches_the_providers_and_git() -> None:
    config = load_config(env={}, overrides={"allowed_outbound_networks": ["10.20.0.0/16"]})
    async with provider_session(config) as session:
        policy = session_policy(session)
        assert policy == OutboundPolicy.from_cidrs(["10.20.0.0/16"])
        registry = providers_from_config(config, session)
        git_provider = registry.get("git", "http%3A%2F%2F10.20.0.9%2Fr.git/" + SHA)
        assert git_provider.outbound == policy
        assert await git_provider.get_resolved_ref() == SHA
        refused = registry.get("git", "http%3A%2F%2F10.21.0.9%2Fr.git/" + SHA)
        with pytest.raises(DestinationRefused):
            await refused.get_resolved_ref()


async def test_refusal_is_a_client_error_in_the_failed_event() -> None:
    config = load_config(env={})
    spec = quote("http://169.254.169.254/latest/meta-data/", safe="") + f"/{SHA}"
    async with provider_session(config) as session:
        providers = providers_from_config(config, session)

        async def resolve_path(path: str) -> Resolved:
            return await resolve(
                path, providers=providers, policy=policy_from_config(config), image_prefix="r/b-"
            )

        async def never(*args: Any) -> Any:
            raise AssertionError("nothing may happen after a refused resolve")

        flow = LaunchFlow(
            resolve=resolve_path,
            image_exists=never,
            builds=None,  # type: ignore[arg-type]
            launcher=None,
            check_quota=never,
        )
        request = LaunchRequest(provider_prefix="git", spec=spec, launch_host="http://b/")
        events = [event async for event in flow.run(request)]
    assert [e.phase for e in events] == [Phase.FAILED]
    wire = events[0].to_wire()
    assert wire["status_code"] == 403
    assert wire["message"].startswith(
        "Refusing to connect to 169.254.169.254: a link-local address "
        "(allowed_outbound_networks does not list it)."
    )


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


def test_a_bad_network_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "binder.yaml"
    config.write_text("allowed_outbound_networks:\n  - 10.0.0.1/8\n")
    proc = _run_cli("serve", "--config", str(config), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "swarmbinder: error: config option 'allowed_outbound_networks': '10.0.0.1/8' "
        "is not a network in CIDR notation: 10.0.0.1/8 has host bits set"
    ]
    proc = _run_cli("show-config", SWARMBINDER_ALLOWED_OUTBOUND_NETWORKS="[localhost]")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("swarmbinder: error: config option 'allowed_outbound_networks': ")


def test_the_example_config_allows_loopback() -> None:
    config = load_config(REPO_ROOT / "tests" / "config" / "test.yaml", env={})
    assert config.bans.allowed_outbound_networks == ("127.0.0.0/8",)
    assert load_config(env={}).bans.allowed_outbound_networks == ()


# -- git ls-remote -------------------------------------------------------------------------


@dataclass
class GitHTTP:
    """stack/gitserver.py (git smart HTTP) on 127.0.0.1, one repository, its request log."""

    port: int
    head: str
    log: Path

    def requests(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if '"GET ' in line]


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # a Python start-up: seconds on a loaded machine
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the git server on {host}:{port} did not start")


@pytest.fixture(scope="module")
def git_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHTTP]:
    base = tmp_path_factory.mktemp("git-http")
    work = base / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work)
    root = base / "served"
    root.mkdir()
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), cwd=base)
    log = base / "requests.log"
    port = free_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "stack" / "gitserver.py"), str(root), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_for_port("127.0.0.1", port, proc)
        yield GitHTTP(port, head, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _git_spec(url: str, ref: str = "main") -> str:
    return f"{quote(url, safe='')}/{ref}"


async def test_git_ls_remote_works_when_allowed(git_http: GitHTTP) -> None:
    url = f"http://127.0.0.1:{git_http.port}/repo.git"
    provider = GitRepoProvider(_git_spec(url), outbound=LOOPBACK)
    assert await provider.get_resolved_ref() == git_http.head


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "0x7f000001", "2130706433", "[::ffff:127.0.0.1]", "[::1]"],
)
async def test_git_ls_remote_is_refused_before_git_runs(
    git_http: GitHTTP, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    async def no_git(*args: object, **kwargs: object) -> None:
        raise AssertionError("git ran for a refused destination")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_git)
    before = git_http.requests()
    provider = GitRepoProvider(_git_spec(f"http://{host}:{git_http.port}/repo.git"))
    with pytest.raises(DestinationRefused) as info:
        await provider.get_resolved_ref()
    assert "allowed_outbound_networks does not list it" in info.value.user_message
    assert git_http.requests() == before


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "git://10.0.0.5/repo.git",
        "ssh://git@[fd00::1]/repo.git",
        "git@192.168.1.1:repo.git",
    ],
)
async def test_git_full_sha_to_a_refused_address_is_refused_without_network(url: str) -> None:
    """No ls-remote is needed for a full sha, but the build would clone from there."""
    with pytest.raises(DestinationRefused):
        await GitRepoProvider(_git_spec(url, SHA)).get_resolved_ref()


async def test_git_name_resolving_to_a_refused_address(monkeypatch: pytest.MonkeyPatch) -> None:
    async def internal(host: str, port: int) -> list[str]:
        assert (host, port) == ("git.corp.example", 443)
        return ["10.1.2.3"]

    monkeypatch.setattr(outbound, "lookup", internal)
    provider = GitRepoProvider(_git_spec("https://git.corp.example/repo.git"))
    with pytest.raises(DestinationRefused) as info:
        await provider.get_resolved_ref()
    assert info.value.user_message == (
        "Refusing to connect to git.corp.example: it resolves to a private address "
        "(allowed_outbound_networks does not list it)."
    )


async def test_git_is_pinned_to_the_checked_address(
    git_http: GitHTTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """curl connects where our one lookup said, not where its own lookup would: the name
    below resolves nowhere else, so answering at all proves the pin (no rebinding window)."""
    looked_up: list[str] = []

    async def pinned(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(outbound, "lookup", pinned)
    url = f"http://Git.Rebind.invalid:{git_http.port}/repo.git"
    provider = GitRepoProvider(_git_spec(url), outbound=LOOPBACK)
    assert await provider.get_resolved_ref() == git_http.head
    assert looked_up == ["git.rebind.invalid"]


async def test_git_does_not_follow_redirects(git_http: GitHTTP, other_host: Seen) -> None:
    """A git server on an allowed address redirects to another (here 127.0.0.2): git must not
    follow, since nobody checked where the redirect leads."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"{other_host.url}{request.path_qs}")

    paths: list[str] = []
    runner = web.AppRunner(_recording(paths, redirect))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        provider = GitRepoProvider(
            _git_spec(f"http://127.0.0.1:{port}/repo.git"), outbound=LOOPBACK
        )
        with pytest.raises(SpecError, match="redirects elsewhere") as info:
            await provider.get_resolved_ref()
        assert not isinstance(info.value, DestinationRefused)
    finally:
        await runner.cleanup()
    assert paths and paths[0].startswith("/repo.git/info/refs")
    assert other_host.paths == []


@pytest.mark.swarm
async def test_git_against_the_test_grounds_server(testground: dict[str, Any]) -> None:
    info = testground["repos"]["binder-dockerfile"]
    spec = _git_spec(info["url"], "main")
    allowed = OutboundPolicy.from_cidrs(ground_outbound(testground))
    assert await GitRepoProvider(spec, outbound=allowed).get_resolved_ref() == info["head"]
    with pytest.raises(DestinationRefused):
        await GitRepoProvider(spec).get_resolved_ref()


def test_ground_outbound_lists_the_multinode_git_host() -> None:
    assert ground_outbound({"git_base_url": "http://127.0.0.1:8480/"}) == [
        "127.0.0.0/8",
        "::1/128",
    ]
    multinode = ground_outbound({"git_base_url": "http://172.30.0.9:8480/"})
    assert multinode[-1] == "172.30.0.9/32"
    assert all(ipaddress.ip_network(n) for n in multinode)
    assert json.loads(json.dumps(multinode)) == multinode
