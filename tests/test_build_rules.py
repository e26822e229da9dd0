"""The build manager's rules against an in-memory swarm: queue, join, promotion, timeout, node
loss and restart recovery, each in milliseconds beside its real-Swarm test (named in each
test's docstring), which it mirrors.

The manager runs unchanged; only the engine is fake (``fakes.fake_swarm``). The test plays the
builder (log lines, exit code) and the operator (nodes), and moves the manager's clock instead
of waiting: :class:`FakeClock` is wall time plus an offset the test advances.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from build_fixtures import make_issuer
from fakes.fake_swarm import FakeSwarm

from swarmbinder import buildwatch
from swarmbinder.buildjob import (
    BUILDER_DOCKER_CONFIG,
    QUEUED_CONSTRAINT,
    BuildRequest,
    BuildSettings,
)
from swarmbinder.buildlogs import BuildLogRecorder, record_id
from swarmbinder.builds import BuildManager, BuildQueueFull, to_sticky_node
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build, BuildWatcher, LogSummary
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.labels import KIND_BUILD, KIND_BUILD_AUTH
from swarmbinder.labels import LABEL_BUILD as BUILD_OF_LABEL
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.labels import LABEL_REGISTRY_LOGIN as LOGIN_LABEL
from swarmbinder.registrytokens import TokenIssuer, image_repository
from swarmbinder.sticky import rank_nodes
from swarmbinder.store import Store
from swarmbinder.swarm import TaskStateName

REGISTRY = "registry.test:5000"
BUILDER = "builder.test/repo2docker:1"
#: The manager's poll interval: short, so a poll round takes milliseconds of real time.
POLL = 0.005


class FakeClock:
    """Wall time plus an offset the test advances: never behind ``time.time()``, which the
    manager stamps finished builds with, so its clock and theirs stay comparable."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeSwarm:
    return FakeSwarm(clock=clock)


@pytest.fixture
def three_nodes(clock: FakeClock) -> FakeSwarm:
    """node1 the manager, node2 and node3 workers, as the multi-node test ground."""
    return FakeSwarm(("node1", "node2", "node3"), clock=clock)


def settings(**overrides: Any) -> BuildSettings:
    values: dict[str, Any] = {
        "builder_image": BUILDER,
        "sticky": True,
        "cleanup_interval": 3600,  # tests call cleanup() themselves
        "poll_interval": POLL,
    }
    values.update(overrides)
    return BuildSettings(**values)


Managers = Callable[..., BuildManager]


@pytest.fixture
async def managers(clock: FakeClock) -> AsyncIterator[Managers]:
    """``managers(fake, **settings)``: a build manager over ``fake``, closed at the end."""
    made: list[BuildManager] = []

    def make(swarm: FakeSwarm, **overrides: Any) -> BuildManager:
        manager = BuildManager(swarm.client(), settings(**overrides), clock=clock)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()


def request(label: str, ref: str = "a" * 40) -> BuildRequest:
    slug = f"org-{label}"
    return BuildRequest(
        provider="git",
        spec=f"https://git.test/org/{label}.git/{ref}",
        repo_url=f"https://git.test/org/{label}.git",
        ref=ref,
        build_slug=slug,
        image=f"{REGISTRY}/binder-{slug}:{ref}",
    )


def r2d(phase: str, message: str) -> str:
    """One line of repo2docker's ``--json-logs`` output."""
    return json.dumps({"phase": phase, "message": message})


def running(fake: FakeSwarm, build: Build) -> bool:
    task = fake.task(build.name)
    return task is not None and task.state is TaskStateName.RUNNING


async def start_building(fake: FakeSwarm, build: Build) -> None:
    """The builder starts once Swarm runs its task: it fetches and builds."""
    await fake.until(lambda: running(fake, build))
    fake.feed_log(
        build.name,
        r2d("fetching", f"Picked Git content provider.\nCloning into {build.request.repo_url}\n"),
        r2d("building", "Step 1/2 : FROM jupyter/base-notebook\n"),
    )


async def build_and_push(fake: FakeSwarm, build: Build) -> None:
    """The builder's whole run: fetch, build, push the image, exit 0."""
    await start_building(fake, build)
    fake.feed_log(build.name, r2d("pushing", f"Successfully pushed {build.image}"))
    fake.finish_task(build.name, 0)


async def collect(build: Build, within: float = 5) -> list[BuildEvent]:
    async with asyncio.timeout(within):
        return [event async for event in build.events()]


async def tick_until_done(fake: FakeSwarm, clock: FakeClock, build: Build, step: float) -> float:
    """Advance the clock by ``step`` and let the watcher poll, until the build ends; the
    clock time that took."""
    started = clock()
    for _ in range(100):
        if build.done.is_set():
            return clock() - started
        clock.advance(step)
        # The watcher's next full round sees the new time, unless that round ends the build.
        polled = asyncio.ensure_future(fake.polled("tasks", 2))
        ended = asyncio.ensure_future(build.done.wait())
        await asyncio.wait((polled, ended), return_when=asyncio.FIRST_COMPLETED)
        for waiter in (polled, ended):
            waiter.cancel()
        await asyncio.gather(polled, ended, return_exceptions=True)
    raise AssertionError(f"{build.name} did not end within {clock() - started:g} s")


# -- queue ---------------------------------------------------------------------------------------


async def test_queue_builds_beyond_the_concurrency_limit_wait(
    fake: FakeSwarm, managers: Managers
) -> None:
    """Mirrors test_builds.py::test_concurrency_limit_queues_visibly_then_runs."""
    manager = managers(fake, concurrent_limit=1)
    first = await manager.request(request("first"))
    second = await manager.request(request("second"))
    assert first.status is BuildStatus.RUNNING
    assert second.status is BuildStatus.QUEUED
    assert manager.queue_position(second.name) == 1
    # Visibly: a service of its own that no node may run, so Swarm holds its task pending.
    spec = fake.service_spec(second.name)
    assert QUEUED_CONSTRAINT in spec["TaskTemplate"]["Placement"]["Constraints"]
    assert spec["Labels"]["swarmbinder.status"] == "queued"
    await fake.polled("tasks", 4)  # it stays so while the first build runs
    task = fake.task(second.name)
    assert task is not None and task.state is TaskStateName.PENDING
    assert "no suitable node" in task.error
    assert second.status is BuildStatus.QUEUED

    second_events = asyncio.create_task(collect(second))
    await build_and_push(fake, first)
    first_events = await collect(first)
    await build_and_push(fake, second)
    events = await second_events
    assert first_events[-1].phase is Phase.BUILT
    waiting = [e for e in events if e.phase is Phase.WAITING]
    assert waiting and "position 1" in waiting[0].message
    assert events[-1].phase is Phase.BUILT


async def test_queue_is_capped_across_replicas_but_joining_never_is(
    fake: FakeSwarm, managers: Managers
) -> None:
    """Mirrors test_build_queue_limit.py::test_the_queue_cap_holds_in_swarm. Two replicas, one
    build slot each, build_queue_limit 2: the queued services in Swarm are what is counted."""
    replica_a = managers(fake, concurrent_limit=1, queue_limit=2)
    replica_b = managers(fake, concurrent_limit=1, queue_limit=2)
    running_a = await replica_a.request(request("run-a"))
    queued_a = await replica_a.request(request("queued-a"))
    await replica_b.request(request("run-b"))
    queued_b = await replica_b.request(request("queued-b"))
    assert (queued_a.status, queued_b.status) == (BuildStatus.QUEUED, BuildStatus.QUEUED)

    with pytest.raises(BuildQueueFull) as full:
        await replica_a.request(request("one-too-many"))
    assert full.value.status_code == 503
    assert full.value.user_message == "The build queue is full. Please try again later."
    assert (full.value.queued, full.value.limit) == (2, 2)
    assert not fake.has_service(request("one-too-many").service_name)  # nothing half-made
    # Joining a queued build is not a new build: at its own replica and at the other one.
    assert await replica_a.request(request("queued-a")) is queued_a
    joined = await replica_b.request(request("queued-a"))
    assert joined.name == queued_a.name and joined.status is BuildStatus.QUEUED

    # A slot frees, the queued build leaves the queue, and there is room for one more.
    await build_and_push(fake, running_a)
    await collect(running_a)
    await fake.until(lambda: queued_a.status is BuildStatus.RUNNING)
    assert (await replica_a.request(request("one-too-many"))).status is BuildStatus.QUEUED


async def test_queue_limit_zero_queues_without_a_cap(fake: FakeSwarm, managers: Managers) -> None:
    manager = managers(fake, concurrent_limit=1, queue_limit=0)
    await manager.request(request("running"))
    queued = [await manager.request(request(f"queued-{n}")) for n in range(5)]
    assert all(build.status is BuildStatus.QUEUED for build in queued)


# -- join ----------------------------------------------------------------------------------------


async def test_join_a_second_request_for_the_same_image_joins_the_running_build(
    fake: FakeSwarm, managers: Managers
) -> None:
    """Mirrors test_builds.py::test_ten_concurrent_requests_share_one_service: two managers
    (as two replicas would) and ten requests racing for one build."""
    replicas = [managers(fake), managers(fake)]
    req = request("shared")
    builds = await asyncio.gather(*(replicas[i % 2].request(req) for i in range(10)))
    # One build object per manager: every request to it joined the one it had.
    assert len({id(b) for b in builds[0::2]}) == 1 and len({id(b) for b in builds[1::2]}) == 1
    assert await replicas[0].request(req) is builds[0]
    services = [
        s
        for s in fake.services_labelled({KIND_LABEL: KIND_BUILD})
        if s.labels.get("swarmbinder.build-slug") == req.build_slug
    ]
    assert len(services) == 1

    results = asyncio.gather(*(collect(b) for b in builds))
    await build_and_push(fake, builds[0])
    assert all(events[-1].phase is Phase.BUILT for events in await results)


async def test_join_never_joins_a_build_that_already_failed(
    fake: FakeSwarm, managers: Managers
) -> None:
    """A request retries a failed build, even one another replica started, as
    test_builds.py::test_failed_build_says_why_and_a_new_request_retries retries its own."""
    req = request("failing")
    failed = await managers(fake).request(req)
    await start_building(fake, failed)
    fake.finish_task(failed.name, 3)
    await failed.done.wait()

    retry = await managers(fake).request(req)  # another replica, which never saw it
    assert retry.status is BuildStatus.RUNNING
    task = fake.task(req.service_name)
    assert task is not None and task.state is TaskStateName.RUNNING  # a new service


# -- promotion -----------------------------------------------------------------------------------


@pytest.fixture
def issuer(clock: FakeClock) -> TokenIssuer:
    return make_issuer(clock=clock)


async def test_promotion_a_queued_build_starts_when_a_slot_frees_with_its_own_login(
    fake: FakeSwarm, managers: Managers, clock: FakeClock, issuer: TokenIssuer
) -> None:
    """Mirrors test_builds.py::test_concurrency_limit_queues_visibly_then_runs (the promotion)
    and test_registry_tokens_real.py::test_a_build_pushes_with_a_login_of_its_own_that_ends_
    with_it (the login, which a queued build gets only when it leaves the queue)."""
    max_age = 3600.0
    manager = managers(
        fake,
        concurrent_limit=1,
        issuer=issuer,
        registry_url=f"http://{REGISTRY}",
        max_age=max_age,
    )
    first = await manager.request(request("first"))
    second = await manager.request(request("second"))
    assert second.status is BuildStatus.QUEUED

    def logins(build: Build) -> list[Any]:
        return fake.secrets_labelled({KIND_LABEL: KIND_BUILD_AUTH, BUILD_OF_LABEL: build.name})

    assert len(logins(first)) == 1
    # Queued: no login yet, so none can expire while it waits.
    assert logins(second) == [] and second.credential is None
    queued = fake.service_spec(second.name)
    assert "Secrets" not in queued["TaskTemplate"]["ContainerSpec"]
    assert LOGIN_LABEL not in queued["Labels"]

    clock.advance(600)  # it waited ten minutes
    promoted_at = clock()
    await build_and_push(fake, first)
    await first.done.wait()
    await fake.until(lambda: running(fake, second))
    assert second.status is BuildStatus.RUNNING and second.node == "node1"
    spec = fake.service_spec(second.name)
    constraints = spec["TaskTemplate"]["Placement"]["Constraints"]
    assert "node.hostname==node1" in constraints and QUEUED_CONSTRAINT not in constraints
    assert spec["Labels"]["swarmbinder.status"] == "running"

    credential = second.credential
    assert credential is not None and credential.repository == image_repository(second.image)
    assert credential.expires >= promoted_at + max_age  # counted from the promotion
    (login,) = logins(second)
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert [s["SecretName"] for s in container["Secrets"]] == [login.name]
    assert container["Env"] == [f"DOCKER_CONFIG={BUILDER_DOCKER_CONFIG}"]
    assert spec["Labels"][LOGIN_LABEL] == credential.username
    mounted = json.loads(fake.secret_data(login.name))
    assert REGISTRY in mounted["auths"]
    assert issuer.authenticate(credential.username, credential.password) is not None

    await build_and_push(fake, second)
    events = await collect(second)
    assert events[-1].phase is Phase.BUILT
    assert credential.password not in "".join(e.message for e in events)
    # Its build has ended: the login is refused, and goes with the service.
    assert issuer.authenticate(credential.username, credential.password) is None
    assert set(await manager.cleanup()) == {first.name, second.name}
    assert logins(first) == [] and logins(second) == []


# -- timeout -------------------------------------------------------------------------------------


async def test_timeout_a_build_older_than_build_max_age_is_ended_with_its_reason(
    fake: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Mirrors test_builds_limits.py::test_an_overdue_build_is_stopped_and_says_it_timed_out."""
    manager = managers(fake, max_age=15)
    build = await manager.request(request("slow"))
    await start_building(fake, build)
    clock.advance(14)
    await fake.polled("tasks", 2)
    assert not build.done.is_set()  # not before its time

    clock.advance(2)
    events = await collect(build)
    final = events[-1]
    assert final.phase is Phase.FAILED
    assert "timed out" in final.message and "build_max_age (15 s)" in final.message
    assert build.status is BuildStatus.FAILED
    assert any(e.phase is Phase.BUILDING for e in events)  # it was stopped mid-build
    # Stopped: its service (and with it the builder) is removed right away.
    await fake.until(lambda: not fake.has_service(build.name))
    assert (build.name, BUILDER) in fake.removed  # the builder image reaps other nodes


@pytest.fixture
async def recorded(
    tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., tuple[BuildManager, Store, BuildLogRecorder]]]:
    """``recorded(fake, **settings)``: a build manager whose builds a recorder persists in a
    real SQLite store, as the app wires them."""
    async with await Store.open(str(tmp_path / "store.sqlite")) as store:
        recorder = BuildLogRecorder(store)
        await recorder.start()
        made: list[BuildManager] = []

        def make(
            swarm: FakeSwarm, **overrides: Any
        ) -> tuple[BuildManager, Store, BuildLogRecorder]:
            manager = BuildManager(
                swarm.client(), settings(**overrides), clock=clock, **recorder.callbacks()
            )
            made.append(manager)
            return manager, store, recorder

        yield make
        for manager in made:
            await manager.close()
        await recorder.close()


def printing_while_removed(fake: FakeSwarm) -> None:
    """The builder goes on printing until its service is gone: each removal writes a line
    and lets the log reader run before the engine removes the service."""
    remove = fake.remove_service

    async def remove_while_printing(name: str, **kwargs: Any) -> bool:
        if fake.has_service(name):
            fake.feed_log(name, r2d("building", "still printing as it is stopped\n"))
            for _ in range(5):
                await asyncio.sleep(0)
        return await remove(name, **kwargs)

    fake.remove_service = remove_while_printing  # type: ignore[method-assign]


@pytest.mark.parametrize("stop", ["build_max_age", "node lost"])
async def test_a_stopped_build_that_prints_as_it_stops_still_stores_its_end(
    three_nodes: FakeSwarm,
    recorded: Callable[..., tuple[BuildManager, Store, BuildLogRecorder]],
    clock: FakeClock,
    stop: str,
) -> None:
    """The race of issue 16: the watcher published the failure, then removed the service
    while its log reader still ran; a line read meanwhile was published after the end
    ("publish() after finish()"), the watcher died of it and the stored record stayed
    ``running`` for good. Now the reader is stopped before the end and late lines are dropped."""
    fake = three_nodes
    manager, store, recorder = recorded(fake, max_age=15, node_lost_grace=2)
    build = await manager.request(request("chatty"))
    await start_building(fake, build)
    printing_while_removed(fake)
    if stop == "build_max_age":
        clock.advance(16)
    else:
        fake.set_node(build.node, state="down")
    events = asyncio.create_task(collect(build))
    await tick_until_done(fake, clock, build, step=1)
    await fake.until(lambda: not fake.has_service(build.name))
    final = (await events)[-1]
    assert final.phase is Phase.FAILED
    assert ("build_max_age" if stop == "build_max_age" else "node lost") in final.message

    await fake.until(lambda: build.name not in [b.name for b in manager.builds])
    await recorder.flush()
    stored = await store.get_build(record_id(build))
    assert stored is not None
    assert stored.status == BuildStatus.FAILED and stored.finished_at == build.finished
    assert stored.reason == build.reason
    lines = await store.build_log(record_id(build))
    assert any("Step 1/2" in line for line in lines)  # what it printed before the stop


async def test_a_shutdown_while_a_stopped_build_is_removed_keeps_its_end(
    fake: FakeSwarm,
    recorded: Callable[..., tuple[BuildManager, Store, BuildLogRecorder]],
    clock: FakeClock,
) -> None:
    """Removing a stopped build's service takes the engine seconds (its containers settle).
    A shutdown meanwhile cancels the watcher, which the manager still owns, and the build's
    end is in the store already, before the recorder closes."""
    manager, store, recorder = recorded(fake, max_age=15)
    build = await manager.request(request("slow-removal"))
    await start_building(fake, build)
    removing = asyncio.Event()

    async def never_settles(name: str, **kwargs: Any) -> bool:
        removing.set()
        await asyncio.Event().wait()  # released only by cancellation
        return True

    fake.remove_service = never_settles  # type: ignore[method-assign]
    clock.advance(16)
    async with asyncio.timeout(5):
        await removing.wait()
        await manager.close()
    await recorder.close()
    stored = await store.get_build(record_id(build))
    assert stored is not None and stored.status == BuildStatus.FAILED
    assert "build_max_age" in stored.reason


@pytest.mark.parametrize("watched", [True, False], ids=["watched", "watcher-not-started"])
async def test_a_cancelled_build_stores_its_end(
    fake: FakeSwarm,
    recorded: Callable[..., tuple[BuildManager, Store, BuildLogRecorder]],
    watched: bool,
) -> None:
    """An administrator's cancel ends the build while its log reader runs (a line read between
    the end and the watcher's cancellation is dropped, never an error), or before its watcher
    ever ran (a task cancelled before it starts runs no ``finally``): either way the end is
    stored."""
    manager, store, recorder = recorded(fake)
    build = await manager.request(request("cancelled"))
    if watched:
        await start_building(fake, build)
        await fake.polled("tasks", 2)
        printing_while_removed(fake)
    assert await manager.cancel(build.name, "too big")
    events = await collect(build)
    assert events[-1].phase is Phase.FAILED and "too big" in events[-1].message
    await recorder.flush()
    stored = await store.get_build(record_id(build))
    assert stored is not None and stored.status == BuildStatus.CANCELLED
    assert stored.reason == "too big"


async def test_a_late_publish_is_dropped_and_the_end_stays_last(
    fake: FakeSwarm, managers: Managers
) -> None:
    manager = managers(fake)
    build = await manager.request(request("late"))
    await start_building(fake, build)
    build.finish(BuildStatus.FAILED, BuildEvent.failed("Build failed: stop\n"), "stop")
    assert not build.publish(BuildEvent.log(Phase.BUILDING, "too late"))
    assert build.late_events == 1
    events = await collect(build)
    assert events[-1].phase is Phase.FAILED
    assert all("too late" not in e.message for e in events)


# -- node loss -----------------------------------------------------------------------------------


def ranking(fake: FakeSwarm, repo_url: str) -> list[str]:
    nodes = [to_sticky_node(n) for n in fake.node_records()]
    return [n.hostname for n in rank_nodes(repo_url, nodes)]


async def test_node_loss_fails_the_build_with_a_clear_reason_and_the_next_request_builds_again(
    three_nodes: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Mirrors test_multinode.py::test_node_lost_mid_build_fails_and_next_request_builds_
    elsewhere."""
    fake = three_nodes
    manager = managers(fake, node_lost_grace=4)
    req = request("lost")
    build = await manager.request(req)
    await start_building(fake, build)
    victim = build.node
    assert victim == ranking(fake, req.repo_url)[0]

    fake.set_node(victim, state="down")  # its task stays "running", as Swarm reports it
    lost_after = await tick_until_done(fake, clock, build, step=1)
    assert build.status is BuildStatus.FAILED
    assert build.reason.startswith(f"node lost: {victim}"), build.reason
    assert "the next request builds on another node" in build.reason
    assert 4 <= lost_after <= 4 + 2  # the grace, from the first node check that saw it down
    await fake.until(lambda: not fake.has_service(build.name))

    retry = await manager.request(req)
    assert retry is not build
    assert retry.node == [h for h in ranking(fake, req.repo_url) if h != victim][0]
    await build_and_push(fake, retry)
    await retry.done.wait()
    assert retry.status is BuildStatus.BUILT, retry.reason


async def test_node_loss_within_the_grace_keeps_the_build(
    three_nodes: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Mirrors test_multinode.py::test_a_node_that_misses_heartbeats_briefly_keeps_its_build."""
    fake = three_nodes
    manager = managers(fake, node_lost_grace=20)
    build = await manager.request(request("busy"))
    await start_building(fake, build)
    fake.set_node(build.node, state="down")
    for _ in range(5):  # down for a few node checks
        clock.advance(1)
        await fake.polled("tasks", 2)
    fake.set_node(build.node, state="ready")
    clock.advance(30)  # past the grace, counted from a down that has ended
    await fake.polled("tasks", 2)
    fake.feed_log(build.name, r2d("pushing", f"Successfully pushed {build.image}"))
    fake.finish_task(build.name, 0)
    await build.done.wait()
    assert build.status is BuildStatus.BUILT, build.reason


# -- restart recovery ----------------------------------------------------------------------------


async def test_restart_recovery_adopts_running_builds_from_their_labels(
    fake: FakeSwarm, managers: Managers
) -> None:
    """Mirrors test_builds.py::test_build_survives_a_restart_of_the_manager."""
    req = request("restart")
    first = managers(fake)
    build = await first.request(req)
    await start_building(fake, build)
    async with asyncio.timeout(5):
        async for event in build.events():
            if event.phase is Phase.BUILDING:
                break
    await first.close()  # the service keeps running in Swarm

    # Another deployment on the same swarm (another image_prefix) leaves the build alone.
    other = managers(fake, image_prefix="other.test/")
    await other.recover()
    assert other.get(req.service_name) is None

    second = managers(fake, image_prefix=REGISTRY)
    await second.start()
    adopted = second.get(req.service_name)
    assert adopted is not None and adopted.adopted
    assert adopted.request == req  # all of it read back from the service's labels
    assert adopted.status is BuildStatus.RUNNING and adopted.node == build.node
    again = await second.request(req)
    assert again is adopted
    events = asyncio.create_task(collect(again))
    fake.feed_log(req.service_name, r2d("pushing", f"Successfully pushed {req.image}"))
    fake.finish_task(req.service_name, 0)
    assert (await events)[-1].phase is Phase.BUILT
    # the re-attached watcher got the log tail, not just the ending
    assert any(e.phase in (Phase.FETCHING, Phase.BUILDING) for e in await events)


async def test_restart_recovery_requeues_queued_builds(fake: FakeSwarm, managers: Managers) -> None:
    """A queued build's place survives a restart: it is a service labelled queued (the
    module docstring of builds; no real-Swarm test restarts a manager with a queue)."""
    first = managers(fake, concurrent_limit=1)
    running_build = await first.request(request("one"))
    queued_build = await first.request(request("two"))
    await first.close()

    second = managers(fake, concurrent_limit=1)
    recovered = {b.name: b for b in await second.recover()}
    assert recovered[running_build.name].status is BuildStatus.RUNNING
    assert recovered[queued_build.name].status is BuildStatus.QUEUED
    assert second.queue_position(queued_build.name) == 1

    await build_and_push(fake, recovered[running_build.name])
    promoted = recovered[queued_build.name]
    await build_and_push(fake, promoted)  # promoted when the slot freed
    await promoted.done.wait()
    assert promoted.status is BuildStatus.BUILT


async def test_restart_recovery_ends_and_cleans_finished_builds(
    fake: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Builds that ended while no manager watched are concluded from their tasks and logs,
    then cleaned: built at once, failed after keep_failed_for, as
    test_builds_limits.py::test_housekeeping_removes_built_at_once_and_failed_later does
    for builds a manager watched; a new request retries a failed one, as
    test_builds.py::test_failed_build_says_why_and_a_new_request_retries."""
    first = managers(fake)
    good = await first.request(request("good"))
    bad = await first.request(request("bad"))
    await first.close()
    await build_and_push(fake, good)
    await start_building(fake, bad)
    fake.feed_log(
        bad.name,
        r2d("building", "fails on purpose\n"),
        r2d("failed", "The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
    )
    fake.finish_task(bad.name, 3)

    second = managers(fake, keep_failed_for=600)
    await second.start()
    ended = {b.name: b for b in second.builds}
    async with asyncio.timeout(5):
        await asyncio.gather(*(b.done.wait() for b in ended.values()))
    assert ended[good.name].status is BuildStatus.BUILT
    assert ended[bad.name].status is BuildStatus.FAILED
    assert "returned a non-zero code: 3" in ended[bad.name].reason

    assert await second.cleanup() == [good.name]
    assert not fake.has_service(good.name) and fake.has_service(bad.name)  # kept for its log
    retry = await second.request(request("bad"))
    assert retry is not ended[bad.name] and retry.status is BuildStatus.RUNNING
    await build_and_push(fake, retry)
    await retry.done.wait()
    clock.advance(600)
    assert await second.cleanup() == [retry.name]
    assert fake.services_labelled({KIND_LABEL: KIND_BUILD}) == []


# -- rules next to these: pending timeout, engine gone -------------------------------------------


async def test_pending_timeout_a_build_no_node_accepts_fails_after_build_pending_timeout(
    three_nodes: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Mirrors test_multinode.py::test_unsatisfiable_placement_fails_after_pending_timeout."""
    fake = three_nodes
    fake.set_node("node3", labels={"swarmbinder.mntest": "yes"}, availability="drain")
    manager = managers(
        fake, pending_timeout=4, node_selector={"node.labels.swarmbinder.mntest": "yes"}
    )
    build = await manager.request(request("pending"))
    took = await tick_until_done(fake, clock, build, step=1)
    assert build.status is BuildStatus.FAILED
    assert "no node accepted the build within 4 s (build_pending_timeout)" in build.reason
    assert 4 <= took <= 4 + 2
    await fake.until(lambda: not fake.has_service(build.name))


async def test_engine_gone_fails_the_build_after_engine_grace_and_cleans_up_when_back(
    fake: FakeSwarm, managers: Managers, clock: FakeClock
) -> None:
    """Mirrors test_builds_limits.py::test_engine_gone_mid_build_fails_in_bounded_time_and_
    leaks_nothing."""
    manager = managers(fake, engine_grace=3)
    build = await manager.request(request("cut"))
    await start_building(fake, build)
    fake.answering = False
    took = await tick_until_done(fake, clock, build, step=1)
    assert build.status is BuildStatus.FAILED
    final = (await collect(build))[-1]
    assert final.phase is Phase.FAILED and "Docker engine stopped answering" in final.message
    assert 3 <= took <= 3 + 2
    assert fake.has_service(build.name)  # nothing could remove it

    fake.answering = True
    assert await manager.cleanup() == [build.name]  # lost: removed as soon as it answers
    assert not fake.has_service(build.name)


async def _arriving(summary: LogSummary, frames: int) -> None:
    """A long line coming in as 16 KiB frames, one every 20 ms (no line ends until the last)."""
    for _ in range(frames):
        await asyncio.sleep(0.02)
        summary.stream.received += 16 * 1024


async def test_drain_waits_while_a_long_line_is_still_arriving(fake: FakeSwarm) -> None:
    """Mirrors test_hostile_repos' 5 MB line: under load its frames outlasted one quiet window,
    and the stored log missed the line Binder had quoted."""
    watcher = BuildWatcher(fake.client(), settings(), release=_nothing, stop=_nothing)
    summary = LogSummary()
    reader = asyncio.create_task(asyncio.sleep(60))
    arriving = asyncio.create_task(_arriving(summary, frames=15))
    try:
        await watcher._drain(reader, summary)
        assert arriving.done()
        assert summary.count == 0  # no line was completed meanwhile; text was still coming
    finally:
        reader.cancel()
        arriving.cancel()


async def test_drain_waits_for_the_end_of_a_line_begun_however_long_the_engine_pauses(
    fake: FakeSwarm,
) -> None:
    watcher = BuildWatcher(fake.client(), settings(), release=_nothing, stop=_nothing)
    summary = LogSummary()
    summary.stream.received, summary.stream.mid_line = 16 * 1024, True
    reader = asyncio.create_task(asyncio.sleep(60))

    async def rest_of_the_line() -> None:
        await asyncio.sleep(0.4)  # eight quiet windows: the engine busy elsewhere
        summary.stream.received += 100
        summary.stream.mid_line = False

    ending = asyncio.create_task(rest_of_the_line())
    try:
        await watcher._drain(reader, summary)
        assert ending.done()
    finally:
        reader.cancel()
        ending.cancel()


async def test_drain_gives_up_after_log_drain_max_however_much_keeps_coming(
    fake: FakeSwarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buildwatch, "LOG_DRAIN_MAX", 0.3)
    watcher = BuildWatcher(fake.client(), settings(), release=_nothing, stop=_nothing)
    summary = LogSummary()
    reader = asyncio.create_task(asyncio.sleep(60))
    arriving = asyncio.create_task(_arriving(summary, frames=10_000))
    began = time.monotonic()
    try:
        await watcher._drain(reader, summary)
        assert 0.3 <= time.monotonic() - began < 1.5
        assert not arriving.done()
    finally:
        reader.cancel()
        arriving.cancel()


async def _nothing(build: Build) -> None:
    return None
