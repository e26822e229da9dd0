"""The admin API over in-process fakes: token rules, resources, actions, bad input, the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmbinder.admin import AdminService, ConfigQuotas
from swarmbinder.buildjob import BuildRequest
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build
from swarmbinder.config import load_config
from swarmbinder.errors import SwarmUnavailable
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.handlers.admin import add_admin_routes
from swarmbinder.keys import ADMIN, CONFIG
from swarmbinder.policy.bans import BanList
from swarmbinder.policy.quotas import Quotas
from swarmbinder.prebuild.jobs import JobStatus
from swarmbinder.store import Store
from swarmbinder.swarm import NodeInfo
from swarmbinder.userservers import UserServer

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeBuilds:
    def __init__(self) -> None:
        self.by_name: dict[str, Build] = {}
        self.queue: list[str] = []
        self.cancelled: list[str] = []

    def add(self, repo: str, status: BuildStatus = BuildStatus.RUNNING, node: str = "n1") -> Build:
        request = BuildRequest(
            "gh",
            f"{repo}/main",
            f"https://github.com/{repo}",
            "abc123",
            repo.replace("/", "-"),
            f"reg/binder-{repo.replace('/', '-')}:abc",
        )
        build = Build(request, status, tail_size=10, created=1000.0)
        build.node = node
        self.by_name[build.name] = build
        if status is BuildStatus.QUEUED:
            self.queue.append(build.name)
        return build

    @property
    def builds(self) -> list[Build]:
        return list(self.by_name.values())

    def get(self, name: str) -> Build | None:
        return self.by_name.get(name)

    def queue_position(self, name: str) -> int | None:
        return self.queue.index(name) + 1 if name in self.queue else None

    async def cancel(self, name: str, reason: str = "") -> bool:
        build = self.by_name.pop(name)
        build.finish(BuildStatus.CANCELLED, BuildEvent.failed(reason), reason)
        self.cancelled.append(name)
        return True


class FakeHub:
    def __init__(self, servers: list[UserServer]) -> None:
        self.servers = servers
        self.calls: list[tuple[str, ...]] = []

    async def stop_server(self, name: str, server_name: str = "", *, remove: bool = False) -> None:
        self.calls.append(("stop", name, server_name))
        self.servers[:] = [
            s for s in self.servers if (s.user, s.server_name) != (name, server_name)
        ]

    async def delete_user(self, name: str) -> bool:
        self.calls.append(("delete", name))
        return True


class FakePrebuilds:
    """Prebuild jobs as the swarm lists them; ``error`` makes the engine unreachable."""

    def __init__(self) -> None:
        self.jobs = [
            JobStatus("swarmbinder-prebuild-aaa", 2, 1000.0, "complete", 0, "finished"),
            JobStatus("swarmbinder-prebuild-bbb", 5, 2000.0, "running", None, "started"),
        ]
        self.error: Exception | None = None
        self.removed: list[str] = []

    async def list(self) -> list[JobStatus]:
        if self.error is not None:
            raise self.error
        return list(self.jobs)

    async def remove(self, name: str) -> bool:
        found = [job for job in self.jobs if job.name == name]
        self.jobs = [job for job in self.jobs if job.name != name]
        self.removed += [job.name for job in found]
        return bool(found)


def server(user: str, repo: str) -> UserServer:
    return UserServer(
        "id-" + user,
        "jupyter-" + user,
        "hub",
        user,
        "",
        f"reg/binder-{repo}:abc",
        f"https://github.com/{repo}",
        f"{repo}/main",
        datetime(2026, 1, 1, tzinfo=UTC),
    )


NODES = [
    NodeInfo("id1", "n1", "manager", "ready", "active", {}, "10.0.0.1"),
    NodeInfo("id2", "n2", "worker", "down", "drain", {}, "10.0.0.2"),
]


@pytest.fixture
async def parts() -> AsyncIterator[dict[str, Any]]:
    store = await Store.open(":memory:")
    builds = FakeBuilds()
    servers = [server("alice", "org/one"), server("bob", "org/one"), server("carol", "org/two")]
    hub = FakeHub(servers)
    prebuilds = FakePrebuilds()
    bans = BanList(ban_networks={"10.9.0.0/16": "the lab"}, store=store)
    quotas = Quotas(pod_quota=50, per_repo_quota=5, store=store)

    async def list_servers() -> list[UserServer]:
        return list(servers)

    async def list_nodes() -> list[NodeInfo]:
        return NODES

    admin = AdminService(
        builds=builds,
        bans=bans,
        quotas=quotas,
        store=store,
        list_servers=list_servers,
        list_nodes=list_nodes,
        list_prebuilds=prebuilds.list,
        remove_prebuild=prebuilds.remove,
        hub=hub,
        config_quotas=ConfigQuotas(50, 5, 0),
        poll_interval=0.01,
        refresh_interval=0.05,
    )
    yield {
        "store": store,
        "builds": builds,
        "hub": hub,
        "prebuilds": prebuilds,
        "admin": admin,
        "bans": bans,
        "quotas": quotas,
    }
    await store.close()


def make_app(admin: AdminService | None, token: str | None = TOKEN) -> web.Application:
    app = web.Application()
    app[CONFIG] = load_config(env={}, overrides={"admin_token": token})
    if admin is not None:
        app[ADMIN] = admin
    add_admin_routes(app)
    return app


@pytest.fixture
async def client(parts: dict[str, Any]) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(parts["admin"]))) as c:
        yield c


async def test_token_is_required_and_checked(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for path in ("/api/admin/builds", "/api/admin/events", "/api/admin/nosuch"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert "Bearer" in (await resp.json())["message"]
        resp = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 403, path
        assert (await resp.json())["message"] == "The admin token is wrong."
    resp = await client.post(
        "/api/admin/bans",
        json={"kind": "spec", "pattern": "x"},
        headers={"Authorization": f"Bearer {TOKEN}x"},
    )
    assert resp.status == 403
    assert TOKEN not in caplog.text
    assert (await client.get("/api/admin/nosuch", headers=AUTH)).status == 404


async def test_disabled_without_a_token() -> None:
    async with TestClient(TestServer(make_app(None, token=None))) as c:
        resp = await c.get("/api/admin/builds", headers=AUTH)
        assert resp.status == 404
        assert "admin_token" in (await resp.json())["message"]


async def test_builds_are_listed_and_cancelled(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    running = parts["builds"].add("org/one")
    queued = parts["builds"].add("org/two", BuildStatus.QUEUED, node="")
    body = await (await client.get("/api/admin/builds", headers=AUTH)).json()
    rows = {b["id"]: b for b in body["builds"]}
    assert rows[running.name]["phase"] == "running" and rows[running.name]["node"] == "n1"
    assert rows[running.name]["repo_url"] == "https://github.com/org/one"
    assert rows[queued.name]["queue_position"] == 1

    resp = await client.delete(
        f"/api/admin/builds/{running.name}", headers={**AUTH, "X-Swarmbinder-Actor": "ops jo"}
    )
    assert resp.status == 200
    assert parts["builds"].cancelled == [running.name]
    audit = (await (await client.get("/api/admin/audit", headers=AUTH)).json())["audit"]
    assert audit[0]["action"] == "build.cancel" and audit[0]["actor"] == "admin:opsjo"
    assert (await client.delete(f"/api/admin/builds/{running.name}", headers=AUTH)).status == 404


async def test_build_detail_has_its_log(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    build = parts["builds"].add("org/one")
    await asyncio.sleep(0.1)  # the feed task starts following the build
    build.fanout.publish(BuildEvent.log(Phase.BUILDING, "Step 1/2 : FROM base"))
    build.fanout.publish(BuildEvent.log(Phase.BUILDING, "Step 2/2 : COPY . ."))
    for _ in range(50):
        body = await (await client.get(f"/api/admin/builds/{build.name}", headers=AUTH)).json()
        if len(body["log"]) == 2:
            break
        await asyncio.sleep(0.02)
    assert body["log"] == ["Step 1/2 : FROM base", "Step 2/2 : COPY . ."]
    assert body["build"]["last_log"][-1] == "Step 2/2 : COPY . ."
    assert (await client.get("/api/admin/builds/nope", headers=AUTH)).status == 404
    assert (await client.get(f"/api/admin/builds/{build.name}?tail=x", headers=AUTH)).status == 400


async def test_bans_add_validate_remove(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    bad = [
        {"kind": "network", "pattern": "10.0.0.300/8", "reason": "x"},
        {"kind": "spec", "pattern": "gh/(unclosed", "reason": "x"},
        {"kind": "colour", "pattern": "red"},
        {"kind": "spec"},
    ]
    for body in bad:
        resp = await client.post("/api/admin/bans", json=body, headers=AUTH)
        assert resp.status == 400, body
        assert "invalid" in (await resp.json())["message"]
    resp = await client.post("/api/admin/bans", data="{not json", headers=AUTH)
    assert resp.status == 400

    resp = await client.post(
        "/api/admin/bans",
        headers=AUTH,
        json={"kind": "spec", "pattern": "^gh/evil/.*", "reason": "mining"},
    )
    assert resp.status == 201
    ban = (await resp.json())["ban"]
    assert ban["source"] == "admin" and ban["created_by"] == "admin"
    bans = (await (await client.get("/api/admin/bans", headers=AUTH)).json())["bans"]
    assert [(b["source"], b["pattern"]) for b in bans] == [
        ("config", "10.9.0.0/16"),
        ("admin", "^gh/evil/.*"),
    ]
    with pytest.raises(Exception, match="not allowed"):
        parts["bans"].check_spec("gh/evil/repo/main")

    assert (await client.delete("/api/admin/bans/abc", headers=AUTH)).status == 400
    assert (await client.delete(f"/api/admin/bans/{ban['id']}", headers=AUTH)).status == 200
    assert (await client.delete(f"/api/admin/bans/{ban['id']}", headers=AUTH)).status == 404
    parts["bans"].check_spec("gh/evil/repo/main")
    actions = [
        e["action"]
        for e in (await (await client.get("/api/admin/audit", headers=AUTH)).json())["audit"]
    ]
    assert actions[:2] == ["ban.remove", "ban.add"]


async def test_quotas_set_clear_and_validate(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    for body in (
        {"pattern": "org/one", "quota": -1},
        {"pattern": "(", "quota": 1},
        {"pattern": "org/one", "quota": "3"},
        {"pattern": "x", "quota": 1, "expires_in": -5},
    ):
        resp = await client.post("/api/admin/quotas", json=body, headers=AUTH)
        assert resp.status == 400, body
    assert (
        await client.put("/api/admin/quotas/pod", json={"quota": -2}, headers=AUTH)
    ).status == 400

    resp = await client.post(
        "/api/admin/quotas",
        headers=AUTH,
        json={"pattern": "org/one", "quota": 1, "expires_in": 3600},
    )
    assert resp.status == 200
    assert parts["quotas"].quota_for("org/one/main").quota == 1
    servers = await (await client.get("/api/admin/servers", headers=AUTH)).json()
    one = next(r for r in servers["repos"] if r["repo_url"].endswith("org/one"))
    assert (one["running"], one["quota"], one["quota_source"]) == (2, 1, "admin")

    resp = await client.put("/api/admin/quotas/pod", json={"quota": 0}, headers=AUTH)
    assert (await resp.json())["pod_quota"] == 0
    quotas = await (await client.get("/api/admin/quotas", headers=AUTH)).json()
    assert quotas["pod_quota_source"] == "admin" and quotas["config"]["pod_quota"] == 50
    assert (await client.delete("/api/admin/quotas/pod", headers=AUTH)).status == 200
    assert parts["quotas"].pod_quota == 50
    assert (await client.delete("/api/admin/quotas", headers=AUTH)).status == 400
    resp = await client.delete("/api/admin/quotas?pattern=org/one", headers=AUTH)
    assert resp.status == 200
    assert parts["quotas"].quota_for("org/one/main").quota == 5


async def test_servers_nodes_and_stop(client: TestClient[Any, Any], parts: dict[str, Any]) -> None:
    parts["builds"].add("org/one", node="n1")
    nodes = (await (await client.get("/api/admin/nodes", headers=AUTH)).json())["nodes"]
    n1 = next(n for n in nodes if n["hostname"] == "n1")
    assert n1["running_builds"] == 1 and n1["sticky_share"] == 1.0
    assert next(n for n in nodes if n["hostname"] == "n2")["state"] == "down"

    assert (await client.delete("/api/admin/servers/nobody", headers=AUTH)).status == 404
    resp = await client.delete("/api/admin/servers/alice", headers=AUTH)
    assert resp.status == 200
    assert parts["hub"].calls == [("stop", "alice", ""), ("delete", "alice")]
    servers = await (await client.get("/api/admin/servers", headers=AUTH)).json()
    assert servers["total"] == 2


async def read_stream(
    client: TestClient[Any, Any], until: Any, limit: int = 50
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with client.get("/api/admin/events", headers=AUTH) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                if frame.startswith(b"data: "):
                    seen.append(json.loads(frame[6:]))
                    if until(seen) or len(seen) > limit:
                        return seen
    return seen


async def test_event_stream_starts_with_a_snapshot_then_goes_live(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    async def act() -> None:
        await asyncio.sleep(0.2)
        parts["builds"].add("org/live")
        await client.post(
            "/api/admin/bans",
            headers=AUTH,
            json={"kind": "network", "pattern": "192.0.2.0/24", "reason": "abuse"},
        )

    task = asyncio.create_task(act())
    events = await asyncio.wait_for(
        read_stream(client, lambda seen: {"build", "bans", "audit"} <= {e["type"] for e in seen}),
        10,
    )
    await task
    assert events[0]["type"] == "snapshot"
    assert {"builds", "servers", "nodes", "bans", "quotas", "audit"} <= set(events[0])
    build = next(e for e in events if e["type"] == "build")["build"]
    assert build["repo_url"] == "https://github.com/org/live"
    assert next(e for e in events if e["type"] == "audit")["entry"]["action"] == "ban.add"


async def test_prebuild_jobs_are_listed_and_removed(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    body = await (await client.get("/api/admin/prebuilds", headers=AUTH)).json()
    assert body["jobs"][0] == {
        "name": "swarmbinder-prebuild-aaa",
        "specs": 2,
        "created": 1000.0,
        "state": "complete",
        "exit_code": 0,
        "message": "finished",
        "finished": True,
    }
    assert [(j["name"], j["finished"]) for j in body["jobs"]][1] == (
        "swarmbinder-prebuild-bbb",
        False,
    )

    # A running job can be removed too (a scheduled run that hangs).
    resp = await client.delete(
        "/api/admin/prebuilds/swarmbinder-prebuild-bbb",
        headers={**AUTH, "X-Swarmbinder-Actor": "kim"},
    )
    assert resp.status == 200
    assert (await resp.json())["prebuild"]["removed"] is True
    assert parts["prebuilds"].removed == ["swarmbinder-prebuild-bbb"]
    body = await (await client.get("/api/admin/prebuilds", headers=AUTH)).json()
    assert [j["name"] for j in body["jobs"]] == ["swarmbinder-prebuild-aaa"]
    audit = (await (await client.get("/api/admin/audit", headers=AUTH)).json())["audit"]
    assert (audit[0]["action"], audit[0]["actor"]) == ("prebuild.remove", "admin:kim")
    assert audit[0]["detail"] == {
        "job": "swarmbinder-prebuild-bbb",
        "state": "running",
        "exit_code": None,
    }

    for name in ("swarmbinder-prebuild-bbb", "jupyter-alice"):
        resp = await client.delete(f"/api/admin/prebuilds/{name}", headers=AUTH)
        assert resp.status == 404, name
        assert name in (await resp.json())["message"]
    assert parts["prebuilds"].removed == ["swarmbinder-prebuild-bbb"]


async def test_prebuilds_in_the_snapshot_and_a_failing_engine_in_errors(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    snap = await (await client.get("/api/admin/snapshot", headers=AUTH)).json()
    assert [j["state"] for j in snap["prebuilds"]["jobs"]] == ["complete", "running"]
    assert snap["errors"] == {}

    parts["prebuilds"].error = SwarmUnavailable(
        "engine down", user_message="The Docker engine is not reachable."
    )
    snap = await (await client.get("/api/admin/snapshot", headers=AUTH)).json()
    assert snap["prebuilds"] is None
    assert snap["errors"] == {"prebuilds": "The Docker engine is not reachable."}
    assert snap["servers"]["total"] == 3
    resp = await client.get("/api/admin/prebuilds", headers=AUTH)
    assert resp.status == 503
    assert (await resp.json())["message"] == "The Docker engine is not reachable."
    resp = await client.delete("/api/admin/prebuilds/swarmbinder-prebuild-aaa", headers=AUTH)
    assert resp.status == 503 and parts["prebuilds"].removed == []


async def test_without_an_engine_prebuilds_are_unavailable(parts: dict[str, Any]) -> None:
    admin = AdminService(builds=None, bans=parts["bans"], quotas=parts["quotas"], store=None)
    async with TestClient(TestServer(make_app(admin))) as c:
        for method in ("GET", "DELETE"):
            path = "/api/admin/prebuilds" + ("/x" if method == "DELETE" else "")
            resp = await c.request(method, path, headers=AUTH)
            assert resp.status == 503, method
            assert "Docker engine" in (await resp.json())["message"]


async def test_the_feed_follows_prebuild_jobs(
    client: TestClient[Any, Any], parts: dict[str, Any]
) -> None:
    async def act() -> None:
        await asyncio.sleep(0.2)
        parts["prebuilds"].jobs.append(
            JobStatus("swarmbinder-prebuild-ccc", 1, 3000.0, "complete", 1, "exit 1")
        )

    def new_job_seen(seen: list[dict[str, Any]]) -> bool:
        return any(e["type"] == "prebuilds" and len(e["prebuilds"]["jobs"]) == 3 for e in seen)

    task = asyncio.create_task(act())
    events = await asyncio.wait_for(read_stream(client, new_job_seen), 10)
    await task
    assert len(events[0]["prebuilds"]["jobs"]) == 2
    last = [e for e in events if e["type"] == "prebuilds"][-1]["prebuilds"]["jobs"][-1]
    assert (last["name"], last["state"], last["exit_code"]) == (
        "swarmbinder-prebuild-ccc",
        "complete",
        1,
    )
