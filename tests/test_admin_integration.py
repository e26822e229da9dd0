"""The admin API against the real service on the test ground: a ban and a quota override
change the very next /build, and an admin ban survives a restart of the service."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints
from test_build_api import read_events, spec_for, stop_server

from swarmbinder.app import create_app
from swarmbinder.config import load_config

pytestmark = pytest.mark.swarm

TOKEN = "integration-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Swarmbinder-Actor": "pytest"}
BAN_PATTERN = ".*binder-dockerfile.*"


@pytest.fixture
def admin_config(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "image_prefix": f"{testground['image_prefix']}adm{run}-",
        **ground_endpoints(testground, tmp_path),
        "launch_timeout": 60,
        "enable_api_only_mode": True,
        "admin_token": TOKEN,
    }


async def test_bans_and_quota_overrides_apply_to_the_next_build(
    admin_config: dict[str, Any], testground: dict[str, Any]
) -> None:
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    app = create_app(load_config(env={}, overrides=admin_config))
    async with TestClient(TestServer(app)) as binder:
        resp = await binder.post(
            "/api/admin/bans",
            headers=AUTH,
            json={"kind": "spec", "pattern": BAN_PATTERN, "reason": "integration test"},
        )
        assert resp.status == 201, await resp.text()
        ban_id = (await resp.json())["ban"]["id"]

        banned = await read_events(binder, path + "?build_only=true")
        assert [e["phase"] for e in banned] == ["failed"]
        assert "is not allowed to launch" in banned[0]["message"]
        assert "integration test" in banned[0]["message"]

        assert (await binder.delete(f"/api/admin/bans/{ban_id}", headers=AUTH)).status == 200
        built = await read_events(binder, path + "?build_only=true")
        assert built[-1]["phase"] == "ready", built[-3:]
        assert "building" in [e["phase"] for e in built] or built[0]["phase"] == "built"

        # No server may start at all: the next launch is refused by the pod quota.
        resp = await binder.put("/api/admin/quotas/pod", headers=AUTH, json={"quota": 0})
        assert resp.status == 200 and (await resp.json())["pod_quota"] == 0
        refused = await read_events(binder, path)
        assert refused[-1]["phase"] == "failed"
        assert refused[-1]["message"] == "Too many users on this BinderHub! Try again soon.\n"

        assert (await binder.delete("/api/admin/quotas/pod", headers=AUTH)).status == 200
        first = await read_events(binder, path)
        assert first[-1]["phase"] == "ready", first[-3:]
        try:
            servers = await (await binder.get("/api/admin/servers", headers=AUTH)).json()
            assert first[-1]["repo_url"] in {s["repo_url"] for s in servers["servers"]}
            # One server of this repo runs; an override of 1 refuses the next one.
            resp = await binder.post(
                "/api/admin/quotas", headers=AUTH, json={"pattern": BAN_PATTERN, "quota": 1}
            )
            assert resp.status == 200
            second = await read_events(binder, path)
            assert second[-1]["message"] == (
                f"Too many users running {first[-1]['repo_url']}! Try again soon.\n"
            )
        finally:
            await stop_server(testground, first[-1])

        audit = (await (await binder.get("/api/admin/audit", headers=AUTH)).json())["audit"]
        assert [e["action"] for e in reversed(audit)] == [
            "ban.add",
            "ban.remove",
            "quota.set",
            "quota.clear",
            "quota.set",
        ]
        assert {e["actor"] for e in audit} == {"admin:pytest"}


async def test_an_admin_ban_survives_a_restart(
    admin_config: dict[str, Any], testground: dict[str, Any]
) -> None:
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}?build_only=true"
    config = load_config(env={}, overrides=admin_config)
    async with TestClient(TestServer(create_app(config))) as first:
        resp = await first.post(
            "/api/admin/bans",
            headers=AUTH,
            json={"kind": "spec", "pattern": BAN_PATTERN, "reason": "kept across restarts"},
        )
        assert resp.status == 201

    async with TestClient(TestServer(create_app(config))) as second:
        bans = (await (await second.get("/api/admin/bans", headers=AUTH)).json())["bans"]
        assert [(b["pattern"], b["source"]) for b in bans] == [(BAN_PATTERN, "admin")]
        events = await read_events(second, path)
        assert events[-1]["phase"] == "failed"
        assert "kept across restarts" in events[-1]["message"]
