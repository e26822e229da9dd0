"""What a logged-in user's launch may start, decided before the hub is asked to start anything.

BinderHub's rules: without named servers a user has one (default) server, refused while it
runs; with them each launch is a new named server, refused once the user has
``named_server_limit_per_user``. And a server name must leave SwarmSpawner's service name within
Swarm's 63 characters. Admission asks for the login before the rate limit counts a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from swarmbinder import naming
from swarmbinder.errors import SwarmbinderError
from swarmbinder.hubauth import NotLoggedIn
from swarmbinder.hubclient import HubServer, HubUser
from swarmbinder.launcher import Launcher, NoRoomForServerName, ServerConflict
from swarmbinder.policy.admission import Admission


class FakeHub:
    """Only what a refusal may touch; anything that would start or create records it."""

    def __init__(self, servers: list[str]) -> None:
        self.user = HubUser(
            name="alice",
            servers={s: HubServer(name=s, ready=True, pending=None, url="") for s in servers},
        )
        self.changes: list[str] = []

    async def get_user(self, name: str) -> HubUser | None:
        return self.user if name == self.user.name else None

    async def create_user(self, name: str) -> None:
        self.changes.append(f"create {name}")

    async def start_server(self, name: str, server_name: str, options: Mapping[str, Any]) -> bool:
        self.changes.append(f"start {name}/{server_name}")
        raise AssertionError("a refused launch must not start a server")


async def launch(launcher: Launcher, username: str) -> None:
    async for _ in launcher.launch(
        "registry/binder-x:1",
        repo_url="https://github.com/org/repo",
        provider_spec="gh/org/repo/main",
        ref_url="https://github.com/org/repo/tree/abc",
        binder_request="v2/gh/org/repo/main",
        binder_persistent_request="v2/gh/org/repo/abc",
        binder_launch_host="https://binder.test/",
        username=username,
    ):
        pass


def make_launcher(hub: FakeHub, **options: Any) -> Launcher:
    return Launcher(
        hub,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # the swarm is not reached before the hub starts a server
        hub_url="https://hub.test/",
        registry=None,
        **options,
    )


async def test_a_running_default_server_refuses_another_launch() -> None:
    hub = FakeHub([""])
    with pytest.raises(ServerConflict) as caught:
        await launch(make_launcher(hub), "alice")
    assert caught.value.status_code == 409
    assert caught.value.user_message == "User alice already has a running server."
    assert hub.changes == []


async def test_the_named_server_limit_refuses_a_launch_at_the_limit() -> None:
    hub = FakeHub(["one", "two", ""])  # the default server does not count
    launcher = make_launcher(hub, allow_named_servers=True, named_server_limit_per_user=2)
    with pytest.raises(ServerConflict) as caught:
        await launch(launcher, "alice")
    assert caught.value.status_code == 409
    assert "maximum of 2 named servers" in caught.value.user_message
    assert hub.changes == []


async def test_a_user_name_that_leaves_no_room_for_a_server_name_is_refused() -> None:
    name = "a" * (naming.MAX_SERVICE_NAME_LENGTH - len(naming.SPAWNER_PREFIX) - 12)
    hub = FakeHub([])
    hub.user = HubUser(name=name, servers={})
    with pytest.raises(NoRoomForServerName) as caught:
        await launch(make_launcher(hub, allow_named_servers=True), name)
    assert caught.value.status_code == 400
    assert "too long for a named server" in caught.value.user_message
    assert hub.changes == []


async def test_named_server_names_fit_the_service_name_limit() -> None:
    user = "a.long-user.name@example.org"
    budget = naming.temporary_name_budget(user)
    for repo in ("https://github.com/" + "x" * 80 + "/" + "y-" * 40, "https://github.com/a/b"):
        server = naming.temporary_name(repo, budget=budget)
        assert len(naming.spawner_service_name(user, server)) <= naming.MAX_SERVICE_NAME_LENGTH


async def test_no_login_is_refused_before_the_rate_limit_counts() -> None:
    counted: list[str] = []

    async def nobody(headers: Mapping[str, str]) -> str:
        raise NotLoggedIn()

    async def alice(headers: Mapping[str, str]) -> str:
        return "alice"

    async def rate_limit(ip: str) -> None:
        counted.append(ip)

    def admission(authenticate: Any) -> Admission:
        return Admission(
            client_ip=lambda peer, headers: peer,
            check_network=lambda ip: None,
            rate_limit=rate_limit,
            authenticate=authenticate,
        )

    with pytest.raises(SwarmbinderError) as caught:
        await admission(nobody).admit(peer="1.2.3.4", headers={}, path="gh/a/b/c", build_token=None)
    assert caught.value.status_code == 403
    admitted = await admission(alice).admit(
        peer="1.2.3.4", headers={}, path="gh/a/b/c", build_token=None
    )
    assert admitted.username == "alice" and admitted.rate_limit is None
    assert counted == []
    anonymous = await admission(None).admit(
        peer="1.2.3.4", headers={}, path="gh/a/b/c", build_token=None
    )
    assert anonymous.username is None and counted == ["1.2.3.4"]
