"""Prebuild jobs in the admin API, on the real test ground: a job started on the swarm is
listed at once, the live feed shows it end with exit code 0, and removing it through the API
takes its secret with it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_outbound

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.prebuild.jobs import JobTarget, remove_job, start_job
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

TOKEN = "admin-prebuilds-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    async with SwarmClient.connect(testground["docker_host"]) as client:
        yield client


async def job_in_feed(client: TestClient[Any, Any], name: str, finished: bool) -> dict[str, Any]:
    """The job as the event stream shows it: in the snapshot or a later ``prebuilds`` event;
    with ``finished``, the first time it shows as finished."""
    timeout = aiohttp.ClientTimeout(total=180)
    async with client.get("/api/admin/events", headers=AUTH, timeout=timeout) as resp:
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                if not frame.startswith(b"data: "):
                    continue
                event = json.loads(frame[6:])
                if event["type"] not in ("snapshot", "prebuilds"):
                    continue
                assert event["prebuilds"] is not None, event.get("errors")
                for job in event["prebuilds"]["jobs"]:
                    if job["name"] == name and (job["finished"] or not finished):
                        return dict(job)
    raise AssertionError(f"the stream ended before {name} showed")


async def test_a_prebuild_job_shows_in_the_admin_api_until_removed(
    testground: dict[str, Any], tmp_path: Path, swarm: SwarmClient
) -> None:
    overrides = {
        "image_prefix": f"{testground['image_prefix']}ap{uuid.uuid4().hex[:8]}-",
        "registry_url": testground["registry_url"],
        "docker_host": testground["docker_host"],
        "build_image": testground["images"]["builder"],
        "store_path": str(tmp_path / "store.sqlite"),
        "admin_token": TOKEN,
        "allowed_outbound_networks": ground_outbound(testground),
    }
    config = load_config(env={}, overrides=overrides)
    repo = testground["repos"]["binder-dockerfile"]
    spec = f"git/{quote(repo['url'], safe='')}/{repo['head']}"
    app = create_app(config)
    job = await start_job(
        swarm,
        image=testground["images"]["swarmbinder"],
        specs=[spec],
        target=JobTarget(config=config),
        network=config.builds.build_network,
    )
    removed = False
    try:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/api/admin/prebuilds", headers=AUTH)
            assert resp.status == 200
            listed = {j["name"]: j for j in (await resp.json())["jobs"]}
            assert listed[job.name]["specs"] == 1

            done = await job_in_feed(client, job.name, finished=True)
            assert (done["state"], done["exit_code"]) == ("complete", 0), done

            resp = await client.delete(f"/api/admin/prebuilds/{job.name}", headers=AUTH)
            assert resp.status == 200, await resp.text()
            removed = True
            resp = await client.get("/api/admin/prebuilds", headers=AUTH)
            assert job.name not in {j["name"] for j in (await resp.json())["jobs"]}
            audit = (await (await client.get("/api/admin/audit", headers=AUTH)).json())["audit"]
            assert audit[0]["action"] == "prebuild.remove"
            assert audit[0]["detail"]["job"] == job.name
        secrets = await swarm.list_secrets({"swarmbinder.kind": "prebuild"})
        assert job.name not in {s.name for s in secrets}
    finally:
        if not removed:
            await remove_job(swarm, job.name)
        # What the job built (under this test's own image prefix) is not left behind.
        for service in await swarm.list_services({"swarmbinder.kind": "build"}):
            if service.labels.get("swarmbinder.image", "").startswith(overrides["image_prefix"]):
                await swarm.remove_service(service.name)
