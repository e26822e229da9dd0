"""Repository- and network-controlled text in the admin console is shown, never interpreted.

A build log line, a repository URL, a failure reason, a ban pattern or an audit actor can hold
Textual or Rich markup (``[/]``, ``[@click=app.quit]``, ``[link=...]``) or terminal escape
sequences. Before the console showed such text through :mod:`swarmbinder_tui.plain`, a
``[/]`` in a table cell raised ``MarkupError`` and ended the console, clicking a repository
cell holding ``[@click=app.quit]`` quit it, and a regex ban ``^gh/org/[a-z]+`` showed as
``^gh/org/+``. These tests feed such text through every feed the console follows, over the
fake admin API and then over the real one (the real service, its store, the real HTTP
client), and read back what the widgets paint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from rich.style import Style
from rich.text import Text
from swarmbinder_tui.app import AdminConsole, make_app
from swarmbinder_tui.client import AdminClient, RequestFailed, Unreachable
from swarmbinder_tui.dialogs import BanForm, BuildLogScreen, Confirm
from swarmbinder_tui.plain import cell, clean, plain
from test_tui import SIZE, FakeAdminClient, build, pool_status, prebuild_job, snapshot
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import DataTable, Input, Log, Select, Static
from textual.widgets._toast import Toast

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.store import BuildRecord, Store

Json = dict[str, Any]

#: Each holds an unbalanced ``[/]``: parsed as markup, any one of them ends the console.
QUIT = "[@click=app.quit]QUITME[/]"
LINK = "[link=http://evil.example]EVILLINK[/link][/]"
BOLD = "[bold]BOLDME[/] x[y [/]"
REGEX = "^gh/org/[a-z]+[/]$"
#: Sets the terminal's title, then clears the screen.
ESCAPES = "\x1b]0;PWNED\x07TITLE\x1b[2JCLEAR"


async def until(pilot: Any, check: Callable[[], Any], what: str = "", seconds: float = 20) -> None:
    """Let the app (and, for the real service, the network) run until ``check`` holds."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await pilot.pause(0.02)
    await pilot.pause()  # and lay out what changed, for painted()


def painted(widget: Widget) -> tuple[str, list[Style]]:
    """What ``widget`` and everything in it draws: the text, and the styles of its segments."""
    lines: list[str] = []
    styles: list[Style] = []
    for part in [widget, *widget.query("*")]:
        width, height = part.size
        if not width or not height or not part.display:
            continue
        for strip in part.render_lines(Region(0, 0, width, height)):
            lines.append("".join(segment.text for segment in strip))
            styles.extend(segment.style for segment in strip if segment.style is not None)
    return "\n".join(lines), styles


def assert_inert(app: AdminConsole) -> str:
    """The screen shows no link and no click action and no escape; returns its text."""
    text, styles = painted(app.screen)
    assert "\x1b" not in text and "\x9b" not in text
    for style in styles:
        assert not style.link, f"a link got through: {style.link}"
        assert "@click" not in (style.meta or {}), f"an action got through: {style.meta}"
    assert app.is_running and app.return_code is None
    return text


def table_text(app: AdminConsole, selector: str) -> list[list[str]]:
    """The table's cells, each checked to be unstyled text (no markup can be in it)."""
    table = app.screen.query_one(selector, DataTable)
    rows = []
    for i in range(table.row_count):
        row = table.get_row_at(i)
        for value in row:
            assert isinstance(value, Text) and not value.spans, repr(value)
        rows.append([str(value) for value in row])
    return rows


async def click_build(pilot: Any, app: AdminConsole, row: int) -> None:
    """Click a row's repository cell (which opens the build if the row had the cursor)."""
    await pilot.click("#builds-table", offset=(4, row + 1))
    await pilot.pause()
    assert app.is_running and app.return_code is None
    if isinstance(app.screen, BuildLogScreen):
        await pilot.press("escape")


def toasts(app: AdminConsole) -> str:
    """The notifications on screen, unwrapped (assert_inert checks what they paint)."""
    return "\n".join(str(toast.render()) for toast in app.screen.query(Toast))


def test_clean_drops_escape_sequences_and_shows_other_control_characters() -> None:
    assert clean(ESCAPES) == "TITLECLEAR"
    assert clean("\x1b[1;31mred\x1b[0m \x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\") == "red link"
    assert clean("a\x00b\x9b2Jc\x7f\td\ne\x1b") == "a\ufffdb\ufffd2Jc\ufffd\td\ne"
    assert clean(QUIT) == QUIT and clean(12) == "12"
    assert plain(QUIT).plain == QUIT and not plain(QUIT).spans
    assert cell(BOLD).no_wrap


def hostile_snapshot() -> Json:
    builds = [
        build("b1", QUIT, ref="[/]" + "a" * 20, node="[/]node", last_log=[BOLD]),
        build("b2", LINK, phase="failed", reason=LINK, last_log=[], live=False),
    ]
    servers = {
        "total": 1,
        "pod_quota": 10,
        "pod_quota_source": "[/]config",
        "repos": [
            {"repo_url": LINK, "running": 1, "quota": 3, "quota_source": QUIT, "pattern": None}
        ],
        "servers": [{"user": QUIT, "server_name": "", "repo_url": LINK, "created": 1.0e9}],
    }
    nodes = {
        "nodes": [
            {
                "id": "n1",
                "hostname": QUIT,
                "role": "[/]",
                "state": BOLD,
                "availability": "active",
                "running_builds": 1,
                "sticky_share": 0.5,
            }
        ],
        "repos_sampled": "[/]",
    }
    bans = [
        {
            "id": 7,
            "kind": "spec",
            "pattern": REGEX,
            "reason": QUIT,
            "source": "admin",
            "created_by": LINK,
        }
    ]
    quotas = {
        "pod_quota": 10,
        "pod_quota_source": "config",
        "overrides": [
            {"scope": "repo", "pattern": BOLD, "quota": 1, "expires_at": None, "created_by": QUIT}
        ],
    }
    audit = [{"id": 1, "at": 1.0e9, "actor": QUIT, "action": BOLD, "detail": {"pattern": REGEX}}]
    jobs = [prebuild_job(QUIT, "[/]running", message=LINK, specs=BOLD)]
    return snapshot(
        builds={"builds": builds[:1], "recent": builds[1:]},
        servers=servers,
        nodes=nodes,
        bans=bans,
        quotas=quotas,
        audit=audit,
        prebuilds={"jobs": jobs},
        pools={"pools": [pool_status(spec=QUIT, image="reg/x:[bold]y[", last_error=LINK)]},
    )


@pytest.fixture
def fake() -> FakeAdminClient:
    return FakeAdminClient()


async def test_every_tab_shows_markup_literally_and_a_click_does_nothing(
    fake: FakeAdminClient,
) -> None:
    stream = fake.connection()
    stream.put_nowait(hostile_snapshot())
    app = make_app(fake)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.query_one("#builds-table", DataTable).row_count == 2)
        rows = table_text(app, "#builds-table")
        # The finished build first (the snapshot's history), then the live one.
        assert rows[0][0] == LINK and rows[0][6] == LINK
        assert [rows[1][0], rows[1][2], rows[1][6]] == [QUIT, "[/]node", BOLD]
        shown = assert_inert(app)
        assert QUIT in shown and BOLD in shown and LINK in shown

        # The repository cell of the second row would hold the quit action, were it markup.
        await click_build(pilot, app, 1)

        stream.put_nowait({"type": "build.log", "id": "b1", "lines": ["[/]", ESCAPES]})
        await until(pilot, lambda: table_text(app, "#builds-table")[1][6] == "TITLECLEAR")

        await pilot.press("2")
        assert table_text(app, "#repos-table") == [[LINK, "1", "3", QUIT]]
        assert table_text(app, "#servers-table")[0][:2] == [QUIT, LINK]
        assert table_text(app, "#overrides-table")[0][1] == BOLD
        assert "[/]config" in str(app.query_one("#launches-summary", Static).content)
        assert QUIT in assert_inert(app)

        await pilot.press("3")
        assert table_text(app, "#bans-table") == [["7", "spec", REGEX, QUIT, "admin", LINK]]
        assert REGEX in assert_inert(app)

        await pilot.press("4")
        assert table_text(app, "#nodes-table")[0][:3] == [QUIT, "[/]", BOLD]
        assert "over [/] recently" in assert_inert(app)

        await pilot.press("5")
        assert table_text(app, "#audit-table")[0][1:] == [QUIT, BOLD, f"pattern={REGEX}"]
        stream.put_nowait(
            {
                "type": "audit",
                "entry": {"id": 2, "at": 1.0e9, "actor": LINK, "action": "[/]", "detail": {}},
            }
        )
        await until(pilot, lambda: len(table_text(app, "#audit-table")) == 2)
        assert LINK in assert_inert(app)

        await pilot.press("6")
        assert table_text(app, "#prebuilds-table")[0][:2] == [QUIT, BOLD]
        assert "1 [/]running" in str(app.query_one("#prebuilds-summary", Static).content)
        assert QUIT in assert_inert(app)

        await pilot.press("7")
        assert [table_text(app, "#pools-table")[0][i] for i in (0, 1, 7)] == [
            QUIT,
            "[bold]y[",
            LINK,
        ]
        assert LINK in assert_inert(app)

        # Sources that fail say why in their summaries; the reasons come from the service.
        stream.put_nowait(
            snapshot(
                servers=None,
                nodes=None,
                prebuilds=None,
                pools=None,
                errors=dict.fromkeys(("servers", "nodes", "prebuilds", "pools"), QUIT),
            )
        )
        await until(pilot, lambda: QUIT in str(app.query_one("#nodes-note", Static).content))
        assert QUIT in str(app.query_one("#pools-summary", Static).content)
        assert QUIT in str(app.query_one("#launches-summary", Static).content)
        assert QUIT in assert_inert(app)


async def test_the_build_log_screen_shows_lines_and_reasons_literally(
    fake: FakeAdminClient,
) -> None:
    fake.log = [QUIT, "[/]", LINK, ESCAPES, "\x1b[1;32mgreen\x1b[0m"]
    stream = fake.connection()
    stream.put_nowait(snapshot(builds={"builds": [build("b1", QUIT, reason=BOLD)], "recent": []}))
    app = make_app(fake)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.query_one("#builds-table", DataTable).row_count == 1)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BuildLogScreen), "log screen")
        log = app.screen.query_one(Log)
        await until(pilot, lambda: len(log.lines) == 5, "stored log")
        assert log.lines == [QUIT, "[/]", LINK, "TITLECLEAR", "green"]

        stream.put_nowait(
            {"type": "build.log", "id": "b1", "lines": [BOLD, "[/]\x1b]52;c;AAAA\x07"]}
        )
        stream.put_nowait({"type": "build", "build": build("b1", QUIT, "failed", reason=LINK)})
        await until(pilot, lambda: LINK in str(app.screen.query_one("#build-info", Static).content))
        await until(pilot, lambda: log.lines[-2:] == [BOLD, "[/]"], "live lines")
        shown = assert_inert(app)
        assert QUIT in shown and LINK in shown and BOLD in shown and "TITLECLEAR" in shown

        await pilot.click("#build-info", offset=(2, 0))
        await pilot.click("#build-log", offset=(2, 0))
        await pilot.pause()
        assert app.is_running and app.return_code is None


async def test_notifications_dialogs_and_the_status_line_are_plain(
    fake: FakeAdminClient,
) -> None:
    fake.connections.append(Unreachable(f"Cannot reach {QUIT}: {BOLD}"))
    stream = fake.connection()
    app = make_app(fake, retry_delays=(0.01,))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        status = app.query_one("#status", Static)
        await until(pilot, lambda: "Reconnecting" in str(status.content), "reconnecting")
        assert f"Cannot reach {QUIT}: {BOLD}" in str(status.content)
        assert QUIT in assert_inert(app)

        stream.put_nowait(snapshot(builds={"builds": [build("b1", QUIT)], "recent": []}))
        await until(pilot, lambda: "Connected" in str(status.content), "connected")
        stream.put_nowait({"type": "status", "source": LINK, "ok": False, "message": BOLD})
        await until(pilot, lambda: f"{LINK}: {BOLD}" in toasts(app), "status toast")

        # The confirmation names the repository; the refusal repeats the service's message.
        fake.fail_with = RequestFailed(409, f"{QUIT} is {BOLD}")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "confirmation")
        assert f"Cancel the build of {QUIT} at 0123456789ab?" in assert_inert(app)
        await pilot.click("#question", offset=(22, 0))
        await pilot.press("y")
        await until(pilot, lambda: f"{QUIT} is {BOLD}" in toasts(app), "refusal toast")
        # (the status toast was read above: on a loaded machine it may have timed out by now)
        assert_inert(app)
        for toast in app.screen.query("Toast"):
            await pilot.click(toast)
        await pilot.pause()
        assert app.is_running and app.return_code is None


# -- the real service and the real client --------------------------------------------------------

TOKEN = "plain-text-test-token"
ACTOR = "[@click=app.quit]mallory[/]"
BUILD_NAME = "r2d-hostile-build"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[str]:
    """The real service (no Docker engine: the admin API works without one) holding a failed
    build whose repository URL, reason and persisted log are hostile; yields its URL."""
    store_path = tmp_path / "store.sqlite"
    async with await Store.open(store_path) as store:
        now = time.time()
        record_id = f"{BUILD_NAME}@{now - 60:.3f}"
        await store.record_build(
            BuildRecord(
                build_id=record_id,
                provider="git",
                spec=BOLD,
                repo_url=QUIT,
                ref="0123456789abcdef",
                image="registry.test/binder-hostile:1",
                node="[/]",
                status="failed",
                reason=LINK,
                started_at=now - 60,
                finished_at=now - 30,
            )
        )
        await store.append_build_log(record_id, [QUIT, "[/]", LINK, BOLD, ESCAPES])
    config = load_config(
        env={},
        overrides={
            "docker_host": f"unix://{tmp_path}/no-docker.sock",
            "store_path": str(store_path),
            "admin_token": TOKEN,
            "build_token_secret": "ab" * 32,
        },
    )
    server = TestServer(create_app(config))
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


async def test_the_real_admin_api_and_client_carry_markup_to_the_screen_as_text(
    service: str,
) -> None:
    client = AdminClient(service, TOKEN, actor=ACTOR)
    app = make_app(client, retry_delays=(0.2,))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        builds = app.query_one("#builds-table", DataTable)
        await until(pilot, lambda: builds.row_count == 1, "the stored build")
        row = table_text(app, "#builds-table")[0]
        assert [row[0], row[2], row[3], row[6]] == [QUIT, "[/]", "failed", LINK]
        assert QUIT in assert_inert(app)
        await click_build(pilot, app, 0)

        # Its persisted log, through GET /api/admin/builds/<id>.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BuildLogScreen), "log screen")
        log = app.screen.query_one(Log)
        await until(pilot, lambda: len(log.lines) == 5, "stored log")
        assert log.lines == [QUIT, "[/]", LINK, BOLD, "TITLECLEAR"]
        assert LINK in str(app.screen.query_one("#build-info", Static).content)
        assert "TITLECLEAR" in assert_inert(app)
        await pilot.press("escape")

        # A ban added with the console's own form: a real regex, a hostile reason and actor.
        await pilot.press("3", "a")
        await until(pilot, lambda: isinstance(app.screen, BanForm), "ban form")
        app.screen.query_one("#pattern", Input).value = REGEX
        app.screen.query_one("#reason", Input).value = QUIT + ESCAPES
        await pilot.click("#ok")
        bans = app.query_one("#bans-table", DataTable)
        await until(pilot, lambda: bans.row_count == 1, "the new ban, over the stream")
        _, *rest = table_text(app, "#bans-table")[0]
        assert rest[:4] == ["spec", REGEX, QUIT + "TITLECLEAR", "admin"]
        # The service keeps only safe characters of the actor header.
        actor = rest[4]
        assert actor.startswith("admin:") and "mallory" in actor
        await until(pilot, lambda: f"Banned {REGEX}." in toasts(app), "done toast")
        assert REGEX in assert_inert(app)

        await pilot.press("5")
        audit = app.query_one("#audit-table", DataTable)
        await until(pilot, lambda: audit.row_count >= 1, "the audit entry")
        entry = table_text(app, "#audit-table")[0]
        assert entry[1] == actor and REGEX in entry[3] and QUIT in entry[3]
        assert REGEX in assert_inert(app)

        # The service refuses a ban it cannot use: its message comes back as the refusal.
        await pilot.press("3", "a")
        await until(pilot, lambda: isinstance(app.screen, BanForm), "ban form again")
        app.screen.query_one("#kind", Select).value = "network"
        app.screen.query_one("#pattern", Input).value = "[/]not-a-network"
        await pilot.click("#ok")
        await until(pilot, lambda: "[/]not-a-network" in toasts(app), "refusal toast")
        assert_inert(app)

        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "confirmation")
        assert f"Remove the spec ban {REGEX}?" in assert_inert(app)
        await pilot.press("y")
        await until(pilot, lambda: bans.row_count == 0, "the ban removed, over the stream")
        assert app.is_running and app.return_code is None
