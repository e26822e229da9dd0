"""``GET /api/admin/pools`` and the feed's ``pools`` events, over the admin API's in-process fakes.

The pool status comes from a list of :class:`~swarmbinder.pools.manager.PoolStatus` records, as
the pool manager's ``status()`` gives them; the real manager behind it is exercised against the
swarm in ``test_pools_swarm.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from test_admin_api import AUTH, client, make_app, parts, read_stream

from swarmbinder.admin import AdminService
from swarmbinder.keys import SCRUBBER
from swarmbinder.pools.manager import PoolStatus
from swarmbinder.scrub import Scrubber

__all__ = ["client", "parts"]  # fixtures, used by name

SECRET = "ghp_pooltoken0123456789abcdefABCDEF"
IMAGE = "127.0.0.1:5050/binder-gh-org-one:0123456789abcdef"


def pool(**changes: Any) -> PoolStatus:
    status = PoolStatus(
        pattern="^gh/org/one/",
        spec="gh/org/one/main",
        image=IMAGE,
        size=3,
        waiting=2,
        starting=1,
        handed_out_last_hour=7,
        building=False,
        last_error="",
    )
    return dataclasses.replace(status, **changes)


def admin_with(parts: dict[str, Any], statuses: list[PoolStatus]) -> AdminService:
    return AdminService(
        builds=None,
        bans=parts["bans"],
        quotas=parts["quotas"],
        store=None,
        list_pools=lambda: list(statuses),
        poll_interval=0.01,
        refresh_interval=0.05,
    )


async def test_pools_are_listed_with_their_counts(parts: dict[str, Any]) -> None:
    statuses = [
        pool(),
        pool(
            pattern="^gh/org/two/",
            spec="gh/org/two/HEAD",
            image="",
            size=1,
            waiting=0,
            starting=0,
            handed_out_last_hour=0,
            building=True,
        ),
    ]
    async with TestClient(TestServer(make_app(admin_with(parts, statuses)))) as client:
        resp = await client.get("/api/admin/pools", headers=AUTH)
        assert resp.status == 200
        body = await resp.json()
        assert body == {"pools": [dataclasses.asdict(s) for s in statuses]}
        assert body["pools"][0]["waiting"] == 2
        assert body["pools"][0]["handed_out_last_hour"] == 7
        assert body["pools"][1]["building"] is True
        snap = await (await client.get("/api/admin/snapshot", headers=AUTH)).json()
        assert snap["pools"] == body
        assert "pools" not in snap["errors"]


async def test_the_pools_need_the_admin_token(parts: dict[str, Any]) -> None:
    async with TestClient(TestServer(make_app(admin_with(parts, [pool()])))) as client:
        resp = await client.get("/api/admin/pools")
        assert resp.status == 401
        resp = await client.get("/api/admin/pools", headers={"Authorization": "Bearer nope"})
        assert resp.status == 403
        assert "pools" not in await resp.text()
    async with TestClient(TestServer(make_app(admin_with(parts, [pool()]), token=None))) as c:
        resp = await c.get("/api/admin/pools", headers=AUTH)
        assert resp.status == 404
        assert "admin_token" in (await resp.json())["message"]


async def test_without_pools_the_list_is_empty(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/admin/pools", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"pools": []}
    snap = await (await client.get("/api/admin/snapshot", headers=AUTH)).json()
    assert snap["pools"] == {"pools": []}


async def test_a_build_failure_shown_for_a_pool_is_scrubbed(parts: dict[str, Any]) -> None:
    # A hostile repository's build printed a credential; the pool's last error quotes it.
    failing = pool(waiting=0, last_error=f"build failed: fatal: auth {SECRET} refused")
    app = make_app(admin_with(parts, [failing]))
    app[SCRUBBER] = Scrubber([SECRET])
    async with TestClient(TestServer(app)) as client:
        text = await (await client.get("/api/admin/pools", headers=AUTH)).text()
        assert SECRET not in text
        assert "build failed: fatal: auth" in text
        snap = await (await client.get("/api/admin/snapshot", headers=AUTH)).text()
        assert SECRET not in snap


async def test_the_feed_follows_the_pools(parts: dict[str, Any]) -> None:
    statuses = [pool(waiting=0, starting=3, handed_out_last_hour=0)]
    async with TestClient(TestServer(make_app(admin_with(parts, statuses)))) as client:

        async def fill() -> None:
            await asyncio.sleep(0.2)
            statuses[0] = pool(waiting=3, starting=0, handed_out_last_hour=0)

        def filled(seen: list[dict[str, Any]]) -> bool:
            return any(
                e["type"] == "pools" and e["pools"]["pools"][0]["waiting"] == 3 for e in seen
            )

        task = asyncio.create_task(fill())
        events = await asyncio.wait_for(read_stream(client, filled), 10)
        await task
    assert events[0]["type"] == "snapshot"
    assert events[0]["pools"]["pools"][0]["starting"] == 3
    last = [e for e in events if e["type"] == "pools"][-1]["pools"]["pools"][0]
    assert (last["waiting"], last["starting"]) == (3, 0)
