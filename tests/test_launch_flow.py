"""The /build conversation, driven through fakes of the resolver, registry, builds and hub.

The real-engine versions of these paths live in test_build_api.py; here each branch of the
flow is pinned: which events, in which order, and what is left running when it stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest

from swarmbinder.buildjob import BuildRequest
from swarmbinder.errors import LaunchFailed, QuotaExceeded, SpecBanned
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.launch_flow import INTERNAL_ERROR_MESSAGE, LaunchFlow, LaunchRequest
from swarmbinder.resolve import Resolved

IMAGE = "127.0.0.1:5050/binder-repo-abc123:" + "a" * 40
REQUEST = BuildRequest(
    provider="git",
    spec="http%3A%2F%2Fgit%2Frepo.git/main",
    repo_url="http://git/repo.git",
    ref="a" * 40,
    build_slug="http://git/repo.git",
    image=IMAGE,
)
RESOLVED = Resolved(
    build=REQUEST,
    ref_url="http://git/repo.git",
    resolved_spec="http%3A%2F%2Fgit%2Frepo.git/" + "a" * 40,
)
LAUNCH = LaunchRequest(
    provider_prefix="git",
    spec=REQUEST.spec,
    launch_host="http://binder.example/",
    client_ip="198.51.100.4",
)


class FakeBuild:
    def __init__(self, events: list[BuildEvent], *, hang: bool = False) -> None:
        self._events = events
        self._hang = hang
        self.closed = False

    async def events(self, direct: object = None) -> AsyncIterator[BuildEvent]:
        try:
            for event in self._events:
                yield event
            if self._hang:
                await asyncio.Event().wait()
        finally:
            self.closed = True


class FakeBuilds:
    def __init__(self, build: FakeBuild) -> None:
        self.build = build
        self.requests: list[BuildRequest] = []

    async def request(self, request: BuildRequest) -> FakeBuild:
        self.requests.append(request)
        return self.build


class FakeLauncher:
    def __init__(self, *, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    async def launch(self, image: str, **kwargs: Any) -> AsyncIterator[BuildEvent]:
        self.calls.append({"image": image, **kwargs})
        try:
            yield BuildEvent.launching("Spawning server...")
            if self.fail is not None:
                raise self.fail
            yield BuildEvent.ready(
                url="http://hub.example/user/x/",
                token="tok",
                image=image,
                repo_url=kwargs["repo_url"],
                binder_ref_url=kwargs["ref_url"],
                binder_launch_host=kwargs["binder_launch_host"],
                binder_request=kwargs["binder_request"],
                binder_persistent_request=kwargs["binder_persistent_request"],
                binder_client_ip=kwargs["binder_client_ip"],
            )
        finally:
            self.closed = True


class Observer:
    def __init__(self) -> None:
        self.builds: list[str] = []
        self.launches: list[str] = []
        self.launched_paths: list[str] = []

    def build_started(self, build: BuildRequest) -> Callable[[str], None]:
        return self.builds.append

    def launch_started(self, build: BuildRequest) -> Callable[[str], None]:
        return self.launches.append

    def launched(self, request: LaunchRequest, resolved: Resolved) -> None:
        self.launched_paths.append(request.path)


def make_flow(
    *,
    exists: bool,
    build: FakeBuild | None = None,
    launcher: FakeLauncher | None = None,
    quota_error: QuotaExceeded | None = None,
    resolve_error: Exception | None = None,
    observer: Observer | None = None,
    resolved: Resolved = RESOLVED,
) -> tuple[LaunchFlow, FakeBuilds, list[str]]:
    quota_checks: list[str] = []
    builds = FakeBuilds(build or FakeBuild([]))

    async def resolve(path: str) -> Resolved:
        if resolve_error is not None:
            raise resolve_error
        assert path == LAUNCH.path
        return resolved

    async def image_exists(image: str) -> bool:
        return exists

    async def check_quota(resolved: Resolved) -> None:
        quota_checks.append(resolved.build.repo_url)
        if quota_error is not None:
            raise quota_error

    flow = LaunchFlow(
        resolve=resolve,
        image_exists=image_exists,
        builds=builds,
        launcher=launcher,
        check_quota=check_quota,
        observer=observer,
    )
    return flow, builds, quota_checks


async def collect(flow: LaunchFlow, request: LaunchRequest = LAUNCH) -> list[BuildEvent]:
    return [event async for event in flow.run(request)]


def phases(events: list[BuildEvent]) -> list[str]:
    return [str(event.phase) for event in events]


async def test_found_image_goes_straight_to_launch() -> None:
    observer = Observer()
    launcher = FakeLauncher()
    flow, builds, quota = make_flow(exists=True, launcher=launcher, observer=observer)

    events = await collect(flow)

    assert phases(events) == ["built", "launching", "launching", "ready"]
    assert events[0].message == "Found built image, launching...\n"
    assert events[0].to_wire()["imageName"] == IMAGE
    ready = events[-1].to_wire()
    assert ready["url"] == "http://hub.example/user/x/"
    assert ready["binder_request"] == f"v2/{LAUNCH.path}"
    assert ready["binder_persistent_request"] == f"v2/git/{RESOLVED.resolved_spec}"
    assert ready["binder_launch_host"] == "http://binder.example/"
    assert ready["binder_client_ip"] == "198.51.100.4"
    assert builds.requests == []
    assert quota == [REQUEST.repo_url]  # once, before the launch
    assert observer.launches == ["success"] and observer.launched_paths == [LAUNCH.path]


async def test_a_resolution_notice_is_the_first_event() -> None:
    """An old link's HEAD fallback is told in a ``waiting`` event before the launch goes on."""
    notice = "Could not resolve ref for x.\nTrying again with HEAD instead of master.\n"
    flow, _, _ = make_flow(
        exists=True, launcher=FakeLauncher(), resolved=dataclasses.replace(RESOLVED, notice=notice)
    )
    events = await collect(flow)
    assert phases(events) == ["waiting", "built", "launching", "launching", "ready"]
    assert events[0].to_wire() == {"phase": "waiting", "message": notice}


async def test_build_only_with_found_image_is_ready_without_launch() -> None:
    launcher = FakeLauncher()
    flow, _, _ = make_flow(exists=True, launcher=launcher)

    events = await collect(flow, LaunchRequest("git", REQUEST.spec, "h/", build_only=True))

    assert phases(events) == ["ready"]
    assert events[0].message == "Done! Found built image\n"
    assert events[0].to_wire()["imageName"] == IMAGE
    assert launcher.calls == []


async def test_missing_image_is_built_then_launched() -> None:
    build = FakeBuild(
        [
            BuildEvent.log(Phase.FETCHING, "cloning"),
            BuildEvent.log(Phase.BUILDING, "step 1/2"),
            BuildEvent.built(IMAGE),
        ]
    )
    observer = Observer()
    flow, builds, quota = make_flow(
        exists=False, build=build, launcher=FakeLauncher(), observer=observer
    )

    events = await collect(flow)

    assert phases(events) == [
        "waiting",
        "fetching",
        "building",
        "built",
        "launching",
        "launching",
        "ready",
    ]
    assert builds.requests == [REQUEST]
    assert quota == [REQUEST.repo_url, REQUEST.repo_url]  # before the build and the launch
    assert observer.builds == ["success"] and observer.launches == ["success"]
    assert build.closed


async def test_build_only_build_ends_ready_with_done_message() -> None:
    build = FakeBuild([BuildEvent.built(IMAGE)])
    flow, _, quota = make_flow(exists=False, build=build, launcher=FakeLauncher())

    events = await collect(flow, LaunchRequest("git", REQUEST.spec, "h/", build_only=True))

    assert phases(events) == ["waiting", "ready"]
    assert events[-1].message == "Done! Image built\n"
    assert events[-1].to_wire()["imageName"] == IMAGE
    assert quota == []  # nothing is launched, so no launch quota applies


async def test_failed_build_ends_the_flow_without_launch() -> None:
    build = FakeBuild(
        [BuildEvent.log(Phase.BUILDING, "step"), BuildEvent.failed("exit code 3", 500)],
        hang=True,
    )
    launcher = FakeLauncher()
    observer = Observer()
    flow, _, _ = make_flow(exists=False, build=build, launcher=launcher, observer=observer)

    events = await collect(flow)

    assert phases(events) == ["waiting", "building", "failed"]
    assert events[-1].message == "exit code 3\n"
    assert launcher.calls == []
    assert observer.builds == ["failure"]
    assert build.closed  # the subscription is closed, not left to the garbage collector


async def test_banned_spec_is_one_failed_event_with_its_status() -> None:
    flow, builds, _ = make_flow(exists=False, resolve_error=SpecBanned(REQUEST.spec))

    events = await collect(flow)

    assert phases(events) == ["failed"]
    wire = events[0].to_wire()
    assert wire["status_code"] == 403
    assert wire["message"].endswith("\n") and "not allowed" in wire["message"]
    assert builds.requests == []


async def test_quota_exceeded_refuses_before_building() -> None:
    error = QuotaExceeded(
        "Too many users running http://git/repo.git! Try again soon.",
        quota=1,
        used=1,
        scope="repo",
    )
    flow, builds, _ = make_flow(exists=False, launcher=FakeLauncher(), quota_error=error)

    events = await collect(flow)

    assert phases(events) == ["failed"]
    assert events[0].message == "Too many users running http://git/repo.git! Try again soon.\n"
    assert events[0].to_wire()["status_code"] == 429
    assert builds.requests == []


async def test_launch_failure_is_failed_event_and_not_counted_as_launched() -> None:
    launcher = FakeLauncher(fail=LaunchFailed("hub said 400", user_message="Image refused"))
    observer = Observer()
    flow, _, _ = make_flow(exists=True, launcher=launcher, observer=observer)

    events = await collect(flow)

    assert phases(events) == ["built", "launching", "launching", "failed"]
    assert events[-1].message == "Image refused\n"
    assert observer.launches == ["failure"] and observer.launched_paths == []
    assert launcher.closed


async def test_unexpected_error_is_reported_without_internals() -> None:
    flow, _, _ = make_flow(exists=False, resolve_error=KeyError("secret internals"))

    events = await collect(flow)

    assert phases(events) == ["failed"]
    assert events[0].message == INTERNAL_ERROR_MESSAGE + "\n"
    assert "secret" not in events[0].message


async def test_no_hub_configured_fails_clearly() -> None:
    flow, _, _ = make_flow(exists=True, launcher=None)

    events = await collect(flow)

    assert phases(events) == ["built", "failed"]
    assert "no JupyterHub" in events[-1].message


async def test_client_leaving_mid_build_closes_only_its_subscription() -> None:
    build = FakeBuild([BuildEvent.log(Phase.BUILDING, "step 1")], hang=True)
    observer = Observer()
    flow, builds, _ = make_flow(exists=False, build=build, observer=observer)

    async with aclosing(flow.run(LAUNCH)) as events:
        seen = [await anext(events), await anext(events)]
    assert phases(seen) == ["waiting", "building"]

    assert build.closed
    assert observer.builds == ["failure"]  # the in-progress gauge is released at once
    assert builds.requests == [REQUEST]


@pytest.mark.parametrize("cancel_during", ["build", "launch"])
async def test_cancelled_request_releases_everything(cancel_during: str) -> None:
    build = FakeBuild([BuildEvent.log(Phase.BUILDING, "step 1")], hang=True)
    launcher = FakeLauncher()
    observer = Observer()
    flow, _, _ = make_flow(
        exists=cancel_during == "launch", build=build, launcher=launcher, observer=observer
    )
    reached = asyncio.Event()

    async def consume() -> None:
        # As the /build handler does: the flow is closed when its consumer is cancelled.
        async with aclosing(flow.run(LAUNCH)) as events:
            async for event in events:
                if event.phase in (Phase.BUILDING, Phase.READY):
                    reached.set()
                    await asyncio.Event().wait()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    if cancel_during == "build":
        assert build.closed and observer.builds == ["failure"]
    else:
        assert launcher.closed and observer.launches == ["success"]
