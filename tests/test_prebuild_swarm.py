"""Prebuilds on the real test ground: the swarm directly, a running app by URL, and jobs.

Each test builds under its own image prefix, so its builds really happen (the test ground's
Dockerfile repositories build in a few seconds).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_outbound, spec_for

from swarmbinder import prebuildcmd
from swarmbinder.app import create_app
from swarmbinder.config import Config, load_config
from swarmbinder.events import SSEDecoder
from swarmbinder.prebuild.jobs import list_jobs, remove_job
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

SSE = {"Accept": "text/event-stream"}
ADMIN_TOKEN = "prebuild-test-" + uuid.uuid4().hex


@pytest.fixture
def overrides(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        "image_prefix": f"{testground['image_prefix']}pb{uuid.uuid4().hex[:8]}-",
        "registry_url": testground["registry_url"],
        "docker_host": testground["docker_host"],
        "build_image": testground["images"]["builder"],
        "store_path": str(tmp_path / "store.sqlite"),
        "admin_token": ADMIN_TOKEN,
        "allowed_outbound_networks": ground_outbound(testground),
    }


@pytest.fixture(autouse=True)
async def remove_build_services(
    testground: dict[str, Any], overrides: dict[str, Any]
) -> AsyncIterator[None]:
    """A running app removes built services only at its next housekeeping round; a test's
    app is gone before that, so the test removes what it built (its own image prefix)."""
    yield
    async with SwarmClient.connect(testground["docker_host"]) as swarm:
        for name in await build_services(swarm, overrides["image_prefix"]):
            await swarm.remove_service(name)


@pytest.fixture
def config(overrides: dict[str, Any]) -> Config:
    return load_config(env={}, overrides=overrides)


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    async with SwarmClient.connect(testground["docker_host"]) as client:
        yield client


async def run(options: prebuildcmd.Options) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Exit code, the summary object, and the progress lines of a ``--json`` prebuild."""
    out = io.StringIO()
    code = await prebuildcmd.main(options, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines and lines[-1]["type"] == "summary", lines
    return code, lines[-1], lines[:-1]


async def build_services(swarm: SwarmClient, prefix: str) -> list[str]:
    services = await swarm.list_services({"swarmbinder.kind": "build"})
    return [s.name for s in services if s.labels.get("swarmbinder.image", "").startswith(prefix)]


async def read_events(client: TestClient[Any, Any], path: str, **kw: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    async with client.get(path, timeout=aiohttp.ClientTimeout(total=120), **kw) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in ("ready", "failed"):
                break
    return events


async def test_prebuilt_images_go_straight_to_ready_without_a_build(
    testground: dict[str, Any],
    overrides: dict[str, Any],
    config: Config,
    swarm: SwarmClient,
) -> None:
    good = [spec_for(testground, "binder-dockerfile"), spec_for(testground, "binder-two-commits")]
    bad = spec_for(testground, "binder-two-commits", "no-such-ref")

    code, summary, progress = await run(
        prebuildcmd.Options(specs=[good[0], bad, good[1]], config=config, as_json=True)
    )

    # The bad spec is reported, the others are built anyway, and the run says it failed.
    assert code == 1
    results = {item["spec"]: item for item in summary["items"]}
    assert [results[s]["state"] for s in (good[0], bad, good[1])] == [
        "built",
        "unresolved",
        "built",
    ]
    assert "Could not resolve ref" in results[bad]["detail"]
    assert (summary["built"], summary["unresolved"], summary["ok"]) == (2, 1, False)
    states = {(p["spec"], p["state"]) for p in progress}
    assert {(good[0], "building"), (good[0], "pushing"), (good[1], "built")} <= states
    # Built services are removed once their images are in the registry.
    assert await build_services(swarm, overrides["image_prefix"]) == []

    # Again: everything is in the registry, nothing is built, and the run succeeds.
    code, summary, _ = await run(prebuildcmd.Options(specs=good, config=config, as_json=True))
    assert code == 0 and summary["ok"] is True
    assert [item["state"] for item in summary["items"]] == ["found", "found"]

    # The app, in API-only mode, finds each image at once: no waiting, no build service.
    api_only = create_app(
        load_config(env={}, overrides={**overrides, "enable_api_only_mode": True})
    )
    async with TestClient(TestServer(api_only)) as binder:
        for spec in good:
            events = await read_events(binder, f"/build/{spec}?build_only=true", headers=SSE)
            assert [e["phase"] for e in events] == ["ready"], events
            assert events[0]["message"] == "Done! Found built image\n"
            assert events[0]["imageName"] == results[spec]["image"]
        assert await build_services(swarm, overrides["image_prefix"]) == []

        # Issue item 1 end to end: only the API is served in API-only mode.
        for path in ("/health", "/versions", "/metrics", "/api/repoproviders"):
            async with binder.get(path) as resp:
                assert resp.status == 200, (path, await resp.text())
        for path in ("/", f"/v2/{good[0]}", "/about", "/badge.svg", "/repo/org/repo"):
            async with binder.get(path, headers={"Accept": "text/html"}) as resp:
                assert resp.status == 404, path


async def test_build_only_outside_api_only_mode_needs_the_admin_token(
    testground: dict[str, Any], overrides: dict[str, Any]
) -> None:
    app = create_app(load_config(env={}, overrides=overrides))
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}?build_only=true"
    async with TestClient(TestServer(app)) as binder:
        for token in (None, "wrong"):
            headers = {**SSE, **({"Authorization": f"Bearer {token}"} if token else {})}
            async with binder.get(path, headers=headers) as resp:
                assert resp.status == 400
                events = SSEDecoder().feed(await resp.read())
            assert events[0]["phase"] == "failed"
            assert "`enable_api_only_mode` to True" in events[0]["message"]


async def test_prebuild_through_a_running_binder_with_the_admin_token(
    testground: dict[str, Any], overrides: dict[str, Any], swarm: SwarmClient
) -> None:
    good = spec_for(testground, "binder-dockerfile")
    bad = spec_for(testground, "binder-dockerfile", "no-such-ref")
    app = create_app(load_config(env={}, overrides=overrides))
    async with TestServer(app) as server:
        url = str(server.make_url("/"))
        options = prebuildcmd.Options(specs=[good, bad], url=url, token=ADMIN_TOKEN, as_json=True)
        code, summary, _ = await run(options)
        assert code == 1
        assert [item["state"] for item in summary["items"]] == ["built", "unresolved"]
        image = summary["items"][0]["image"]
        assert image.startswith(overrides["image_prefix"])

        code, summary, _ = await run(
            prebuildcmd.Options(specs=[good], url=url, token=ADMIN_TOKEN, as_json=True)
        )
        assert code == 0 and summary["items"][0]["state"] == "found"

        wrong = prebuildcmd.Options(specs=[good], url=url, token="wrong", as_json=True)
        code, summary, _ = await run(wrong)
        assert code == 1
        assert "admin token" in summary["items"][0]["detail"]


def job_names(output: str) -> list[str]:
    """The jobs a prebuild started, from its JSON lines or its words."""
    names = []
    for line in output.splitlines():
        if line.startswith("{") and json.loads(line).get("type") == "job":
            names.append(json.loads(line)["name"])
        elif line.startswith("prebuild job ") and line.endswith(" started"):
            names.append(line.split()[2])
    return names


async def test_prebuild_jobs_run_on_the_swarm_and_exit_with_the_result(
    testground: dict[str, Any], overrides: dict[str, Any], config: Config, swarm: SwarmClient
) -> None:
    good = spec_for(testground, "binder-two-commits")
    bad = spec_for(testground, "binder-dockerfile", "no-such-ref")
    image = testground["images"]["swarmbinder"]
    outputs = [io.StringIO(), io.StringIO()]
    try:
        options = prebuildcmd.Options(
            specs=[good], config=config, as_json=True, as_job=True, job_image=image
        )
        assert await prebuildcmd.main(options, outputs[0]) == 0
        lines = [json.loads(line) for line in outputs[0].getvalue().splitlines()]
        assert lines[-1]["type"] == "summary" and lines[-1]["ok"] is True
        assert lines[-1]["items"][0]["state"] == "built"
        [name] = job_names(outputs[0].getvalue())
        jobs = {job.name: job for job in await list_jobs(swarm)}
        assert (jobs[name].state, jobs[name].exit_code, jobs[name].specs) == ("complete", 0, 1)

        # A job whose spec does not resolve fails, and says so in `docker service ps`.
        options = prebuildcmd.Options(specs=[bad], config=config, as_job=True, job_image=image)
        assert await prebuildcmd.main(options, outputs[1]) == 1
        text = outputs[1].getvalue()
        assert "0 built, 0 already in the registry, 1 did not resolve" in text
        [name] = job_names(text)
        jobs = {job.name: job for job in await list_jobs(swarm)}
        assert (jobs[name].state, jobs[name].exit_code) == ("failed", 1)

        # A job can also build through a running Binder, as its administrator.
        outputs.append(io.StringIO())
        app = create_app(load_config(env={}, overrides=overrides))
        async with TestServer(app, host="127.0.0.1") as server:
            options = prebuildcmd.Options(
                specs=[spec_for(testground, "binder-dockerfile")],
                url=str(server.make_url("/")),
                token=ADMIN_TOKEN,
                as_json=True,
                as_job=True,
                job_image=image,
            )
            assert await prebuildcmd.main(options, outputs[2]) == 0
        summary = json.loads(outputs[2].getvalue().splitlines()[-1])
        assert summary["items"][0]["state"] == "built"
        assert summary["items"][0]["image"].startswith(overrides["image_prefix"])
    finally:
        started = [name for out in outputs for name in job_names(out.getvalue())]
        for name in started:
            assert await remove_job(swarm, name)
    secrets = await swarm.list_secrets({"swarmbinder.kind": "prebuild"})
    assert started and not [s for s in secrets if s.name in started]
