"""The admin console driven with Pilot over a fake admin API: every tab, the actions with
their confirmations, reconnection, and a wrong token.

The fake's stream is a queue the test feeds, so nothing here waits on a clock: :func:`until`
lets the app process messages until what the user would see is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from swarmbinder_tui.app import AdminConsole, make_app
from swarmbinder_tui.client import AdminClientError, RequestFailed, Unauthorized, Unreachable
from swarmbinder_tui.dialogs import BuildLogScreen, Confirm
from swarmbinder_tui.views import when
from textual.widgets import DataTable, Input, Log, Static, TabbedContent

Json = dict[str, Any]
SIZE = (140, 40)


def build(build_id: str, repo: str, phase: str = "running", **extra: Any) -> Json:
    return {
        "id": build_id,
        "repo_url": repo,
        "ref": "0123456789abcdef",
        "node": "node1",
        "phase": phase,
        "queue_position": None,
        "elapsed": 3.0,
        "reason": "",
        "last_log": ["Step 1/3"],
        "live": True,
        **extra,
    }


def prebuild_job(name: str, state: str, exit_code: int | None = None, **extra: Any) -> Json:
    return {
        "name": name,
        "specs": 3,
        "created": 1.0e9,
        "state": state,
        "exit_code": exit_code,
        "message": "started",
        "finished": state in ("complete", "failed"),
        **extra,
    }


def pool_status(spec: str = "gh/org/one/main", **extra: Any) -> Json:
    """One pool as ``GET /api/admin/pools`` lists it."""
    return {
        "pattern": "^gh/org/",
        "spec": spec,
        "image": "127.0.0.1:5050/binder-gh-org-one:0123456789abcdef0123",
        "size": 3,
        "waiting": 2,
        "starting": 1,
        "handed_out_last_hour": 7,
        "building": False,
        "last_error": "",
        **extra,
    }


def snapshot(**parts: Any) -> Json:
    base: Json = {
        "type": "snapshot",
        "builds": {"builds": [build("b1", "https://git.example/one")], "recent": []},
        "servers": {
            "total": 2,
            "pod_quota": 10,
            "pod_quota_source": "config",
            "repos": [
                {
                    "repo_url": "https://git.example/one",
                    "running": 2,
                    "quota": 3,
                    "quota_source": "default",
                    "pattern": None,
                    "expires_at": None,
                }
            ],
            "servers": [
                {
                    "user": "one-abc",
                    "server_name": "",
                    "repo_url": "https://git.example/one",
                    "created": 1.0e9,
                },
                {
                    "user": "one-def",
                    "server_name": "",
                    "repo_url": "https://git.example/one",
                    "created": 1.0e9,
                },
            ],
        },
        "nodes": {
            "nodes": [
                {
                    "id": "n1",
                    "hostname": "node1",
                    "role": "manager",
                    "state": "ready",
                    "availability": "active",
                    "running_builds": 1,
                    "sticky_share": 0.75,
                    "disk_used": 3 * 2**30,
                    "disk_total": 10 * 2**30,
                    "registry_size": 512 * 2**20,
                }
            ],
            "repos_sampled": 4,
        },
        "bans": [
            {
                "id": None,
                "kind": "network",
                "pattern": "10.9.0.0/16",
                "reason": "lab",
                "source": "config",
            },
            {
                "id": 7,
                "kind": "spec",
                "pattern": "^gh/evil/.*",
                "reason": "mining",
                "source": "admin",
                "created_by": "admin:jo",
            },
        ],
        "quotas": {
            "pod_quota": 10,
            "pod_quota_source": "config",
            "overrides": [
                {
                    "scope": "repo",
                    "pattern": "^one",
                    "quota": 1,
                    "expires_at": None,
                    "created_by": "admin",
                }
            ],
        },
        "audit": [
            {
                "id": 1,
                "at": 1.0e9,
                "actor": "admin:jo",
                "action": "ban.add",
                "detail": {"pattern": "^gh/evil/.*"},
            }
        ],
        "prebuilds": {"jobs": [prebuild_job("swarmbinder-prebuild-aaa", "running")]},
        "pools": {"pools": [pool_status()]},
        "errors": {},
    }
    base.update(parts)
    return base


class FakeAdminClient:
    """Scripted connections: each is an exception to raise or a queue of events to serve."""

    url = "http://binder.test/"

    def __init__(self) -> None:
        self.connections: list[BaseException | asyncio.Queue[Json | None]] = []
        self.attempts = 0
        self.calls: list[tuple[Any, ...]] = []
        self.fail_with: AdminClientError | None = None
        self.log = ["Step 1/3 : FROM base", "Step 2/3 : COPY . ."]

    def connection(self) -> asyncio.Queue[Json | None]:
        queue: asyncio.Queue[Json | None] = asyncio.Queue()
        self.connections.append(queue)
        return queue

    async def events(self) -> AsyncIterator[Json]:
        self.attempts += 1
        if not self.connections:
            await asyncio.Event().wait()  # no more scripted connections: hang like a quiet stream
        script = self.connections.pop(0)
        if isinstance(script, BaseException):
            raise script
        while (event := await script.get()) is not None:
            yield event

    async def _act(self, *call: Any) -> Json:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with
        return {}

    async def build(self, build_id: str, tail: int | None = None) -> Json:
        return {"build": build(build_id, "https://git.example/one"), "log": list(self.log)}

    async def cancel_build(self, build_id: str) -> Json:
        return await self._act("cancel_build", build_id)

    async def stop_server(self, user: str, server_name: str = "") -> Json:
        return await self._act("stop_server", user, server_name)

    async def remove_prebuild(self, name: str) -> Json:
        return await self._act("remove_prebuild", name)

    async def add_ban(self, kind: str, pattern: str, reason: str) -> Json:
        return await self._act("add_ban", kind, pattern, reason)

    async def remove_ban(self, ban_id: int) -> Json:
        return await self._act("remove_ban", ban_id)

    async def set_repo_quota(self, pattern: str, quota: int, expires_in: float | None) -> Json:
        return await self._act("set_repo_quota", pattern, quota, expires_in)

    async def clear_repo_quota(self, pattern: str) -> Json:
        return await self._act("clear_repo_quota", pattern)

    async def set_pod_quota(self, quota: int, expires_in: float | None) -> Json:
        return await self._act("set_pod_quota", quota, expires_in)

    async def clear_pod_quota(self) -> Json:
        return await self._act("clear_pod_quota")

    async def close(self) -> None:
        pass


async def until(pilot: Any, check: Callable[[], Any], what: str = "") -> None:
    for _ in range(300):
        if check():
            return
        await pilot.pause()
    raise AssertionError(f"never happened: {what}")


def summary_text(app: AdminConsole) -> str:
    return str(app.query_one("#prebuilds-summary", Static).content)


def status_text(app: AdminConsole) -> str:
    return str(app.query_one("#status", Static).content)


def table(app: AdminConsole, selector: str) -> DataTable[Any]:
    return app.screen.query_one(selector, DataTable)


def cells(app: AdminConsole, selector: str) -> list[list[str]]:
    t = table(app, selector)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


@pytest.fixture
def fake() -> FakeAdminClient:
    return FakeAdminClient()


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = AdminConsole.notify

    def notify(self: AdminConsole, message: str, **kwargs: Any) -> None:
        seen.append(message)
        original(self, message, **kwargs)

    monkeypatch.setattr(AdminConsole, "notify", notify)
    return seen


async def test_builds_table_updates_in_place_and_opens_a_followed_log(
    fake: FakeAdminClient,
) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "Connected" in status_text(app), "connected")
        assert cells(app, "#builds-table")[0][:4] == [
            "https://git.example/one",
            "0123456789ab",
            "node1",
            "running",
        ]

        added: list[Any] = []
        t = table(app, "#builds-table")
        t.add_row = lambda *a, **k: added.append(a)  # type: ignore[method-assign]
        stream.put_nowait({"type": "build.log", "id": "b1", "lines": ["Step 2/3 : COPY . ."]})
        stream.put_nowait(
            {"type": "build", "build": build("b1", "https://git.example/one", "built", last_log=[])}
        )
        await until(pilot, lambda: cells(app, "#builds-table")[0][3] == "built", "update")
        assert added == [], "an update must not add a row"
        assert cells(app, "#builds-table")[0][6] == "Step 2/3 : COPY . ."
        del t.add_row

        stream.put_nowait({"type": "build", "build": build("b2", "https://git.example/two")})
        await until(pilot, lambda: table(app, "#builds-table").row_count == 2, "new build")
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, BuildLogScreen), "log screen")
        screen = app.screen
        assert isinstance(screen, BuildLogScreen) and screen.build_id == "b2"
        log = screen.query_one(Log)
        await until(pilot, lambda: len(log.lines) == 2, "stored log")
        stream.put_nowait({"type": "build.log", "id": "b2", "lines": ["Step 3/3 : done"]})
        stream.put_nowait({"type": "build.log", "id": "b1", "lines": ["not this build"]})
        await until(pilot, lambda: log.lines[-1] == "Step 3/3 : done", "live log line")
        assert "not this build" not in log.lines
        await pilot.press("escape")
        assert not isinstance(app.screen, BuildLogScreen)


async def test_cancel_asks_first(fake: FakeAdminClient, notes: list[str]) -> None:
    fake.connection().put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#builds-table").row_count == 1)
        table(app, "#builds-table").focus()
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "confirmation")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, Confirm))
        assert fake.calls == []
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await until(pilot, lambda: fake.calls == [("cancel_build", "b1")], "cancel call")
        await until(pilot, lambda: "Build cancelled." in notes)


async def test_launches_tab_stops_servers_and_sets_quotas(
    fake: FakeAdminClient, notes: list[str]
) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#servers-table").row_count == 2)
        await pilot.press("2")
        summary = str(app.query_one("#launches-summary", Static).content)
        assert "2 user servers running; pod quota 10 (config)" in summary
        assert cells(app, "#repos-table") == [["https://git.example/one", "2", "3", "default"]]
        assert cells(app, "#overrides-table")[0][:3] == ["repo", "^one", "1"]

        table(app, "#servers-table").focus()
        await pilot.press("down", "s")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await until(pilot, lambda: ("stop_server", "one-def", "") in fake.calls, "stop")

        fake.fail_with = RequestFailed(400, "invalid quota: must be 0 or more, not -1")
        await pilot.press("u")
        await until(pilot, lambda: app.screen.query("#pattern"))
        await pilot.click("#pattern")
        await pilot.press(*"^one", "tab", "-", "1", "enter")
        await until(pilot, lambda: ("set_repo_quota", "^one", -1, None) in fake.calls)
        await until(pilot, lambda: "invalid quota: must be 0 or more, not -1" in notes, "400")

        fake.fail_with = None
        stream.put_nowait({"type": "quotas", "quotas": {"overrides": []}})
        stream.put_nowait({"type": "servers", "servers": {**snapshot()["servers"], "total": 1}})
        await until(pilot, lambda: table(app, "#overrides-table").row_count == 0)
        await until(
            pilot,
            lambda: "1 user servers" in str(app.query_one("#launches-summary", Static).content),
        )


async def test_bans_tab_adds_and_removes(fake: FakeAdminClient, notes: list[str]) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#bans-table").row_count == 2)
        await pilot.press("3")
        assert [r[1:5] for r in cells(app, "#bans-table")] == [
            ["network", "10.9.0.0/16", "lab", "config"],
            ["spec", "^gh/evil/.*", "mining", "admin"],
        ]
        await pilot.press("d")
        await until(pilot, lambda: any("config file" in n for n in notes), "config ban refused")
        await pilot.press("down", "d")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await until(pilot, lambda: ("remove_ban", 7) in fake.calls)

        await pilot.press("a")
        await until(pilot, lambda: app.screen.query("#pattern"))
        app.screen.query_one("#pattern", Input).value = "^gh/spam/.*"
        app.screen.query_one("#reason", Input).value = "spam"
        await pilot.click("#ok")
        await until(pilot, lambda: ("add_ban", "spec", "^gh/spam/.*", "spam") in fake.calls)
        stream.put_nowait({"type": "bans", "bans": []})
        await until(pilot, lambda: table(app, "#bans-table").row_count == 0)


async def test_nodes_and_audit_tabs(fake: FakeAdminClient) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#nodes-table").row_count == 1)
        await pilot.press("4")
        assert cells(app, "#nodes-table") == [
            ["node1", "manager", "ready", "active", "1", "75%", "3.0 GiB of 10.0 GiB (30%)"]
        ]
        note = str(app.query_one("#nodes-note", Static).content)
        assert "registry 512.0 MiB on node1" in note
        await pilot.press("5")
        stream.put_nowait(
            {
                "type": "audit",
                "entry": {
                    "id": 2,
                    "at": 1.0e9,
                    "actor": "admin:kim",
                    "action": "quota.set",
                    "detail": {"quota": 3},
                },
            }
        )
        await until(pilot, lambda: table(app, "#audit-table").row_count == 2)
        assert [r[1:3] for r in cells(app, "#audit-table")] == [
            ["admin:kim", "quota.set"],
            ["admin:jo", "ban.add"],
        ]


async def test_prebuilds_tab_follows_jobs_in_place_and_removes_one(
    fake: FakeAdminClient, notes: list[str]
) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#prebuilds-table").row_count == 1, "job row")
        await pilot.press("6")
        assert app.query_one("#tabs", TabbedContent).active == "prebuilds"
        assert cells(app, "#prebuilds-table")[0][:5] == [
            "swarmbinder-prebuild-aaa",
            "3",
            when(1.0e9),
            "running",
            "-",
        ]
        assert "1 prebuild jobs: 1 running" in summary_text(app)

        # The job ends and another starts: the first row changes in place, one row is added.
        added: list[Any] = []
        t = table(app, "#prebuilds-table")
        add_row = t.add_row

        def recording_add_row(*cells: Any, **kw: Any) -> Any:
            added.append(cells)
            return add_row(*cells, **kw)

        t.add_row = recording_add_row  # type: ignore[method-assign]
        jobs = [
            prebuild_job("swarmbinder-prebuild-aaa", "complete", 0, message="finished"),
            prebuild_job("swarmbinder-prebuild-bbb", "failed", 1, message="task: exit code 1"),
        ]
        stream.put_nowait({"type": "prebuilds", "prebuilds": {"jobs": jobs}})
        await until(pilot, lambda: table(app, "#prebuilds-table").row_count == 2, "update")
        assert [r[3:] for r in cells(app, "#prebuilds-table")] == [
            ["complete", "0", "finished"],
            ["failed", "1", "task: exit code 1"],
        ]
        assert [str(a[0]) for a in added] == ["swarmbinder-prebuild-bbb"]
        del t.add_row
        assert "2 prebuild jobs: 1 complete, 1 failed" in summary_text(app)

        await pilot.press("down", "r")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "confirmation")
        await pilot.press("y")
        await until(pilot, lambda: fake.calls == [("remove_prebuild", "swarmbinder-prebuild-bbb")])
        await until(pilot, lambda: "Prebuild job swarmbinder-prebuild-bbb removed." in notes)
        stream.put_nowait({"type": "prebuilds", "prebuilds": {"jobs": jobs[:1]}})
        await until(pilot, lambda: table(app, "#prebuilds-table").row_count == 1, "removed")

        stream.put_nowait({"type": "status", "source": "prebuilds", "ok": False, "message": "x"})
        stream.put_nowait(snapshot(prebuilds=None, errors={"prebuilds": "engine down"}))
        await until(pilot, lambda: "unavailable: engine down" in summary_text(app), "error")


async def test_pools_tab_shows_each_pool_and_follows_changes(fake: FakeAdminClient) -> None:
    stream = fake.connection()
    stream.put_nowait(snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app, "#pools-table").row_count == 1, "pool row")
        await pilot.press("7")
        assert app.query_one("#tabs", TabbedContent).active == "pools"
        assert cells(app, "#pools-table") == [
            ["gh/org/one/main", "0123456789ab", "3", "2", "1", "7", "", ""]
        ]
        pools_summary = app.query_one("#pools-summary", Static)
        assert "1 pools: 2 ready, 1 starting, 7 handed out in the last hour" in str(
            pools_summary.content
        )

        failing = pool_status(
            "gh/org/two/HEAD",
            image="",
            size=1,
            waiting=0,
            starting=0,
            handed_out_last_hour=0,
            building=True,
            last_error="build failed: exit code 1",
        )
        handed = pool_status(waiting=1, handed_out_last_hour=8)
        stream.put_nowait({"type": "pools", "pools": {"pools": [handed, failing]}})
        await until(pilot, lambda: table(app, "#pools-table").row_count == 2, "second pool")
        assert cells(app, "#pools-table") == [
            ["gh/org/one/main", "0123456789ab", "3", "1", "1", "8", "", ""],
            ["gh/org/two/HEAD", "-", "1", "0", "0", "0", "yes", "build failed: exit code 1"],
        ]
        assert "1 failing" in str(pools_summary.content)

        stream.put_nowait({"type": "pools", "pools": {"pools": []}})
        await until(pilot, lambda: table(app, "#pools-table").row_count == 0, "pools off")
        assert "No warm pools" in str(pools_summary.content)


async def test_reconnects_and_shows_it(fake: FakeAdminClient) -> None:
    fake.connections.append(Unreachable("Cannot reach http://binder.test/: refused"))
    second = fake.connection()
    app = make_app(fake, retry_delays=(0.01,))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "Reconnecting" in status_text(app), "reconnecting state")
        assert "refused" in status_text(app)
        second.put_nowait(snapshot())
        await until(pilot, lambda: "Connected" in status_text(app), "connected again")
        assert fake.attempts == 2
        third = fake.connection()
        second.put_nowait(None)  # the service restarts: the stream ends
        await until(pilot, lambda: "closed the stream" in status_text(app), "dropped")
        third.put_nowait(snapshot(bans=[]))
        await until(pilot, lambda: "Connected" in status_text(app), "back")
        await until(pilot, lambda: table(app, "#bans-table").row_count == 0, "fresh snapshot")


async def test_wrong_token_is_said_plainly_and_not_retried(
    fake: FakeAdminClient, notes: list[str]
) -> None:
    fake.connections.append(Unauthorized(403, "The admin token is wrong."))
    app = make_app(fake, retry_delays=(0.01,))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "token is wrong" in status_text(app), "refusal shown")
        assert "SWARMBINDER_ADMIN_TOKEN" in status_text(app)
        assert app.query_one("#status").has_class("unauthorized")
        for _ in range(20):
            await pilot.pause()
        assert fake.attempts == 1


def test_the_service_never_imports_textual_and_the_console_never_the_service() -> None:
    import subprocess
    import sys

    service = (
        "import sys, swarmbinder.app, swarmbinder.cli, swarmbinder.admin;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'swarmbinder_tui'));"
        "assert not bad, bad"
    )
    console = (
        "import sys, swarmbinder_tui.app;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'swarmbinder'"
        " or m == 'aiohttp.web');"
        "assert not bad, bad"
    )
    for code in (service, console):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_admin_command_needs_a_token_and_a_url(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmbinder.cli import main

    monkeypatch.delenv("SWARMBINDER_ADMIN_TOKEN", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = [
        (["admin", "--url", "http://127.0.0.1:1/"], "no admin token"),
        (["admin", "--url", "http://127.0.0.1:1/", "--token-file", str(tmp_path / "x")],
         "cannot read the token file"),
        (["admin", "--url", "http://127.0.0.1:1/", "--token-file", str(empty)], "is empty"),
        (["admin", "--url", "ftp://h/", "--token-file", str(empty)], "must start with http"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
