"""Persisted build logs: what a build wrote can be read back after its service is gone."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from build_fixtures import (
    build_settings,
    cleanup_builds,
    collect,
    git_repo,
    ground_request,
    make_request,
    run_id,
    swarm,
    wait_until_gone,
)

from swarmbinder.buildjob import BuildRequest
from swarmbinder.buildlogs import (
    CLIPPED,
    CUT_MARK,
    BuildLogRecorder,
    line_bytes,
    prune_build_logs,
    read_build_log,
    record_id,
    recording_manager,
)
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.store import Store
from swarmbinder.swarm import SwarmClient

__all__ = ["cleanup_builds", "run_id", "swarm"]  # fixtures, imported for pytest


def fake_build(name: str = "svc", created: float = 1000.0, image: str = "reg/img:abc") -> Build:
    req = BuildRequest(
        provider="git",
        spec="u/abc",
        repo_url="http://x/r.git",
        ref="abc",
        build_slug=name,
        image=image,
    )
    build = Build(req, BuildStatus.RUNNING, tail_size=10, created=created)
    # Build.name is the service name derived from the request; tests use it as is.
    build.node = "node-1"
    return build


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with await Store.open(":memory:") as opened:
        yield opened


@pytest.fixture
async def recorder(store: Store) -> AsyncIterator[BuildLogRecorder]:
    rec = BuildLogRecorder(store, replay_tail=5)
    await rec.start()
    yield rec
    await rec.close()


async def test_a_finished_build_reads_back_by_service_and_image(
    store: Store, recorder: BuildLogRecorder
) -> None:
    build = fake_build()
    recorder.started(build)
    recorder.log_lines(build.name, ["one", "two"])
    recorder.log_lines(build.name, ["three"])
    build.finish(BuildStatus.FAILED, BuildEvent.failed("Build failed: boom\n"), "boom")
    recorder.finished(build)
    await recorder.flush()

    by_name = await read_build_log(store, service_name=build.name)
    assert by_name is not None
    assert by_name.lines == ["one", "two", "three"]
    assert by_name.record.status == "failed" and by_name.record.reason == "boom"
    assert by_name.record.node == "node-1" and by_name.record.finished_at == build.finished
    by_image = await read_build_log(store, image=build.image, tail=1)
    assert by_image is not None and by_image.lines == ["three"]
    assert await read_build_log(store, service_name="other") is None
    with pytest.raises(ValueError):
        await read_build_log(store)


async def test_a_retry_is_a_new_run_and_the_latest_is_read(
    store: Store, recorder: BuildLogRecorder
) -> None:
    first = fake_build(created=1000.0)
    recorder.started(first)
    recorder.log_lines(first.name, ["first run"])
    first.finish(BuildStatus.FAILED, BuildEvent.failed("x\n"), "x")
    recorder.finished(first)
    second = fake_build(created=2000.0)
    recorder.started(second)
    recorder.log_lines(second.name, ["second run"])
    await recorder.flush()
    latest = await read_build_log(store, service_name=second.name)
    assert latest is not None and latest.lines == ["second run"]
    assert latest.record.status == "running" and latest.record.finished_at is None
    assert await store.build_log(record_id(first)) == ["first run"]


async def test_an_adopted_build_does_not_store_its_replayed_tail_twice(
    store: Store, recorder: BuildLogRecorder
) -> None:
    build = fake_build()
    recorder.started(build)
    recorder.log_lines(build.name, ["a", "b", "c", "d"])
    await recorder.flush()
    # a restarted manager adopts it and replays the last lines, then new ones come
    adopted = fake_build()
    adopted.adopted = True
    other = BuildLogRecorder(store, replay_tail=5)
    await other.start()
    try:
        other.started(adopted)
        other.log_lines(adopted.name, ["b", "c"])
        other.log_lines(adopted.name, ["d", "e", "f"])
        other.log_lines(adopted.name, ["g"])
        await other.flush()
    finally:
        await other.close()
    assert await store.build_log(record_id(build)) == ["a", "b", "c", "d", "e", "f", "g"]


async def test_a_failing_store_never_reaches_the_build(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = BuildLogRecorder(store)
    await recorder.start()
    await store.close()
    build = fake_build()
    with caplog.at_level(logging.ERROR, logger="swarmbinder.buildlogs"):
        recorder.started(build)
        recorder.log_lines(build.name, ["line"])
        recorder.finished(build)
        await recorder.flush()
        await recorder.close()
    assert recorder.failed_writes == 3
    assert "could not persist build log data" in caplog.text


async def test_lines_beyond_the_queue_limit_are_dropped_not_blocked(store: Store) -> None:
    recorder = BuildLogRecorder(store, max_pending_lines=3)  # not started: nothing drains
    build = fake_build()
    recorder.started(build)
    recorder.log_lines(build.name, ["1", "2"])
    recorder.log_lines(build.name, ["3", "4"])
    assert recorder.dropped_lines == 2
    await recorder.start()
    await recorder.flush()
    await recorder.close()
    assert await store.build_log(record_id(build)) == ["1", "2"]


def numbered(count: int, start: int = 0, width: int = 90) -> list[str]:
    return [f"line {i:06d} " + "x" * width for i in range(start, start + count)]


def stored_bytes(lines: list[str]) -> int:
    return sum(map(line_bytes, lines))


LEFT_OUT = re.compile(
    r"^\[build log: (\d+) lines \((\d+) bytes\) were left out here; the last (\d+)"
)


async def test_a_long_log_is_stored_as_head_mark_and_tail_within_the_cap(
    tmp_path: Path,
) -> None:
    """A build that prints 20 MB: the store keeps its first and last parts (the error a
    failed build ends with among them) within build_log_max_bytes, and says what it cut."""
    cap = 64 * 1024
    async with await Store.open(str(tmp_path / "store.sqlite")) as store:
        recorder = BuildLogRecorder(store, max_bytes=cap)
        await recorder.start()
        build = fake_build()
        recorder.started(build)
        printed = numbered(200_000)
        for start in range(0, len(printed), 500):
            recorder.log_lines(build.name, printed[start : start + 500])
            if start % 50_000 == 0:
                await recorder.flush()  # a store that keeps up: nothing is dropped
        recorder.log_lines(
            build.name, ["The command '/bin/sh -c make' returned a non-zero code: 2"]
        )
        await recorder.flush()
        midway = await store.build_log(record_id(build))
        assert midway[-1].startswith(CUT_MARK)  # the cut is marked at once, not at the end
        build.finish(BuildStatus.FAILED, BuildEvent.failed("Build failed\n"), "code 2")
        recorder.finished(build)
        await recorder.flush()
        await recorder.close()
        lines = await store.build_log(record_id(build))
        record = await store.get_build(record_id(build))

    assert record is not None and record.status == "failed"
    assert recorder.dropped_lines == 0
    assert stored_bytes(lines) <= cap
    cut = next(i for i, line in enumerate(lines) if line.startswith(CUT_MARK))
    assert "build_log_max_bytes (65536 bytes)" in lines[cut]
    head, tail = lines[:cut], lines[cut + 2 :]
    assert head == printed[: len(head)] and stored_bytes(head) > cap // 3
    counted = LEFT_OUT.match(lines[cut + 1])
    assert counted is not None, lines[cut + 1]
    assert tail[-1].endswith("returned a non-zero code: 2")
    assert tail[:-1] == printed[len(printed) - len(tail) + 1 :]
    assert int(counted.group(1)) == len(printed) + 1 - len(head) - len(tail)
    assert int(counted.group(3)) == len(tail)


async def test_a_last_line_larger_than_the_tail_keeps_its_end(store: Store) -> None:
    """Docker's output comes in chunks of many lines; the error ends the last chunk."""
    cap = 64 * 1024
    recorder = BuildLogRecorder(store, max_bytes=cap)
    await recorder.start()
    build = fake_build()
    recorder.started(build)
    recorder.log_lines(build.name, numbered(400))
    recorder.log_lines(build.name, ["é" * 30_000 + " returned a non-zero code: 2"])  # 60 KB
    build.finish(BuildStatus.FAILED, BuildEvent.failed("Build failed\n"), "code 2")
    recorder.finished(build)
    await recorder.flush()
    await recorder.close()
    lines = await store.build_log(record_id(build))
    assert stored_bytes(lines) <= cap
    assert lines[-1].startswith(CLIPPED) and lines[-1].endswith("returned a non-zero code: 2")


async def test_a_log_within_the_cap_is_stored_whole(store: Store) -> None:
    recorder = BuildLogRecorder(store, max_bytes=64 * 1024)
    await recorder.start()
    build = fake_build()
    recorder.started(build)
    printed = numbered(300)  # 30 KB: within the first half
    recorder.log_lines(build.name, printed)
    build.finish(BuildStatus.BUILT, BuildEvent.built(build.image, "done\n"))
    recorder.finished(build)
    await recorder.flush()
    await recorder.close()
    assert await store.build_log(record_id(build)) == printed


async def test_an_adopted_build_goes_on_counting_against_the_cap(store: Store) -> None:
    """A restarted process counts what its predecessor stored: the log is cut where the cap
    says, not a cap later."""
    cap = 64 * 1024
    first = BuildLogRecorder(store, max_bytes=cap, replay_tail=5)
    await first.start()
    build = fake_build()
    first.started(build)
    first.log_lines(build.name, numbered(250))  # 25 KB of the 31.5 KB first half
    await first.flush()
    await first.close()

    adopted = fake_build()
    adopted.adopted = True
    second = BuildLogRecorder(store, max_bytes=cap, replay_tail=5)
    await second.start()
    second.started(adopted)
    second.log_lines(adopted.name, numbered(5, start=245))  # the replayed tail
    second.log_lines(adopted.name, numbered(2000, start=250))
    adopted.finish(BuildStatus.BUILT, BuildEvent.built(adopted.image, "done\n"))
    second.finished(adopted)
    await second.flush()
    await second.close()
    lines = await store.build_log(record_id(build))
    cut = next(i for i, line in enumerate(lines) if line.startswith(CUT_MARK))
    assert lines[:cut] == numbered(cut)  # no replayed line twice, the head ends at the cap
    assert cap // 2 - 1024 < stored_bytes(lines[:cut]) <= cap // 2
    assert lines[-1] == numbered(1, start=2249)[0] and stored_bytes(lines) <= cap


async def test_lines_beyond_the_pending_size_are_dropped_not_queued(store: Store) -> None:
    """The queue to the store is bounded in characters too: 64 KiB lines would make its line
    count gigabytes."""
    recorder = BuildLogRecorder(store, max_pending_chars=100_000)  # not started
    build = fake_build()
    recorder.started(build)
    recorder.log_lines(build.name, ["x" * 60_000])
    recorder.log_lines(build.name, ["y" * 60_000])
    assert recorder.dropped_lines == 1


def test_a_cap_too_small_for_its_marks_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BuildLogRecorder(store, max_bytes=1000)


async def test_prune_removes_old_finished_builds_only(
    store: Store, recorder: BuildLogRecorder
) -> None:
    old = fake_build("old", created=100.0)
    recorder.started(old)
    recorder.log_lines(old.name, ["old line"])
    old.finish(BuildStatus.BUILT, BuildEvent.built(old.image, "done\n"))
    recorder.finished(old)
    running = fake_build("running", created=100.0)
    recorder.started(running)
    await recorder.flush()
    finished = old.finished
    assert finished is not None
    pruned = await prune_build_logs(store, keep_for=10, clock=lambda: finished + 11)
    assert pruned == 1
    assert await read_build_log(store, service_name=old.name) is None
    assert await read_build_log(store, service_name=running.name) is not None


# -- the real thing ------------------------------------------------------------------------------


@pytest.mark.swarm
async def test_logs_of_cleaned_up_builds_can_be_read_back(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    async with await Store.open(":memory:") as store:
        recorder = BuildLogRecorder(store)
        await recorder.start()
        manager = recording_manager(swarm, build_settings(testground, keep_failed_for=0), recorder)
        good = ground_request(testground, "binder-dockerfile", run_id)
        bad = ground_request(testground, "binder-failing", run_id)
        try:
            builds = [await manager.request(good), await manager.request(bad)]
            results = await asyncio.gather(*(collect(b) for b in builds))
            assert [events[-1].phase for events in results] == [Phase.BUILT, Phase.FAILED]
            await manager.cleanup()
        finally:
            await manager.close()
            await recorder.close()
        for req in (good, bad):
            await wait_until_gone(swarm, req.service_name, 5)

        built = await read_build_log(store, service_name=good.service_name)
        assert built is not None
        assert built.record.status == "built" and built.record.node == testground["node_hostname"]
        assert built.record.finished_at is not None
        assert built.record.finished_at > built.record.started_at
        text = "\n".join(built.lines)
        assert "Step 1/" in text and good.image.split(":")[0] in text

        failed = await read_build_log(store, image=bad.image)
        assert failed is not None and failed.record.status == "failed"
        assert "non-zero code: 3" in failed.record.reason
        assert any("fails on purpose" in line for line in failed.lines)
        assert recorder.failed_writes == 0 and recorder.dropped_lines == 0


@pytest.mark.swarm
async def test_a_real_build_that_prints_a_lot_is_stored_cut_with_its_error_kept(
    testground: dict[str, Any],
    swarm: SwarmClient,
    run_id: str,
    cleanup_builds: None,
    tmp_path: Path,
) -> None:
    """repo2docker builds a Dockerfile that prints 40,000 lines (about 1.5 MB of log) and then
    fails: the SQLite store keeps 64 KiB of it, its start, the cut and its end with the error,
    and the record says failed."""
    cap = 64 * 1024
    dockerfile = (
        f"FROM {testground['images']['singleuser']}\n"
        f"RUN echo {uuid.uuid4().hex} && seq -f 'printed line %g' 1 40000 && "
        "echo the error is at the end && exit 3\n"
    )
    files = {"Dockerfile": dockerfile, "README.md": "A build that prints a lot, then fails\n"}
    with git_repo(testground, files, "sbtest-loud") as repo:
        req = make_request(
            run_id, repo.url, repo.sha, registry=testground["registry"], label="loud"
        )
        async with await Store.open(str(tmp_path / "store.sqlite")) as store:
            recorder = BuildLogRecorder(store, max_bytes=cap)
            await recorder.start()
            manager = recording_manager(swarm, build_settings(testground), recorder)
            try:
                build = await manager.request(req)
                events = await collect(build, within=180)
            finally:
                await manager.close()
                await recorder.close()
            stored = await read_build_log(store, service_name=req.service_name)
    assert events[-1].phase is Phase.FAILED and "non-zero code: 3" in events[-1].message
    assert stored is not None and stored.record.status == "failed"
    assert "non-zero code: 3" in stored.record.reason
    lines = stored.lines
    assert stored_bytes(lines) <= cap
    cut = next(i for i, line in enumerate(lines) if line.startswith(CUT_MARK))
    assert any("Step 1/" in line for line in lines[:cut])  # what was built
    counted = LEFT_OUT.match(lines[cut + 1])
    # repo2docker passes Docker's output on in chunks of many lines: count the bytes
    assert counted is not None and int(counted.group(2)) > 500_000
    tail = "\n".join(lines[cut + 2 :])
    assert "printed line 40000" in tail and "the error is at the end" in tail
    assert "non-zero code: 3" in tail
    assert recorder.failed_writes == 0 and recorder.dropped_lines == 0


@pytest.mark.swarm
async def test_a_build_adopted_after_a_restart_keeps_one_whole_log(
    testground: dict[str, Any], swarm: SwarmClient, run_id: str, cleanup_builds: None
) -> None:
    req = ground_request(testground, "binder-two-commits", run_id)
    async with await Store.open(":memory:") as store:
        first_recorder = BuildLogRecorder(store, replay_tail=100)
        await first_recorder.start()
        first = recording_manager(swarm, build_settings(testground), first_recorder)
        build = await first.request(req)
        async with asyncio.timeout(60):
            async for event in build.events():
                if event.phase is Phase.BUILDING:
                    break
        await first.close()
        await first_recorder.close()

        second_recorder = BuildLogRecorder(store, replay_tail=100)
        await second_recorder.start()
        second = recording_manager(swarm, build_settings(testground), second_recorder)
        try:
            await second.start()
            adopted = second.get(req.service_name)
            assert adopted is not None
            events = await collect(adopted)
        finally:
            await second.close()
            await second_recorder.close()
        assert events[-1].phase is Phase.BUILT
        whole = await swarm.read_logs(req.service_name)
        stored = await read_build_log(store, service_name=req.service_name)
        assert stored is not None and stored.record.status == "built"
        # read_logs leaves out empty lines; the follower keeps them
        assert [line for line in stored.lines if line] == whole
