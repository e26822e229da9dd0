from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from swarmbinder.errors import RegistryError
from swarmbinder.health import CheckResult, HealthChecker, capacity_result


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counted:
    """A check that counts its calls and returns what the test says."""

    def __init__(self, result: CheckResult = True) -> None:
        self.result = result
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> CheckResult:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.result


async def test_all_ok_in_binderhubs_shape() -> None:
    checker = HealthChecker({"Docker registry": Counted(), "JupyterHub API": Counted()})
    report = await checker.check()
    assert report.status_code == 200
    assert report.to_json() == {
        "ok": True,
        "checks": [
            {"service": "Docker registry", "ok": True},
            {"service": "JupyterHub API", "ok": True},
        ],
    }


async def test_a_failing_check_names_what_is_down() -> None:
    async def registry() -> CheckResult:
        raise RegistryError("GET https://user:secret@registry/v2/ failed", user_message="nope")

    async def hub() -> CheckResult:
        raise OSError("connect to http://hub:8081 refused")

    checker = HealthChecker(
        {"Docker registry": registry, "JupyterHub API": hub, "Swarm": Counted()}
    )
    report = await checker.check()
    assert report.status_code == 503
    assert report.failing == ["Docker registry", "JupyterHub API"]
    assert report.to_json()["checks"] == [
        {"service": "Docker registry", "ok": False, "error": "nope"},
        {"service": "JupyterHub API", "ok": False, "error": "OSError"},
        {"service": "Swarm", "ok": True},
    ]


async def test_a_hung_check_times_out_alone_and_the_others_run_concurrently() -> None:
    hung = Counted()
    hung.gate = asyncio.Event()  # never set
    slow_but_fine = Counted()

    async def in_time() -> CheckResult:
        await asyncio.sleep(0.01)
        return await slow_but_fine()

    checker = HealthChecker({"hub": hung, "registry": in_time}, timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await checker.check()
    assert loop.time() - started < 1
    assert report.to_json()["checks"] == [
        {"service": "hub", "ok": False, "error": "timed out after 0.05s"},
        {"service": "registry", "ok": True},
    ]


async def test_mappings_add_details_and_ignored_failures_do_not_count() -> None:
    capacity: Mapping[str, Any] = {"ok": False, "used": 9, "quota": 8, "_ignore_failure": True}
    checker = HealthChecker({"Build capacity": Counted(capacity), "hub": Counted(True)})
    report = await checker.check()
    assert report.ok
    assert report.to_json()["checks"][0] == {"service": "Build capacity", **capacity}


async def test_a_malformed_result_is_not_ok() -> None:
    checker = HealthChecker({"odd": Counted({"status": "fine"})})
    report = await checker.check()
    assert not report.ok
    assert report.to_json()["checks"] == [
        {"service": "odd", "ok": False, "error": "bad check result"}
    ]


async def test_results_are_cached_for_a_few_seconds() -> None:
    clock = Clock()
    check = Counted()
    checker = HealthChecker({"x": check}, cache_seconds=5, clock=clock)
    await checker.check()
    clock.now = 4.9
    await checker.check()
    assert check.calls == 1
    check.result = False
    clock.now = 5.1
    assert not (await checker.check()).ok
    assert check.calls == 2


async def test_concurrent_callers_share_one_run_and_a_leaver_does_not_cancel_it() -> None:
    check = Counted()
    check.gate = asyncio.Event()
    checker = HealthChecker({"x": check})
    callers = [asyncio.create_task(checker.check()) for _ in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    callers[0].cancel()
    check.gate.set()
    results = await asyncio.gather(*callers[1:])
    assert check.calls == 1
    assert all(r.ok for r in results)
    with pytest.raises(asyncio.CancelledError):
        await callers[0]


async def test_aclose_cancels_a_run_in_flight() -> None:
    check = Counted()
    check.gate = asyncio.Event()
    checker = HealthChecker({"x": check})
    caller = asyncio.create_task(checker.check())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await checker.aclose()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_a_full_capacity_is_shown_but_not_unhealthy() -> None:
    async def builds() -> CheckResult:
        return capacity_result(4, 4, queued=2)

    report = await HealthChecker({"Build capacity": builds}).check()
    assert report.status_code == 200
    assert report.to_json()["checks"] == [
        {
            "service": "Build capacity",
            "ok": False,
            "used": 4,
            "capacity": 4,
            "queued": 2,
            "_ignore_failure": True,
        }
    ]
    assert capacity_result(3, None)["ok"] is True
