"""``build_queue_limit`` against the real swarm: queued builds are counted in Swarm, so the cap
holds for a replica that never saw the queued builds, and what is refused is only a new build.

One slow build runs (its Dockerfile sleeps), one waits behind ``concurrent_build_limit: 1``;
both are removed at the end. The refused request's events are read from the launch flow, as
the ``/build`` handler would relay them. The rules in milliseconds:
test_build_rules.py::test_queue_is_capped_across_replicas_but_joining_never_is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from build_fixtures import (
    GitRepo,
    build_settings,
    cleanup_builds,
    git_repo,
    make_request,
    run_id,
    slow_dockerfile,
    swarm,
)

from swarmbinder.buildjob import BuildRequest
from swarmbinder.builds import BuildManager
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.events import BuildEvent
from swarmbinder.labels import KIND_BUILD, LABEL_BUILD_SLUG, LABEL_KIND, LABEL_STATUS
from swarmbinder.launch_flow import LaunchFlow, LaunchRequest
from swarmbinder.resolve import Resolved
from swarmbinder.swarm import SwarmClient

__all__ = ["cleanup_builds", "run_id", "swarm"]  # fixtures, imported for pytest

pytestmark = pytest.mark.swarm


@pytest.fixture
def slow_repo(testground: dict[str, Any]) -> Iterator[GitRepo]:
    with git_repo(testground, slow_dockerfile(testground, 60), "sbtest-queue") as repo:
        yield repo


async def launch_events(builds: BuildManager, build: BuildRequest, *, built: bool) -> list[Any]:
    """A build-only launch of ``build`` through the launch flow (``built``: the registry has
    the image already)."""

    async def resolve(path: str) -> Resolved:
        return Resolved(build=build, ref_url=build.repo_url, resolved_spec=build.spec)

    async def image_exists(image: str) -> bool:
        return built

    async def no_quota(resolved: Resolved) -> None:
        return None

    flow = LaunchFlow(
        resolve=resolve,
        image_exists=image_exists,
        builds=builds,
        launcher=None,
        check_quota=no_quota,
    )
    request = LaunchRequest("git", build.spec, launch_host="http://binder/", build_only=True)
    return [event async for event in flow.run(request)]


def wire(events: list[BuildEvent]) -> list[dict[str, Any]]:
    return [event.to_wire() for event in events]


async def test_the_queue_cap_holds_in_swarm(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    slow_repo: GitRepo,
    cleanup_builds: None,
) -> None:
    registry = testground["registry"]
    # Only this test's builds count: the swarm is shared with other tests' queues.
    settings = build_settings(
        testground,
        concurrent_limit=1,
        queue_limit=1,
        image_prefix=f"{registry}/sbtest-test-{run_id}-",
    )

    def request(label: str, ref: str) -> BuildRequest:
        return make_request(run_id, slow_repo.url, ref, registry=registry, label=label)

    running, waiting = request("slow", slow_repo.sha), request("waiting", "b" * 40)
    refused = request("refused", "c" * 40)
    first, second = BuildManager(swarm, settings), BuildManager(swarm, settings)
    try:
        assert (await first.request(running)).status is BuildStatus.RUNNING
        assert (await first.request(waiting)).status is BuildStatus.QUEUED
        # The second replica knows the running build (it joins it) but not the queued one:
        # only Swarm can tell it that the queue is full.
        assert (await second.request(running)).status is BuildStatus.RUNNING
        assert second.queue_position(waiting.service_name) is None
        # What the cap counts: the engine's label filter finds the queued service only.
        labelled = await swarm.list_services({LABEL_KIND: KIND_BUILD, LABEL_STATUS: "queued"})
        ours = [s.name for s in labelled if run_id in s.labels.get(LABEL_BUILD_SLUG, "")]
        assert ours == [waiting.service_name]

        events = wire(await launch_events(second, refused, built=False))
        assert events[-1] == {
            "phase": "failed",
            "message": "The build queue is full. Please try again later.\n",
            "status_code": 503,
        }
        assert await swarm.inspect_service(refused.service_name) is None

        # Not refused: an image that exists, and a request that joins the queued build.
        found = wire(await launch_events(second, refused, built=True))
        assert [e["phase"] for e in found] == ["ready"]
        joined = await second.request(waiting)
        assert joined.status is BuildStatus.QUEUED and joined.name == waiting.service_name
    finally:
        await first.close()
        await second.close()
