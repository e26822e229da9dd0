"""From ``/build`` to a running Jupyter server, through the real everything.

The whole app (create_app) against the test ground: git server, registry, the engine's swarm,
JupyterHub with SwarmSpawner. Each test run builds under its own image prefix, so the first
launch really builds and the second one really finds the image.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints, spec_for

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.events import SSEDecoder
from swarmbinder.swarm import SwarmClient
from swarmbinder.userservers import list_user_servers

pytestmark = pytest.mark.swarm

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def app_config(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "image_prefix": f"{testground['image_prefix']}e2e{run}-",
        **ground_endpoints(testground, tmp_path),
        "launch_timeout": 60,
    }


@pytest.fixture
async def binder(app_config: dict[str, Any]) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(load_config(env={}, overrides=app_config))
    async with TestClient(TestServer(app)) as client:
        yield client


async def read_events(
    client: TestClient[Any, Any], path: str, *, until: tuple[str, ...] = ("ready", "failed")
) -> list[dict[str, Any]]:
    """Events of one /build stream up to the first phase in ``until``, then close it (as a
    well-behaved client does)."""
    events: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    async with client.get(path, headers=SSE, timeout=aiohttp.ClientTimeout(total=180)) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in until:
                break
    return events


async def stop_server(testground: dict[str, Any], ready: dict[str, Any]) -> None:
    """Delete the temporary user whose server the test started."""
    user = ready["url"].rstrip("/").split("/")[-1]
    headers = {"Authorization": f"token {testground['hub_api_token']}"}
    async with aiohttp.ClientSession() as session:
        url = f"{testground['hub_api_url']}/users/{user}"
        async with session.delete(f"{url}/server", headers=headers) as resp:
            assert resp.status in (202, 204, 404)
        async with session.delete(url, headers=headers) as resp:
            assert resp.status in (204, 404)


async def test_build_then_launch_reaches_a_running_server(
    binder: TestClient[Any, Any], testground: dict[str, Any]
) -> None:
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"

    events = await read_events(binder, path)

    phases = [e["phase"] for e in events]
    assert phases[0] == "waiting", phases
    assert "building" in phases and "built" in phases and phases[-1] == "ready", events[-3:]
    built = next(e for e in events if e["phase"] == "built")
    ready = events[-1]
    try:
        assert ready["image"] == built["imageName"]
        assert ready["url"].startswith(testground["hub_url"]) and ready["url"].endswith("/")
        for field in ("token", "repo_url", "binder_ref_url", "binder_launch_host"):
            assert ready[field], field
        # The test client connects over loopback; BinderHub sends the client's address too.
        assert ready["binder_client_ip"] == "127.0.0.1"
        # (the test client re-escapes ':' in the path, so compare unescaped)
        assert unquote(ready["binder_request"]) == unquote(f"v2/{path.removeprefix('/build/')}")
        # Our own messages are whole lines (repo2docker's log lines are passed on as they are).
        ours = [e for e in events if e["phase"] in ("waiting", "built", "launching", "ready")]
        assert all(e["message"].endswith("\n") for e in ours), ours
        async with aiohttp.ClientSession() as session:
            async with session.get(
                ready["url"] + "api/status", headers={"Authorization": f"token {ready['token']}"}
            ) as resp:
                assert resp.status == 200
                assert "started" in await resp.json()

        # The same repo again: found in the registry, no build, straight to launch.
        again = await read_events(binder, path)
        assert [e["phase"] for e in again][:2] == ["built", "launching"]
        assert again[0]["message"] == "Found built image, launching...\n"
        assert again[-1]["phase"] == "ready"
        await stop_server(testground, again[-1])

        metrics = await (await binder.get("/metrics")).text()
        assert "binderhub_inprogress_builds 0.0" in metrics
        assert "binderhub_inprogress_launches 0.0" in metrics
        assert 'binderhub_launch_count_total{provider="Git"' in metrics
    finally:
        await stop_server(testground, ready)


async def test_failed_build_ends_the_stream_with_its_reason(
    binder: TestClient[Any, Any], testground: dict[str, Any]
) -> None:
    path = f"/build/{spec_for(testground, 'binder-failing')}"
    started = time.monotonic()
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    async with binder.get(path, headers=SSE) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] == "failed":
                failed_at = time.monotonic()
                break
        # The server closes a failed stream itself, right after the event.
        rest = await asyncio.wait_for(resp.content.read(), 2)
    assert parse_rest_is_empty(rest)

    failed = events[-1]
    assert failed["phase"] == "failed"
    assert "3" in failed["message"] and failed["message"].endswith("\n")
    assert failed_at - started < 120
    metrics = await (await binder.get("/metrics")).text()
    assert "binderhub_inprogress_builds 0.0" in metrics
    assert 'binderhub_build_count_total{provider="Git"' in metrics


def parse_rest_is_empty(rest: bytes) -> bool:
    return all(line.startswith(b":") or not line.strip() for line in rest.splitlines())


async def test_unknown_ref_and_bad_specs_fail_without_a_build(
    binder: TestClient[Any, Any], testground: dict[str, Any], app_config: dict[str, Any]
) -> None:
    bad_ref = await read_events(
        binder, f"/build/{spec_for(testground, 'binder-dockerfile', 'nope')}"
    )
    assert [e["phase"] for e in bad_ref] == ["failed"]
    assert bad_ref[0]["status_code"] == 404

    for path in ("/build/nosuch/a/b", "/build/gh/-rf/repo/main", "/build/gh/a/b/..%2F..%2Fx"):
        events = await read_events(binder, path)
        assert events[-1]["phase"] == "failed", path
        assert 400 <= events[-1]["status_code"] < 500, (path, events)

    async with SwarmClient.connect(testground["docker_host"]) as swarm:
        services = await swarm.list_services({"swarmbinder.kind": "build"})
    prefix = app_config["image_prefix"]
    assert not [s for s in services if s.labels.get("swarmbinder.image", "").startswith(prefix)]


async def test_quota_refuses_a_second_server_of_the_same_repo(
    app_config: dict[str, Any], testground: dict[str, Any], launchable_image: str
) -> None:
    app = create_app(load_config(env={}, overrides={**app_config, "per_repo_quota": 1}))
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    async with TestClient(TestServer(app)) as binder:
        first = await read_events(binder, path)
        assert first[-1]["phase"] == "ready", first[-3:]
        try:
            async with SwarmClient.connect(testground["docker_host"]) as swarm:
                servers = await list_user_servers(swarm, hub_id=testground["hub_service"])
            assert first[-1]["repo_url"] in {s.repo_url for s in servers}

            second = await read_events(binder, path)
            assert second[-1]["phase"] == "failed"
            assert second[-1]["message"] == (
                f"Too many users running {first[-1]['repo_url']}! Try again soon.\n"
            )
        finally:
            await stop_server(testground, first[-1])
