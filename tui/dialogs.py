"""Modal dialogs (confirmation, the ban and quota forms) and the build log screen."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, Log, Select, Static

from .client import AdminAPI, AdminClientError
from .plain import clean, plain

Json = dict[str, Any]


#: Which forms a spec pattern may be written in: the service matches each of them (the same
#: words as the admin API's ``spec_patterns`` and docs/admin.md).
SPEC_PATTERN_HINT = (
    "A spec regex matches (from the start, ignoring case) any of: org/repo/HEAD (after the "
    "provider, as BinderHub's banned_specs), gh/org/repo/HEAD (with it), or the canonical "
    "repository URL https://github.com/org/repo (however the launch spells it: case, port, "
    "'.git', escapes)."
)


class Confirm(ModalScreen[bool]):
    """Yes or no before anything destructive; Escape is no."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            # The question names what it acts on: a repository URL, a user, a ban pattern.
            yield Label(plain(self.question), id="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class BanForm(ModalScreen[Json | None]):
    """A spec ban (regex) or a network ban (CIDR), with a reason or label."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add a ban")
            yield Select(
                [("spec (regex, see below)", "spec"), ("network (CIDR)", "network")],
                value="spec",
                allow_blank=False,
                id="kind",
            )
            yield Input(placeholder="pattern: ^gh/org/.*  or  192.0.2.0/24", id="pattern")
            yield Label(SPEC_PATTERN_HINT, id="pattern-hint", classes="hint")
            yield Input(placeholder="reason (spec) or label (network)", id="reason")
            with Horizontal(classes="buttons"):
                yield Button("Add", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#pattern", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def submit(self) -> None:
        self.dismiss(
            {
                "kind": str(self.query_one("#kind", Select).value),
                "pattern": self.query_one("#pattern", Input).value,
                "reason": self.query_one("#reason", Input).value,
            }
        )

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class QuotaForm(ModalScreen[Json | None]):
    """A per-repo quota override (pattern) or, with no pattern, the pod quota."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, pod: bool = False) -> None:
        super().__init__()
        self.pod = pod

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Set the pod quota" if self.pod else "Set a repository quota")
            if not self.pod:
                yield Input(placeholder="spec pattern (regex), e.g. ^org/repo", id="pattern")
                yield Label(SPEC_PATTERN_HINT, id="pattern-hint", classes="hint")
            yield Input(placeholder="quota (a number; 0 for a repo: no cap)", id="quota")
            yield Input(placeholder="expires in minutes (empty: never)", id="expires")
            with Horizontal(classes="buttons"):
                yield Button("Set", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query(Input).first().focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def submit(self) -> None:
        raw_quota = self.query_one("#quota", Input).value.strip()
        raw_expires = self.query_one("#expires", Input).value.strip()
        try:
            quota = int(raw_quota)
            expires_in = float(raw_expires) * 60 if raw_expires else None
        except ValueError:
            self.notify("The quota and the expiry must be numbers.", severity="error")
            return
        pattern = "" if self.pod else self.query_one("#pattern", Input).value
        self.dismiss({"pattern": pattern, "quota": quota, "expires_in": expires_in})

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class BuildLogScreen(Screen[None]):
    """One build's details and its log, followed live while the build runs."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("c", "app.cancel_build", "Cancel build"),
    ]

    def __init__(self, client: AdminAPI, build: Json) -> None:
        super().__init__()
        self.client = client
        self.build = build
        self.build_id = str(build["id"])
        self.loaded = False
        self._early: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(plain(self._describe()), id="build-info")
        yield Log(id="build-log", highlight=False, auto_scroll=True)
        yield Footer()

    def _describe(self) -> str:
        b = self.build
        return (
            f"{b.get('repo_url', '')} @ {b.get('ref', '')}  node {b.get('node') or '-'}  "
            f"phase {b.get('phase', '')}  {b.get('reason', '')}"
        ).strip()

    def on_mount(self) -> None:
        self.load()

    @work(exclusive=True, group="build-log")
    async def load(self) -> None:
        log = self.query_one("#build-log", Log)
        try:
            data = await self.client.build(self.build_id, tail=2000)
        except AdminClientError as error:
            log.write_line(clean(f"[could not load the log: {error}]"))
            data = {"build": self.build, "log": []}
        # Log parses no markup, but lets ESC through to the terminal.
        log.write_lines([clean(line) for line in data.get("log", [])])
        log.write_lines(self._early)
        self._early = []
        self.loaded = True
        self.update_build(data.get("build") or self.build)

    def update_build(self, build: Json) -> None:
        self.build = {**self.build, **build}
        self.query_one("#build-info", Static).update(plain(self._describe()))

    def append(self, lines: list[str]) -> None:
        lines = [clean(line) for line in lines]
        if not self.loaded:
            self._early.extend(lines)
            return
        self.query_one("#build-log", Log).write_lines(lines)
