"""``/build/<provider>/<spec>`` over HTTP, with the flow and admission faked.

What an EventSource client sees: headers, frames, keepalives, errors as ``failed`` events with
their status, the stream held open after ``ready``, and a client that leaves being noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from swarmbinder.app import add_build_routes
from swarmbinder.config import load_config
from swarmbinder.errors import SpecBanned, SwarmbinderError
from swarmbinder.events import BuildEvent, Phase, parse_sse
from swarmbinder.handlers import build as build_handler
from swarmbinder.handlers import streamwatch
from swarmbinder.hubauth import NOT_LOGGED_IN_MESSAGE, NotLoggedIn
from swarmbinder.keys import ADMISSION, CONFIG, FLOW
from swarmbinder.launch_flow import LaunchRequest
from swarmbinder.policy.admission import Admission, Admitted

SSE = {"Accept": "text/event-stream"}


class FakeFlow:
    def __init__(self, events: list[BuildEvent], *, hang_after: bool = False) -> None:
        self.events = events
        self.hang_after = hang_after
        self.requests: list[LaunchRequest] = []
        self.closed = asyncio.Event()

    async def run(
        self, request: LaunchRequest, direct: object = None
    ) -> AsyncGenerator[BuildEvent, None]:
        self.requests.append(request)
        try:
            for event in self.events:
                yield event
            if self.hang_after:
                await asyncio.Event().wait()
        finally:
            self.closed.set()


class FakeAdmission:
    def __init__(self, error: SwarmbinderError | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def admit(
        self,
        *,
        peer: str,
        headers: Mapping[str, str],
        path: str,
        build_token: str | None,
        operator: bool = False,
    ) -> Admitted:
        self.calls.append(
            {"peer": peer, "path": path, "build_token": build_token, "operator": operator}
        )
        if self.error is not None:
            raise self.error
        return Admitted(client_ip=peer, have_build_token=build_token is not None)


def make_app(
    flow: FakeFlow, admission: FakeAdmission | None = None, **overrides: object
) -> web.Application:
    app = web.Application()
    app[CONFIG] = load_config(env={}, overrides=overrides)
    app[FLOW] = flow  # type: ignore[assignment]
    app[ADMISSION] = admission or FakeAdmission()  # type: ignore[assignment]
    add_build_routes(app)
    return app


READY = BuildEvent.ready(
    url="http://hub/user/x/",
    token="t",
    image="i:1",
    repo_url="r",
    binder_ref_url="u",
    binder_launch_host="h",
    binder_request="v2/gh/a/b/main",
    binder_persistent_request="v2/gh/a/b/" + "1" * 40,
)


async def test_events_are_written_as_data_frames_with_sse_headers(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_handler, "HOLD_OPEN_SECONDS", 0.2)
    flow = FakeFlow([BuildEvent.waiting(), BuildEvent.log(Phase.BUILDING, "step 1"), READY])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main", headers=SSE)

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = parse_sse(await response.read())
    assert [e["phase"] for e in events] == ["waiting", "building", "ready"]
    assert events[-1]["url"] == "http://hub/user/x/"
    request = flow.requests[0]
    assert (request.provider_prefix, request.spec) == ("gh", "org/repo/main")
    assert request.launch_host == f"http://{response.url.host}:{response.url.port}/"


async def test_git_spec_keeps_its_escapes(aiohttp_client: Any) -> None:
    flow = FakeFlow([BuildEvent.failed("nope", 404)])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    await (
        await client.get("/build/git/https%3A%2F%2Fexample.org%2Fr.git/HEAD", headers=SSE)
    ).read()

    spec = flow.requests[0].spec
    assert spec.endswith("%2Fexample.org%2Fr.git/HEAD")


async def test_missing_accept_header_is_400_with_failed_event(aiohttp_client: Any) -> None:
    flow = FakeFlow([])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main")

    assert response.status == 400
    events = parse_sse(await response.read())
    assert events == [
        {
            "phase": "failed",
            "status_code": 400,
            "message": "Missing Accept header: text/event-stream\n",
        }
    ]
    assert flow.requests == []


async def test_refused_admission_keeps_its_status(aiohttp_client: Any) -> None:
    admission = FakeAdmission(SpecBanned("org/repo/main"))
    flow = FakeFlow([])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow, admission))

    response = await client.get("/build/gh/org/repo/main?build_token=abc", headers=SSE)

    assert response.status == 403
    [event] = parse_sse(await response.read())
    assert event["phase"] == "failed" and event["status_code"] == 403
    assert admission.calls[0]["build_token"] == "abc"
    assert admission.calls[0]["path"] == "gh/org/repo/main"
    assert flow.requests == []


async def test_build_only_outside_api_mode_is_refused(aiohttp_client: Any) -> None:
    flow = FakeFlow([])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main?build_only=true", headers=SSE)

    assert response.status == 400
    [event] = parse_sse(await response.read())
    assert "enable_api_only_mode" in event["message"]
    assert flow.requests == []


async def test_build_only_in_api_mode_reaches_the_flow(aiohttp_client: Any) -> None:
    flow = FakeFlow([BuildEvent.image_ready("i:1")])
    app = make_app(flow, **{"enable_api_only_mode": True})
    client: TestClient[Any, Any] = await aiohttp_client(app)

    response = await client.get("/build/gh/org/repo/main?build_only=true", headers=SSE)

    events = parse_sse(await response.read())
    assert [e["phase"] for e in events] == ["ready"]
    assert flow.requests[0].build_only


async def test_an_operators_build_only_request_is_not_asked_for_a_hub_login(
    aiohttp_client: Any,
) -> None:
    """With auth_enabled, a prebuild through the service (admin token, build_only) gets its
    build; the same token on a launch, or a wrong token, still meets the login check."""
    asked: list[Mapping[str, str]] = []

    async def authenticate(headers: Mapping[str, str]) -> str:
        asked.append(headers)
        raise NotLoggedIn()

    flow = FakeFlow([BuildEvent.image_ready("i:1")])
    hub = {"auth_enabled": True, "hub_url": "http://hub.test/", "hub_api_token": "h"}
    app = make_app(flow, **hub, admin_token="op-token")
    app[ADMISSION] = Admission(
        client_ip=lambda peer, headers: peer,
        check_network=lambda ip: None,
        authenticate=authenticate,
    )
    client: TestClient[Any, Any] = await aiohttp_client(app)
    operator = {**SSE, "Authorization": "Bearer op-token"}

    response = await client.get("/build/gh/org/repo/main?build_only=true", headers=operator)
    events = parse_sse(await response.read())
    assert response.status == 200 and [e["phase"] for e in events] == ["ready"]
    assert flow.requests[0].build_only and flow.requests[0].username is None
    assert asked == []

    response = await client.get("/build/gh/org/repo/main", headers=operator)
    [event] = parse_sse(await response.read())
    assert response.status == 403 and event["message"].strip() == NOT_LOGGED_IN_MESSAGE
    assert len(asked) == 1

    wrong = {**SSE, "Authorization": "Bearer not-it"}
    response = await client.get("/build/gh/org/repo/main?build_only=true", headers=wrong)
    [event] = parse_sse(await response.read())
    assert response.status == 400 and "enable_api_only_mode" in event["message"]
    assert len(flow.requests) == 1


async def test_the_admin_token_marks_only_build_only_requests_as_an_operators(
    aiohttp_client: Any,
) -> None:
    admission = FakeAdmission()
    flow = FakeFlow([BuildEvent.failed("no such repository", 404)])
    app = make_app(flow, admission, **{"enable_api_only_mode": True, "admin_token": "op"})
    client: TestClient[Any, Any] = await aiohttp_client(app)
    token = {**SSE, "Authorization": "Bearer op"}

    for path, headers in (
        ("/build/gh/a/b/main?build_only=true", token),
        ("/build/gh/a/b/main", token),
        ("/build/gh/a/b/main?build_only=true", SSE),
    ):
        await (await client.get(path, headers=headers)).read()

    assert [call["operator"] for call in admission.calls] == [True, False, False]


async def test_failed_event_ends_the_stream_at_once(aiohttp_client: Any) -> None:
    flow = FakeFlow([BuildEvent.waiting(), BuildEvent.failed("build failed: exit 3", 500)])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main", headers=SSE)
    body = await asyncio.wait_for(response.read(), 2)

    assert parse_sse(body)[-1]["message"] == "build failed: exit 3\n"


async def test_stream_stays_open_after_ready_with_keepalives(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamwatch, "KEEPALIVE_INTERVAL", 0.1)
    flow = FakeFlow([READY])
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main", headers=SSE)
    received = b""
    async with asyncio.timeout(5):
        while received.count(b":keepalive") < 2:
            received += await response.content.readany()

    assert parse_sse(received)[0]["phase"] == "ready"
    assert not response.content.at_eof()
    response.close()


async def test_keepalives_flow_while_the_build_is_quiet(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamwatch, "KEEPALIVE_INTERVAL", 0.1)
    flow = FakeFlow([BuildEvent.waiting()], hang_after=True)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main", headers=SSE)
    received = b""
    async with asyncio.timeout(5):
        while b":keepalive" not in received:
            received += await response.content.readany()
    response.close()


async def test_client_that_leaves_stops_its_flow_quickly(aiohttp_client: Any) -> None:
    flow = FakeFlow([BuildEvent.waiting()], hang_after=True)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(flow))

    response = await client.get("/build/gh/org/repo/main", headers=SSE)
    await response.content.readany()
    response.close()

    # Noticed within the disconnect poll, not at the next keepalive or build event.
    await asyncio.wait_for(flow.closed.wait(), 3)
