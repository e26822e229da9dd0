"""The admin console: seven tabs over the admin API's live stream.

``make_app(client)`` takes any :class:`~swarmbinder_tui.client.AdminAPI`, so tests drive the
console with a fake. One long-lived worker follows the stream (:func:`~.client.follow`) and
posts each event as a message; actions run in their own workers and report errors as
notifications. The connection state is always on screen, under the header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from .client import RETRY_DELAYS, AdminAPI, AdminClientError, Connection, follow
from .dialogs import BanForm, BuildLogScreen, Confirm, QuotaForm
from .messages import ConnectionChanged, FeedEvent
from .plain import clean, plain
from .pools import PoolsView
from .views import (
    ACTIVE_PHASES,
    AuditView,
    BansView,
    BuildsView,
    LaunchesView,
    NodesView,
    PrebuildsView,
)

Json = dict[str, Any]

CSS = """
#status { height: 1; padding: 0 1; background: $boost; }
#status.connected { color: $success; }
#status.reconnecting, #status.connecting { color: $warning; }
#status.unauthorized { color: $error; text-style: bold; }
.heading { color: $text-muted; padding: 1 0 0 0; }
#launches-summary, #nodes-note, #prebuilds-summary, #pools-summary { padding: 0 1; }
#repos-table, #overrides-table, #servers-table { height: auto; max-height: 12; }
.dialog { width: 70; height: auto; padding: 1 2; border: thick $warning; background: $surface; }
Confirm, BanForm, QuotaForm { align: center middle; }
.buttons { height: auto; margin-top: 1; }
.hint { width: 100%; height: auto; color: $text-muted; }
.buttons Button { margin-right: 2; }
#build-info { padding: 0 1; height: auto; }
"""


#: The tabs in order, key 1 to 7: (id, name in the key bar and palette, the tab's title, its
#: view, what the command palette says it shows).
_TABS: tuple[tuple[str, str, str, type[Widget], str], ...] = (
    ("builds", "Builds", "Builds", BuildsView, "Show the live builds"),
    ("launches", "Launches", "Launches and quotas", LaunchesView, "Servers per repository"),
    ("bans", "Bans", "Bans", BansView, "Show the ban list"),
    ("nodes", "Nodes", "Nodes", NodesView, "Show the swarm's nodes"),
    ("audit", "Audit", "Audit", AuditView, "Who changed what, when"),
    ("prebuilds", "Prebuilds", "Prebuilds", PrebuildsView, "Prebuild jobs on the swarm"),
    ("pools", "Pools", "Warm pools", PoolsView, "Servers started ahead, per repository"),
)
_TAB_NAMES = {tab: name for tab, name, *_ in _TABS}


class AdminConsole(App[None]):
    """swarmbinder's admin console."""

    TITLE = "swarmbinder admin"
    CSS = CSS
    BINDINGS = [
        *(
            Binding(str(n), f"show_tab('{tab}')", name)
            for n, (tab, name, *_) in enumerate(_TABS, 1)
        ),
        Binding("c", "cancel_build", "Cancel build"),
        Binding("s", "stop_server", "Stop server"),
        Binding("a", "add_ban", "Add ban"),
        Binding("d", "remove_ban", "Remove ban"),
        Binding("u", "set_quota", "Repo quota"),
        Binding("p", "set_pod_quota", "Pod quota"),
        Binding("x", "clear_quota", "Clear quota"),
        Binding("r", "remove_prebuild", "Remove job"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, client: AdminAPI, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        super().__init__()
        self.client = client
        self.retry_delays = retry_delays
        self.connection = Connection("connecting")
        self.sub_title = clean(client.url)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            plain(f"Connecting to {self.client.url} ..."), id="status", classes="connecting"
        )
        with TabbedContent(initial="builds", id="tabs"):
            for tab, _, title, view, _ in _TABS:
                with TabPane(title, id=tab):
                    yield view()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#builds-table", DataTable).focus()
        self.follow_stream()
        self.set_interval(1.0, self.query_one(BuildsView).tick)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every notification as plain text, whatever ``markup`` says (screens pass ``True``).

        Most carry the service's words (its error messages) or a repository's (URLs, ban
        patterns): parsed as markup, a ``[/]`` in them would end the console.
        """
        super().notify(
            clean(message), title=clean(title), severity=severity, timeout=timeout, markup=False
        )

    async def on_unmount(self) -> None:
        await self.client.close()

    @work(exclusive=True, group="stream")
    async def follow_stream(self) -> None:
        async for item in follow(self.client, retry_delays=self.retry_delays):
            if isinstance(item, Connection):
                self.post_message(ConnectionChanged(item))
            else:
                self.post_message(FeedEvent(item))

    # -- the stream ------------------------------------------------------------------------------

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        connection = self.connection = message.connection
        status = self.query_one("#status", Static)
        status.set_classes(connection.state)
        url = self.client.url
        # The detail is an error message, possibly the body of whatever answered at the URL.
        if connection.state == "connected":
            status.update(plain(f"● Connected to {url} (live)"))
        elif connection.state == "connecting":
            status.update(plain(f"Connecting to {url} ..."))
        elif connection.state == "reconnecting":
            status.update(
                plain(
                    f"○ Disconnected: {connection.detail}. Reconnecting in "
                    f"{connection.retry_in:g} s (attempt {connection.attempt}); "
                    "data shown is stale."
                )
            )
        else:
            status.update(
                plain(
                    f"✖ {connection.detail} Give the right token with --token-file or "
                    "SWARMBINDER_ADMIN_TOKEN, then start the console again."
                )
            )
            self.notify(connection.detail, title="Admin token refused", severity="error")

    def on_feed_event(self, message: FeedEvent) -> None:
        data = message.data
        kind = data.get("type")
        builds = self.query_one(BuildsView)
        launches = self.query_one(LaunchesView)
        errors = data.get("errors") or {}
        if kind == "snapshot":
            listing = data.get("builds") or {}
            builds.load(listing.get("builds", []), listing.get("recent", []))
            launches.show_servers(data.get("servers"), errors.get("servers", ""))
            launches.show_quotas(data.get("quotas") or {})
            self.query_one(BansView).show(data.get("bans") or [])
            self.query_one(NodesView).show(data.get("nodes"), errors.get("nodes", ""))
            self.query_one(AuditView).show(data.get("audit") or [])
            self.query_one(PrebuildsView).show(data.get("prebuilds"), errors.get("prebuilds", ""))
            # A service from before warm pools sends no "pools": shown as none, not an error.
            self.query_one(PoolsView).show(data.get("pools", {}), errors.get("pools", ""))
        elif kind == "build":
            builds.upsert(data["build"])
            screen = self._log_screen(str(data["build"]["id"]))
            if screen is not None:
                screen.update_build(data["build"])
        elif kind == "build.log":
            builds.log_lines(str(data["id"]), list(data["lines"]))
            screen = self._log_screen(str(data["id"]))
            if screen is not None:
                screen.append(list(data["lines"]))
        elif kind == "build.removed":
            builds.forget(str(data["id"]))
        elif kind == "servers":
            launches.show_servers(data["servers"])
        elif kind == "quotas":
            launches.show_quotas(data["quotas"])
        elif kind == "bans":
            self.query_one(BansView).show(data["bans"])
        elif kind == "nodes":
            self.query_one(NodesView).show(data["nodes"])
        elif kind == "prebuilds":
            self.query_one(PrebuildsView).show(data["prebuilds"])
        elif kind == "pools":
            self.query_one(PoolsView).show(data["pools"])
        elif kind == "audit":
            self.query_one(AuditView).add(data["entry"])
        elif kind == "status" and not data.get("ok"):
            self.notify(f"{data.get('source')}: {data.get('message')}", severity="warning")

    def _log_screen(self, build_id: str) -> BuildLogScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, BuildLogScreen) and screen.build_id == build_id:
                return screen
        return None

    # -- navigation ------------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        self.query_one(f"#{tab} DataTable", DataTable).focus()

    @on(DataTable.RowSelected, "#builds-table")
    def open_build(self, event: DataTable.RowSelected) -> None:
        build = self.query_one(BuildsView).builds.get(str(event.row_key.value))
        if build is not None:
            self.push_screen(BuildLogScreen(self.client, build))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for tab, name, _, _, help_text in _TABS:
            yield SystemCommand(name, help_text, partial(self.action_show_tab, tab))
        commands: list[tuple[str, str, Callable[[], Any]]] = [
            ("Cancel build", "Cancel the selected build", self.action_cancel_build),
            ("Stop server", "Stop the selected user server", self.action_stop_server),
            ("Add ban", "Ban a spec regex or a network", self.action_add_ban),
            ("Remove ban", "Remove the selected admin ban", self.action_remove_ban),
            ("Set repository quota", "Override a repository's quota", self.action_set_quota),
            ("Set pod quota", "Override the pod quota", self.action_set_pod_quota),
            ("Clear quota override", "Remove the selected override", self.action_clear_quota),
            (
                "Remove prebuild job",
                "Remove the selected prebuild job",
                self.action_remove_prebuild,
            ),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    # -- actions ---------------------------------------------------------------------------------

    def _selected(self, tab: str, pick: Callable[[], Json | None], what: str) -> Json | None:
        """The row picked on ``tab`` if it is showing; else None, and the user is told to
        select ``what`` there first."""
        row = pick() if self.query_one("#tabs", TabbedContent).active == tab else None
        if row is None:
            self.notify(f"Select {what} on the {_TAB_NAMES[tab]} tab first.", severity="warning")
        return row

    def _confirm_then(self, question: str, call: Callable[[], Awaitable[Json]], done: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_action_call(call, done)

        self.push_screen(Confirm(question), answered)

    def run_action_call(self, call: Callable[[], Awaitable[Json]], done: str) -> None:
        self._call(call, done)

    @work(group="actions")
    async def _call(self, call: Callable[[], Awaitable[Json]], done: str) -> None:
        try:
            await call()
        except AdminClientError as error:
            self.notify(str(error), title="Refused", severity="error", timeout=8)
            return
        self.notify(done)

    def action_cancel_build(self) -> None:
        screen = self.screen
        build = screen.build if isinstance(screen, BuildLogScreen) else None
        if build is None:
            build = self._selected("builds", self.query_one(BuildsView).selected, "a build")
        if build is None:
            return
        if build.get("phase") not in ACTIVE_PHASES or not build.get("live", True):
            self.notify(f"That build has already ended ({build.get('phase')}).", severity="warning")
            return
        build_id = str(build["id"])
        self._confirm_then(
            f"Cancel the build of {build.get('repo_url')} at {str(build.get('ref'))[:12]}?",
            lambda: self.client.cancel_build(build_id),
            "Build cancelled.",
        )

    def action_stop_server(self) -> None:
        server = self._selected(
            "launches", self.query_one(LaunchesView).selected_server, "a server"
        )
        if server is None:
            return
        user, name = str(server["user"]), str(server.get("server_name", ""))
        self._confirm_then(
            f"Stop the server of {user} ({server.get('repo_url', '')})?",
            lambda: self.client.stop_server(user, name),
            f"Server of {user} stopped.",
        )

    def action_remove_prebuild(self) -> None:
        job = self._selected("prebuilds", self.query_one(PrebuildsView).selected, "a job")
        if job is None:
            return
        name = str(job["name"])
        what = "finished" if job.get("finished") else "still running: removing stops it"
        self._confirm_then(
            f"Remove the prebuild job {name} ({what})?",
            lambda: self.client.remove_prebuild(name),
            f"Prebuild job {name} removed.",
        )

    def action_add_ban(self) -> None:
        def submitted(form: Json | None) -> None:
            if form:
                self.run_action_call(
                    lambda: self.client.add_ban(form["kind"], form["pattern"], form["reason"]),
                    f"Banned {form['pattern']}.",
                )

        self.push_screen(BanForm(), submitted)

    def action_remove_ban(self) -> None:
        ban = self._selected("bans", self.query_one(BansView).selected, "a ban")
        if ban is None:
            return
        if ban["source"] != "admin" or ban.get("id") is None:
            self.notify("That ban comes from the config file; change it there.", severity="warning")
            return
        ban_id = int(ban["id"])
        self._confirm_then(
            f"Remove the {ban['kind']} ban {ban['pattern']}?",
            lambda: self.client.remove_ban(ban_id),
            "Ban removed.",
        )

    def _quota_form(self, pod: bool) -> None:
        def submitted(form: Json | None) -> None:
            if form is None:
                return
            if pod:
                call = lambda: self.client.set_pod_quota(form["quota"], form["expires_in"])  # noqa: E731
            else:
                call = lambda: self.client.set_repo_quota(  # noqa: E731
                    form["pattern"], form["quota"], form["expires_in"]
                )
            self.run_action_call(call, "Quota set.")

        self.push_screen(QuotaForm(pod=pod), submitted)

    def action_set_quota(self) -> None:
        self._quota_form(pod=False)

    def action_set_pod_quota(self) -> None:
        self._quota_form(pod=True)

    def action_clear_quota(self) -> None:
        override = self._selected(
            "launches", self.query_one(LaunchesView).selected_override, "a quota override"
        )
        if override is None:
            return
        if override["scope"] == "pod":
            self._confirm_then(
                "Clear the pod quota override (back to the config's)?",
                self.client.clear_pod_quota,
                "Pod quota override cleared.",
            )
            return
        pattern = str(override["pattern"])
        self._confirm_then(
            f"Clear the quota override for {pattern}?",
            lambda: self.client.clear_repo_quota(pattern),
            "Quota override cleared.",
        )


def make_app(client: AdminAPI, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> AdminConsole:
    return AdminConsole(client, retry_delays=retry_delays)


def run(url: str, token: str) -> None:
    """Run the console in this terminal until the user quits."""
    from .client import AdminClient

    make_app(AdminClient(url, token)).run()
