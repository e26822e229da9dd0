"""concurrent_launch_limit against the real hub: launches over the limit wait in order, are
told so, and all end in running servers."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints, spec_for
from test_build_api import read_events, stop_server

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.launchslots import auto_limit

pytestmark = pytest.mark.swarm


async def test_a_launch_over_the_limit_waits_its_turn_then_runs(
    testground: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **ground_endpoints(testground, tmp_path),
        "image_prefix": testground["image_prefix"],
        "launch_timeout": 90,
        "concurrent_launch_limit": 1,
    }
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    app = create_app(load_config(env={}, overrides=config))
    async with TestClient(TestServer(app)) as client:
        streams = await asyncio.gather(read_events(client, path), read_events(client, path))
        readies = [events[-1] for events in streams]
        try:
            assert [r["phase"] for r in readies] == ["ready", "ready"], readies
            waited = [
                [e["message"] for e in events if e["message"].startswith("Waiting to start")]
                for events in streams
            ]
            # Exactly one of the two waited, told it was next behind one starting server.
            assert sorted(len(w) for w in waited) == [0, 1], waited
            assert "Waiting to start: 1 server is starting, you are next...\n" in sum(waited, [])
        finally:
            for ready in readies:
                if ready.get("phase") == "ready":
                    await stop_server(testground, ready)


def engine_cpus_and_nodes() -> tuple[int, int]:
    info = subprocess.run(
        ["docker", "info", "--format", "{{.NCPU}} {{.Swarm.Nodes}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(info[0]), int(info[1])


async def test_metrics_show_the_launch_limit_sized_from_the_swarm_and_its_nodes(
    testground: dict[str, Any], tmp_path: Path
) -> None:
    """Left at null, the launch limit follows the swarm's CPUs; /metrics shows it together with
    the Swarm gauges (nodes by state, running user servers, build queue)."""
    cpus, nodes = engine_cpus_and_nodes()
    config = {**ground_endpoints(testground, tmp_path), "image_prefix": testground["image_prefix"]}
    app = create_app(load_config(env={}, overrides=config))
    async with TestClient(TestServer(app)) as client:
        wanted = {
            "swarmbinder_concurrent_launch_limit": float(auto_limit(cpus)),
            'swarmbinder_swarm_nodes{availability="active",state="ready"}': float(nodes),
        }
        async with asyncio.timeout(15):
            while True:
                text = await (await client.get("/metrics")).text()
                samples = {
                    name: float(value)
                    for name, _, value in (line.rpartition(" ") for line in text.splitlines())
                    if name and not name.startswith("#")
                }
                if all(samples.get(k) == v for k, v in wanted.items()):
                    break
                await asyncio.sleep(0.5)
        assert samples["swarmbinder_launch_queue_length"] == 0
        assert samples["swarmbinder_build_queue_length"] == 0
        assert samples["swarmbinder_user_servers_running"] >= 0
