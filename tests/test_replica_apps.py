"""Two real apps on one PostgreSQL database, as two Binder replicas behind one address.

The apps are ``create_app`` with ``store_url`` pointing at a real PostgreSQL server
(``pg_support``); they have no Docker engine (its socket is a path nothing listens on) and no
hub, which these tests do not need: every ``/build`` here is decided at admission (rate limit,
network ban) or at resolution (spec ban), before anything would touch Swarm. Specs that get
past the bans name a git repository on a closed loopback port, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pg_support import PASSWORD, PgServer, remove_server, start_server

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError
from swarmbinder.events import SSEDecoder
from swarmbinder.store import Store

TOKEN = "replica-admin-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSE = {"Accept": "text/event-stream"}
#: A git repository on a port nothing listens on: resolution fails at once, on this machine.
CLOSED = quote("http://127.0.0.1:9/org/evil.git", safe="")
EVIL = f"/build/git/{CLOSED}/HEAD"
#: Banned in the config: refused at resolution, after admission has counted the request.
CONFIG_BANNED = "/build/gh/banned/repo/HEAD"

Client = TestClient[Any, Any]
MakeApp = Callable[..., Awaitable[Client]]


def options(url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store_url": url,
        "store_password": PASSWORD,
        "docker_host": f"unix://{tmp_path}/no-engine.sock",
        "use_registry": False,
        "admin_token": TOKEN,
        "rate_limit": 0,
        "banned_specs": ["^banned/.*"],
        "allowed_outbound_networks": ["127.0.0.0/8", "::1/128"],
        **extra,
    }


@pytest.fixture
async def make_app(tmp_path: Path, pg_url: str) -> AsyncIterator[MakeApp]:
    """Start an app on a database; every app started is closed at the end (before the
    database ``pg_url`` is dropped, which this fixture depends on for that reason)."""
    clients: list[Client] = []

    async def make(url: str, **extra: Any) -> Client:
        config = load_config(env={}, overrides=options(url, tmp_path, **extra))
        client: Client = TestClient(TestServer(create_app(config)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def build(client: Client, path: str) -> tuple[int, list[dict[str, Any]]]:
    """Status and events of one /build, read to its last event (a hang fails the test)."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []

    async def read() -> int:
        async with client.get(path, headers=SSE) as resp:
            async for chunk in resp.content.iter_any():
                events.extend(decoder.feed(chunk))
                if events and events[-1]["phase"] in ("ready", "failed"):
                    break
            return resp.status

    status = await asyncio.wait_for(read(), 30)
    return status, events


async def test_a_ban_through_one_app_refuses_the_next_request_at_the_other(
    make_app: MakeApp, pg_url: str
) -> None:
    a, b = await make_app(pg_url), await make_app(pg_url)
    status, events = await build(b, EVIL)
    assert events[-1]["phase"] == "failed" and events[-1]["status_code"] != 403, events

    resp = await a.post(
        "/api/admin/bans", json={"kind": "spec", "pattern": ".*evil.*", "reason": "x"}, headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    ban_id = (await resp.json())["ban"]["id"]
    banned_at = time.monotonic()
    while True:
        status, events = await build(b, EVIL)
        if events[-1].get("status_code") == 403:
            break
        assert time.monotonic() - banned_at < 1.0, "the ban did not reach the other app in 1 s"
    assert time.monotonic() - banned_at < 1.0
    assert "not allowed to launch" in events[-1]["message"]

    resp = await b.delete(f"/api/admin/bans/{ban_id}", headers=AUTH)
    assert resp.status in (200, 204), await resp.text()
    removed_at = time.monotonic()
    while events[-1].get("status_code") == 403:
        assert time.monotonic() - removed_at < 1.0
        _, events = await build(a, EVIL)


async def test_a_rate_limit_of_ten_holds_across_two_apps(make_app: MakeApp, pg_url: str) -> None:
    a, b = await make_app(pg_url, rate_limit=10), await make_app(pg_url, rate_limit=10)
    statuses = [
        (await build((a, b)[i % 2], CONFIG_BANNED))[1][-1]["status_code"] for i in range(12)
    ]
    # The first ten are admitted (and then refused as banned); the rest are rate limited.
    assert statuses[:10] == [403] * 10
    assert statuses[10:] == [429, 429]
    status, events = await build(a, CONFIG_BANNED)
    assert status == 429
    assert events[-1]["message"].startswith("Rate limit exceeded")


async def test_a_restart_of_every_app_loses_no_ban_quota_or_audit_entry(
    make_app: MakeApp, pg_url: str
) -> None:
    a, b = await make_app(pg_url), await make_app(pg_url)
    ban = {"kind": "network", "pattern": "203.0.113.0/24", "reason": "scraper"}
    assert (await a.post("/api/admin/bans", json=ban, headers=AUTH)).status == 201
    quota = {"pattern": "^org/big/.*", "quota": 3}
    assert (await b.post("/api/admin/quotas", json=quota, headers=AUTH)).status in (200, 201)
    before = await (await a.get("/api/admin/audit", headers=AUTH)).json()
    await a.close()
    await b.close()

    c = await make_app(pg_url, trusted_proxies=["127.0.0.0/8"])
    bans = (await (await c.get("/api/admin/bans", headers=AUTH)).json())["bans"]
    assert [(x["pattern"], x["reason"]) for x in bans if x["source"] == "admin"] == [
        ("203.0.113.0/24", "scraper")
    ]
    quotas = await (await c.get("/api/admin/quotas", headers=AUTH)).json()
    assert [(o["pattern"], o["quota"]) for o in quotas["overrides"]] == [("^org/big/.*", 3)]
    after = await (await c.get("/api/admin/audit", headers=AUTH)).json()
    assert after == before
    assert [e["action"] for e in after["audit"]] == ["quota.set", "ban.add"]
    # And the ban is enforced by the restarted app at once.
    refused = await c.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert refused.status == 403
    assert "Requests from scraper are not allowed" in await refused.text()


@pytest.fixture
def private_server() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    server = start_server()
    yield server
    remove_server(server)


async def test_a_database_outage_gives_503_with_a_message_and_service_resumes(
    make_app: MakeApp, private_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = await asyncio.to_thread(private_server.create_database)
    url = private_server.url(name)
    a, b = await make_app(url, rate_limit=1000), await make_app(url, rate_limit=1000)
    assert (await build(a, CONFIG_BANNED))[1][-1]["status_code"] == 403

    await asyncio.to_thread(private_server.stop)
    for client in (a, b):
        started = time.monotonic()
        status, events = await build(client, CONFIG_BANNED)
        assert time.monotonic() - started < 15
        assert status == 503
        assert events[-1]["status_code"] == 503
        assert "database is not answering" in events[-1]["message"]
        resp = await client.post(
            "/api/admin/bans", json={"kind": "spec", "pattern": "^x/.*"}, headers=AUTH
        )
        assert resp.status == 503, await resp.text()
        assert "database" in (await resp.json())["message"]
    health = await a.get("/health")
    assert health.status == 503

    await asyncio.to_thread(private_server.start)
    resumed_at = time.monotonic()
    while (await build(b, CONFIG_BANNED))[1][-1]["status_code"] != 403:
        assert time.monotonic() - resumed_at < 30, "service did not resume"
        await asyncio.sleep(0.2)
    # Changes flow between the apps again (the listening connection was opened anew).
    resp = await a.post(
        "/api/admin/bans", json={"kind": "spec", "pattern": ".*evil.*"}, headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    deadline = time.monotonic() + 5
    while (await build(b, EVIL))[1][-1].get("status_code") != 403:
        assert time.monotonic() < deadline


async def test_start_up_waits_for_a_database_that_is_not_up_yet(
    private_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = await asyncio.to_thread(private_server.create_database)
    url = private_server.url(name)
    await asyncio.to_thread(private_server.stop)
    caplog.set_level(logging.WARNING, "swarmbinder.store.postgres")
    with pytest.raises(ConfigError) as info:
        await Store.connect_postgres(url, PASSWORD, wait_seconds=1)
    assert info.value.option == "store_url"
    assert "no database answered" in str(info.value)
    assert any("waiting for the database at store_url" in r.message for r in caplog.records)

    connecting = asyncio.create_task(Store.connect_postgres(url, PASSWORD, wait_seconds=60))
    await asyncio.sleep(1)
    assert not connecting.done()
    await asyncio.to_thread(private_server.start)
    store = await asyncio.wait_for(connecting, 30)
    await store.close()
    assert PASSWORD not in caplog.text


def _serve(config_file: Path) -> subprocess.CompletedProcess[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", "serve", "--config", str(config_file)]
        + ["--host", "127.0.0.1", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("problem", ["password", "database"])
def test_a_database_that_refuses_us_at_start_up_is_one_line_and_exit_2(
    pg_server: PgServer, pg_url: str, tmp_path: Path, problem: str
) -> None:
    url = pg_url + "_missing" if problem == "database" else pg_url
    password = "wrong-" + uuid.uuid4().hex if problem == "password" else PASSWORD
    config_file = tmp_path / "binder.yaml"
    config_file.write_text(
        f"store_url: {url}\nstore_password: {password}\n"
        f"docker_host: unix://{tmp_path}/no-engine.sock\nuse_registry: false\n"
        f"build_token_secret: {uuid.uuid4().hex * 2}\n"
    )
    proc = _serve(config_file)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "store_url" in lines[0] and url in lines[0]
    assert ("password" if problem == "password" else "does not exist") in lines[0]
    assert password not in proc.stderr and PASSWORD not in proc.stderr
