"""HubClient and Launcher against an in-process fake JupyterHub: retries, 4xx, progress."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from swarmbinder import userservers
from swarmbinder.errors import LaunchFailed
from swarmbinder.events import Phase
from swarmbinder.hubclient import Backoff, HubClient, HubRequestFailed, HubUnavailable
from swarmbinder.launcher import Launcher
from swarmbinder.swarm import SwarmClient, TaskState, TaskStateName

FAST = Backoff(attempts=4, start=0.01, cap=0.02)
HUB_CONFIG = Path(__file__).resolve().parent.parent / "stack" / "hub" / "jupyterhub_config.py"

ServerFactory = Callable[[web.Application], Any]


class FakeHub:
    """Answers from a script: each route pops its next (status, body) until one is left."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.script: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.progress: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/hub/api/{tail:.*}", self.handle)

    def on(self, method: str, pattern: str, *answers: tuple[int, Any]) -> None:
        self.script[(method, pattern)] = list(answers)

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and re.fullmatch(pattern, p))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body = await request.json() if request.can_read_body else None
        self.calls.append((request.method, path, body))
        if path.endswith("/progress"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in self.progress:
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
            # No events scripted: a spawn that stays pending, as JupyterHub's keepalives show,
            # until the client goes away and a write fails.
            while not self.progress:
                await response.write(b":keepalive\n\n")
                await asyncio.sleep(0.05)
            return response
        for (method, pattern), answers in self.script.items():
            if method == request.method and re.fullmatch(pattern, path):
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                if status == 204:
                    return web.Response(status=204)
                return web.json_response(payload, status=status)
        return web.json_response({"status": 404, "message": "Not Found"}, status=404)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeHub, HubClient]]:
    hub = FakeHub()
    server = TestServer(hub.app)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield (
            hub,
            HubClient(str(server.make_url("/hub/api")), "secret-token", session, backoff=FAST),
        )
    await server.close()


async def test_5xx_is_retried_until_it_succeeds(fake: tuple[FakeHub, HubClient]) -> None:
    hub, client = fake
    hub.on("POST", "/users/ann", (503, {"message": "busy"}), (502, {}), (201, {"name": "ann"}))
    await client.create_user("ann")
    assert hub.count("POST", "/users/ann") == 3


async def test_a_4xx_is_never_retried_and_says_what_the_hub_said(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/ann/server", (400, {"status": 400, "message": "image required"}))
    with pytest.raises(HubRequestFailed) as caught:
        await client.start_server("ann", "", {})
    assert caught.value.status == 400
    assert caught.value.user_message == "Launch failed: image required"
    assert hub.count("POST", "/users/ann/server") == 1


async def test_the_hub_refusing_our_token_is_a_503_not_the_launchs_fault(
    fake: tuple[FakeHub, HubClient],
) -> None:
    # What JupyterHub answers every API request with while its database is away.
    hub, client = fake
    hub.on(
        "POST", "/users/ann", (403, {"status": 403, "message": "Missing or invalid credentials."})
    )
    with pytest.raises(HubRequestFailed) as caught:
        await client.create_user("ann")
    assert caught.value.status_code == 503
    assert "database" in caught.value.user_message
    assert "Missing or invalid credentials" in caught.value.message  # for the log
    assert hub.count("POST", "/users/ann") == 1
    # A 4xx about the request itself stays the launch's failure, with the hub's words.
    hub.on("POST", "/users/ann/server", (400, {"status": 400, "message": "image required"}))
    with pytest.raises(HubRequestFailed) as bad:
        await client.start_server("ann", "", {})
    assert bad.value.status_code == 500


async def test_5xx_that_persists_gives_up_with_a_hub_down_message(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("GET", "/users/ann", (500, {"message": "boom"}))
    with pytest.raises(HubRequestFailed) as caught:
        await client.get_user("ann")
    assert hub.count("GET", "/users/ann") == FAST.attempts
    assert "not answering" in caught.value.user_message
    assert caught.value.status_code == 503


async def test_a_hub_that_does_not_answer_is_hub_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with aiohttp.ClientSession() as session:
        client = HubClient(f"http://127.0.0.1:{port}/hub/api", "t" * 16, session, backoff=FAST)
        with pytest.raises(HubUnavailable) as caught:
            await client.version()
    assert caught.value.status_code == 503


async def test_a_conflict_on_a_retry_means_the_first_try_got_through(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/ann", (504, {}), (409, {"message": "User ann already exists"}))
    await client.create_user("ann")
    hub.on("POST", "/users/bob", (409, {"message": "User bob already exists"}))
    with pytest.raises(HubRequestFailed):  # but on the first try it is a real conflict
        await client.create_user("bob")


async def test_a_spawn_that_failed_with_500_is_reported_not_retried(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/ann/server", (500, {"message": "Internal Server Error"}))
    hub.progress = [{"progress": 100, "failed": True, "message": "Spawn failed: no image"}]
    with pytest.raises(LaunchFailed) as caught:
        await client.start_server("ann", "", {"image": "x"})
    assert caught.value.user_message == "Launch failed: Spawn failed: no image"
    assert hub.count("POST", "/users/ann/server") == 1


async def test_list_users_follows_pagination(fake: tuple[FakeHub, HubClient]) -> None:
    hub, client = fake

    def page(names: list[str], following: dict[str, Any] | None) -> tuple[int, Any]:
        items = [{"name": n, "servers": {"": {"ready": True, "url": f"/user/{n}/"}}} for n in names]
        return 200, {"items": items, "_pagination": {"next": following}}

    hub.on("GET", "/users", page(["a", "b"], {"offset": 2}), page(["c"], None))
    assert await client.active_servers() == {("a", ""), ("b", ""), ("c", "")}
    assert hub.count("GET", "/users") == 2


class NoTasksSwarm:
    """The part of SwarmClient the launcher uses, with a server that starts fine."""

    def __init__(self, tasks: list[TaskState] | None = None) -> None:
        self.removed: list[str] = []
        self._tasks = tasks or []

    async def tasks(self, service_name: str) -> list[TaskState]:
        return self._tasks

    async def remove_service(self, name: str, *, settle_seconds: float = 10) -> bool:
        self.removed.append(name)
        return True


def launcher_for(client: HubClient, swarm: NoTasksSwarm) -> Launcher:
    return Launcher(
        client,
        cast(SwarmClient, swarm),
        hub_url="https://hub.example/",
        registry=None,
        launch_timeout=5,
        task_poll_interval=0.01,
    )


async def run_launch(launcher: Launcher) -> list[Any]:
    events = launcher.launch(
        "reg/binder-x:1",
        repo_url="https://github.com/org/repo",
        provider_spec="gh/org/repo/main",
        ref_url="https://github.com/org/repo/tree/abc",
        binder_request="v2/gh/org/repo/main",
        binder_persistent_request="v2/gh/org/repo/abc",
        binder_launch_host="https://binder.example/",
        binder_client_ip="2001:db8::7",
    )
    return [event async for event in events]


async def test_progress_messages_become_launching_events_then_ready(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/[^/]+", (201, {}))
    hub.on("POST", "/users/[^/]+/server", (202, {}))
    hub.progress = [
        {"progress": 10, "message": "Server requested"},
        {"progress": 50, "message": "Spawning server..."},
        {"progress": 100, "ready": True, "message": "Server ready", "url": "/user/x/"},
    ]
    swarm = NoTasksSwarm()
    events = await run_launch(launcher_for(client, swarm))
    assert [(e.phase, e.message) for e in events[:-1]] == [
        (Phase.LAUNCHING, "Server requested\n"),
        (Phase.LAUNCHING, "Spawning server...\n"),
    ]
    ready = events[-1]
    user = hub.calls[0][1].removeprefix("/users/")
    assert user.startswith("org-repo-")
    assert ready.phase is Phase.READY
    assert ready.fields["url"] == f"https://hub.example/user/{user}/"
    [options] = [body for m, p, body in hub.calls if m == "POST" and p.endswith("/server")]
    assert options["token"] == ready.fields["token"] and len(options["token"]) >= 16
    assert options["image"] == "reg/binder-x:1"
    assert options["binder_persistent_request"] == "v2/gh/org/repo/abc"
    # BinderHub's binder_client_ip reaches the spawner's user options and the ready event.
    assert options["binder_client_ip"] == ready.fields["binder_client_ip"] == "2001:db8::7"
    assert hub.count("DELETE", ".*") == 0 and swarm.removed == []


async def test_a_refused_launch_deletes_the_temporary_user(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/[^/]+", (201, {}))
    hub.on("POST", "/users/[^/]+/server", (400, {"message": "Image y not in allowed list"}))
    hub.on("DELETE", "/users/[^/]+/server", (204, None))
    hub.on("DELETE", "/users/[^/]+", (204, None))
    swarm = NoTasksSwarm()
    with pytest.raises(LaunchFailed) as caught:
        await run_launch(launcher_for(client, swarm))
    assert caught.value.user_message == "Launch failed: Image y not in allowed list"
    user = hub.calls[0][1].removeprefix("/users/")
    assert hub.count("DELETE", f"/users/{user}") == 1
    assert swarm.removed == [f"jupyter-{user.replace('-', '-2d')}"]


async def test_a_failed_task_ends_the_launch_before_the_hub_notices(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/[^/]+", (201, {}))
    hub.on("POST", "/users/[^/]+/server", (202, {}))
    hub.on("DELETE", "/users/[^/]+.*", (204, None))
    hub.progress = []  # the hub says nothing; only Swarm knows
    failed = TaskState(
        id="t",
        service_id="s",
        node_id="n",
        state=TaskStateName.REJECTED,
        desired_state="shutdown",
        message="preparing",
        error="No such image: reg/binder-x:1",
        exit_code=None,
        container_id="",
        timestamp="",
    )
    with pytest.raises(LaunchFailed) as caught:
        await run_launch(launcher_for(client, NoTasksSwarm([failed])))
    assert "No such image" in caught.value.user_message


def test_the_hub_config_labels_are_the_ones_swarmbinder_reads() -> None:
    text = HUB_CONFIG.read_text()
    for name in (
        "LABEL_ROLE",
        "ROLE_USER_SERVER",
        "LABEL_HUB",
        "LABEL_USER",
        "LABEL_SERVER_NAME",
        "LABEL_IMAGE",
        "LABEL_REPO_URL",
        "LABEL_SPEC",
    ):
        assert f'{name} = "{getattr(userservers, name)}"' in text, name


def test_swarm_timestamps_with_nanoseconds_parse() -> None:
    parsed = userservers.parse_swarm_time("2026-11-22T03:44:57.123456789Z")
    assert parsed is not None and parsed.isoformat() == "2026-11-22T03:44:57.123456+00:00"
    assert userservers.parse_swarm_time("") is None
    assert userservers.parse_swarm_time("yesterday") is None


async def test_an_image_without_a_jupyter_server_is_named_as_the_reason(
    fake: tuple[FakeHub, HubClient],
) -> None:
    hub, client = fake
    hub.on("POST", "/users/[^/]+", (201, {}))
    hub.on("POST", "/users/[^/]+/server", (202, {}))
    hub.on("DELETE", "/users/[^/]+.*", (204, None))
    hub.progress = []
    # the hub's launcher script exits 127 (sh: command not found) when no server is there
    exited = TaskState(
        id="t",
        service_id="s",
        node_id="n",
        state=TaskStateName.FAILED,
        desired_state="shutdown",
        message="started",
        error="",
        exit_code=127,
        container_id="",
        timestamp="",
    )
    with pytest.raises(LaunchFailed) as caught:
        await run_launch(launcher_for(client, NoTasksSwarm([exited])))
    assert "could not start: the image has no Jupyter server" in caught.value.user_message
