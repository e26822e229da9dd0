"""The console's panes: one widget per screen tab, each fed the admin API's JSON.

The builds and prebuild jobs tables are keyed (build id, job name) and updated cell by cell,
so a busy list does not flicker or lose the cursor; the other tables are short and are
refilled on each change. Every cell and summary is :mod:`.plain` text: what they show comes
from the service and from repositories, and a ``str`` cell would be parsed as markup.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from .plain import cell, plain

Json = dict[str, Any]

#: The admin API's ``phase`` of a build still going: the values of swarmbinder's BuildStatus
#: (swarmbinder.buildstatus) that are not an end, spelled here as the console never imports
#: the service.
ACTIVE_PHASES = ("queued", "running")
#: Finished builds kept in the table (newest stay).
MAX_FINISHED_ROWS = 200
MAX_AUDIT_ROWS = 200


def when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def size(value: float | None) -> str:
    """Bytes as a short size (binary units, as ``docker system df`` shows them)."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def disk(node: Json) -> str:
    """A node's disk use as node housekeeping last measured it: used of total (percent)."""
    used, total = node.get("disk_used"), node.get("disk_total")
    if used is None or not total:
        return "-"
    return f"{size(used)} of {size(total)} ({used / total:.0%})"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def selected_key(table: DataTable[Any]) -> str | None:
    """The key of the row under the cursor, if the table has rows."""
    if table.row_count == 0:
        return None
    row = min(table.cursor_row, table.row_count - 1)
    value = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
    return None if value is None else str(value)


class BuildsView(Vertical):
    """Live builds first, finished ones after; Enter opens one."""

    COLUMNS = (
        ("repo", "Repository"),
        ("ref", "Ref"),
        ("node", "Node"),
        ("phase", "Phase"),
        ("queue", "Queue"),
        ("elapsed", "Elapsed"),
        ("log", "Last log line"),
    )

    def __init__(self) -> None:
        super().__init__(id="builds-view")
        self.builds: dict[str, Json] = {}
        #: build id -> (elapsed as reported, monotonic time of the report)
        self._clock: dict[str, tuple[float, float]] = {}

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(id="builds-table", cursor_type="row", zebra_stripes=True)
        for key, label in self.COLUMNS:
            table.add_column(label, key=key)
        yield table

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#builds-table", DataTable)

    def _cells(self, build: Json) -> dict[str, Text]:
        last = build.get("last_log") or []
        queue = build.get("queue_position")
        cells = {
            "repo": str(build.get("repo_url", "")),
            "ref": str(build.get("ref", ""))[:12],
            "node": str(build.get("node") or "-"),
            "phase": str(build.get("phase", "")),
            "queue": str(queue) if queue else "",
            "elapsed": duration(self._elapsed(str(build["id"]))),
            "log": (last[-1] if last else build.get("reason", ""))[:80],
        }
        return {key: cell(value) for key, value in cells.items()}

    def _elapsed(self, build_id: str) -> float | None:
        build = self.builds.get(build_id)
        reported = self._clock.get(build_id)
        if build is None or reported is None:
            return None
        elapsed, at = reported
        if build.get("phase") in ACTIVE_PHASES:
            elapsed += time.monotonic() - at
        return elapsed

    def load(self, builds: list[Json], recent: list[Json]) -> None:
        """A snapshot: every live build, the finished ones the store remembers."""
        ids = {str(b["id"]) for b in builds + recent}
        for build_id, build in list(self.builds.items()):
            if build_id not in ids and build.get("phase") in ACTIVE_PHASES:
                self.forget(build_id)
        for build in reversed(recent):
            if str(build["id"]) not in self.builds:
                self.upsert(build)
        for build in builds:
            self.upsert(build)

    def upsert(self, build: Json) -> None:
        build_id = str(build["id"])
        previous = self.builds.get(build_id, {})
        if not build.get("last_log") and previous.get("last_log"):
            build = {**build, "last_log": previous["last_log"]}
        self.builds[build_id] = build
        self._clock[build_id] = (float(build.get("elapsed") or 0.0), time.monotonic())
        cells = self._cells(build)
        table = self.table
        if build_id in table.rows:
            for key, value in cells.items():
                table.update_cell(build_id, key, value)
        else:
            table.add_row(*cells.values(), key=build_id)
            self._trim()

    def log_lines(self, build_id: str, lines: list[str]) -> None:
        build = self.builds.get(build_id)
        if build is None or not lines:
            return
        build["last_log"] = [*(build.get("last_log") or []), *lines][-3:]
        self.table.update_cell(build_id, "log", cell(lines[-1][:80]))

    def forget(self, build_id: str) -> None:
        """The service forgot the build: keep a finished one's row (it is history)."""
        build = self.builds.get(build_id)
        if build is None:
            return
        if build.get("phase") in ACTIVE_PHASES:
            del self.builds[build_id]
            self._clock.pop(build_id, None)
            self.table.remove_row(build_id)

    def tick(self) -> None:
        """Advance the elapsed time of running builds (once a second)."""
        if not self.is_attached or not self.query("#builds-table"):
            return  # the console is shutting down
        table = self.table
        for build_id, build in self.builds.items():
            if build.get("phase") in ACTIVE_PHASES and build_id in table.rows:
                table.update_cell(build_id, "elapsed", cell(duration(self._elapsed(build_id))))

    def _trim(self) -> None:
        finished = [k for k, b in self.builds.items() if b.get("phase") not in ACTIVE_PHASES]
        for build_id in finished[: max(len(finished) - MAX_FINISHED_ROWS, 0)]:
            del self.builds[build_id]
            self._clock.pop(build_id, None)
            self.table.remove_row(build_id)

    def selected(self) -> Json | None:
        key = selected_key(self.table)
        return None if key is None else self.builds.get(key)


def _refill(table: DataTable[Text], rows: list[tuple[str, list[str]]]) -> None:
    """Replace the rows, keeping the cursor on the same row number."""
    cursor = table.cursor_row
    table.clear()
    for key, cells in rows:
        table.add_row(*map(cell, cells), key=key)
    if rows:
        table.move_cursor(row=min(cursor, len(rows) - 1))


def _table(table_id: str, *columns: str) -> DataTable[Text]:
    table: DataTable[Text] = DataTable(id=table_id, cursor_type="row", zebra_stripes=True)
    table.add_columns(*columns)
    return table


def _server_key(server: Json) -> str:
    return f"{server['user']}/{server.get('server_name', '')}"


def _override_key(override: Json) -> str:
    return f"{override['scope']}:{override.get('pattern') or ''}"


class LaunchesView(Vertical):
    """Running servers per repository against their quotas, the overrides, the servers."""

    def __init__(self) -> None:
        super().__init__(id="launches-view")
        self.servers: list[Json] = []
        self.overrides: list[Json] = []

    def compose(self) -> ComposeResult:
        yield Static("No data yet.", id="launches-summary")
        yield Static("Repositories", classes="heading")
        yield _table("repos-table", "Repository", "Running", "Quota", "From")
        yield Static("Quota overrides (x clears the selected one)", classes="heading")
        yield _table("overrides-table", "Scope", "Pattern", "Quota", "Expires", "Set by")
        yield Static("Servers (s stops the selected one)", classes="heading")
        yield _table("servers-table", "User", "Repository", "Started")

    def show_servers(self, data: Json | None, error: str = "") -> None:
        summary = self.query_one("#launches-summary", Static)
        if data is None:
            summary.update(plain(f"User servers unavailable: {error}"))
            return
        pod = data.get("pod_quota")
        summary.update(
            plain(
                f"{data.get('total', 0)} user servers running; pod quota "
                f"{'none' if pod is None else pod} ({data.get('pod_quota_source', 'config')})"
            )
        )
        repos = []
        for repo in data.get("repos", []):
            quota = repo.get("quota")
            shown = "?" if quota is None else ("no cap" if quota == 0 else str(quota))
            repos.append(
                (
                    str(repo["repo_url"]),
                    [repo["repo_url"], str(repo["running"]), shown, repo.get("quota_source") or ""],
                )
            )
        _refill(self.query_one("#repos-table", DataTable), repos)
        self.servers = list(data.get("servers", []))
        _refill(
            self.query_one("#servers-table", DataTable),
            [
                (
                    _server_key(s),
                    [s["user"], s.get("repo_url", ""), when(s.get("created"))],
                )
                for s in self.servers
            ],
        )

    def show_quotas(self, quotas: Json) -> None:
        self.overrides = list(quotas.get("overrides", []))
        _refill(
            self.query_one("#overrides-table", DataTable),
            [
                (
                    _override_key(o),
                    [
                        o["scope"],
                        o.get("pattern") or "(all servers)",
                        str(o["quota"]),
                        when(o.get("expires_at")) if o.get("expires_at") else "never",
                        o.get("created_by", ""),
                    ],
                )
                for o in self.overrides
            ],
        )

    def selected_server(self) -> Json | None:
        key = selected_key(self.query_one("#servers-table", DataTable))
        return next((s for s in self.servers if _server_key(s) == key), None)

    def selected_override(self) -> Json | None:
        key = selected_key(self.query_one("#overrides-table", DataTable))
        return next((o for o in self.overrides if _override_key(o) == key), None)


class BansView(Vertical):
    def __init__(self) -> None:
        super().__init__(id="bans-view")
        self.bans: list[Json] = []

    def compose(self) -> ComposeResult:
        yield Static("a adds a ban; d removes the selected admin ban", classes="heading")
        yield _table("bans-table", "Id", "Kind", "Pattern", "Reason", "From", "Set by")

    def show(self, bans: list[Json]) -> None:
        self.bans = bans
        _refill(
            self.query_one("#bans-table", DataTable),
            [
                (
                    f"{b['source']}:{b.get('id') or i}",
                    [
                        str(b.get("id") or "-"),
                        b["kind"],
                        b["pattern"],
                        b.get("reason", ""),
                        b["source"],
                        b.get("created_by") or "",
                    ],
                )
                for i, b in enumerate(bans)
            ],
        )

    def selected(self) -> Json | None:
        key = selected_key(self.query_one("#bans-table", DataTable))
        for i, ban in enumerate(self.bans):
            if f"{ban['source']}:{ban.get('id') or i}" == key:
                return ban
        return None


class NodesView(Vertical):
    def __init__(self) -> None:
        super().__init__(id="nodes-view")

    def compose(self) -> ComposeResult:
        yield Static("", id="nodes-note")
        yield _table(
            "nodes-table",
            "Node",
            "Role",
            "State",
            "Availability",
            "Running builds",
            "Sticky share",
            "Disk",
        )

    def show(self, data: Json | None, error: str = "") -> None:
        note = self.query_one("#nodes-note", Static)
        if data is None:
            note.update(plain(f"Nodes unavailable: {error}"))
            return
        nodes = data.get("nodes", [])
        registry = [n for n in nodes if n.get("registry_size") is not None]
        where = (
            f"; registry {size(registry[0]['registry_size'])} on {registry[0]['hostname']}"
            if registry
            else ""
        )
        note.update(
            plain(
                f"Sticky share over {data.get('repos_sampled', 0)} recently built "
                f"repositories{where}"
            )
        )
        _refill(
            self.query_one("#nodes-table", DataTable),
            [
                (
                    str(n["id"]),
                    [
                        n["hostname"],
                        n.get("role", ""),
                        n["state"],
                        n["availability"],
                        str(n["running_builds"]),
                        f"{n['sticky_share']:.0%}",
                        disk(n),
                    ],
                )
                for n in nodes
            ],
        )


class AuditView(Vertical):
    def __init__(self) -> None:
        super().__init__(id="audit-view")
        self.entries: list[Json] = []

    def compose(self) -> ComposeResult:
        yield _table("audit-table", "When", "Who", "What", "Detail")

    def show(self, entries: list[Json]) -> None:
        self.entries = sorted(entries, key=lambda e: e["id"], reverse=True)[:MAX_AUDIT_ROWS]
        self._render_rows()

    def add(self, entry: Json) -> None:
        if any(e["id"] == entry["id"] for e in self.entries):
            return
        self.entries = [entry, *self.entries][:MAX_AUDIT_ROWS]
        self._render_rows()

    def _render_rows(self) -> None:
        _refill(
            self.query_one("#audit-table", DataTable),
            [
                (
                    str(e["id"]),
                    [
                        when(e["at"]),
                        e["actor"],
                        e["action"],
                        " ".join(f"{k}={v}" for k, v in sorted(e.get("detail", {}).items())),
                    ],
                )
                for e in self.entries
            ],
        )


class PrebuildsView(Vertical):
    """Prebuild jobs on the swarm, oldest first, as their tasks stand; r removes one."""

    COLUMNS = (
        ("name", "Job"),
        ("specs", "Specs"),
        ("created", "Started"),
        ("state", "State"),
        ("exit", "Exit code"),
        ("message", "Message"),
    )

    def __init__(self) -> None:
        super().__init__(id="prebuilds-view")
        self.jobs: dict[str, Json] = {}

    def compose(self) -> ComposeResult:
        yield Static("No data yet.", id="prebuilds-summary")
        table: DataTable[Text] = DataTable(
            id="prebuilds-table", cursor_type="row", zebra_stripes=True
        )
        for key, label in self.COLUMNS:
            table.add_column(label, key=key)
        yield table

    def show(self, data: Json | None, error: str = "") -> None:
        summary = self.query_one("#prebuilds-summary", Static)
        if data is None:
            summary.update(plain(f"Prebuild jobs unavailable: {error}"))
            return
        jobs = {str(job["name"]): job for job in data.get("jobs", [])}
        table = self.query_one("#prebuilds-table", DataTable)
        for name in [n for n in self.jobs if n not in jobs]:
            table.remove_row(name)
        for name, job in jobs.items():
            exit_code = job.get("exit_code")
            cells = {
                "name": name,
                "specs": str(job.get("specs", "")),
                "created": when(job.get("created")),
                "state": str(job.get("state", "")),
                "exit": "-" if exit_code is None else str(exit_code),
                "message": str(job.get("message") or "")[:80],
            }
            if name in table.rows:
                for key, value in cells.items():
                    table.update_cell(name, key, cell(value))
            else:
                table.add_row(*map(cell, cells.values()), key=name)
        self.jobs = jobs
        states = Counter(str(job.get("state")) for job in jobs.values())
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        summary.update(
            plain(
                f"{len(jobs)} prebuild jobs"
                + (f": {counts}" if counts else "")
                + " (swarmbinder prebuild --as-job starts one; r removes the selected one)"
            )
        )

    def selected(self) -> Json | None:
        key = selected_key(self.query_one("#prebuilds-table", DataTable))
        return None if key is None else self.jobs.get(key)
