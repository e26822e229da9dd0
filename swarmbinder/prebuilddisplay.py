"""The prebuild command's progress: live lines on a terminal, a line per change of state in a
log, or JSON lines for automation; each ends with the run's summary.

Only :mod:`swarmbinder.prebuildcmd` uses these: the service never imports this module (nor
rich, which draws the terminal's live lines).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO
from urllib.parse import unquote

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .prebuild.run import Item, Report, State


def display_spec(spec: str) -> str:
    """A spec as people read it: escaped URLs unescaped."""
    return unquote(spec)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def progress_line(item: Item, now: float, width: int = 0) -> str:
    """``state  elapsed  spec  last log line (or reason)``, cut to ``width`` when given."""
    text = (
        f"{item.state.value:<10} {format_seconds(item.elapsed(now)):>7}  {display_spec(item.spec)}"
    )
    if item.detail:
        text += f"  {item.detail}"
    return text[: width - 1] if width > 1 and len(text) >= width else text


def summary_table(report: Report) -> str:
    now = report.clock()
    rows = [("SPEC", "RESULT", "TIME", "IMAGE / REASON")]
    for item in report.items:
        what = item.image if item.ok else item.detail or item.image
        rows.append(
            (display_spec(item.spec), item.state.value, format_seconds(item.elapsed(now)), what)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    ]
    parts = [
        f"{report.count(State.BUILT)} built",
        f"{report.count(State.FOUND)} already in the registry",
    ]
    if report.count(State.FAILED):
        parts.append(f"{report.count(State.FAILED)} failed")
    if report.count(State.UNRESOLVED):
        parts.append(f"{report.count(State.UNRESOLVED)} did not resolve")
    lines.append("")
    lines.append(", ".join(parts))
    return "\n".join(lines)


class Display(Protocol):
    def start(self) -> None:
        """Before the first change: a live display takes over its lines of the terminal."""

    def changed(self, item: Item) -> None: ...

    def refresh(self) -> None: ...

    def close(self, report: Report) -> None:
        """The run is over: the final progress, then the summary."""

    def stop(self) -> None:
        """Give the terminal back, whether or not the display was closed; idempotent."""


class LiveDisplay:
    """One line per spec, redrawn in place by rich's live display (a terminal)."""

    def __init__(self, items: Sequence[Item], console: Console, clock: Callable[[], float]):
        self._items = items
        self._console = console
        self._clock = clock
        # Redrawn by refresh() alone: rich's own refresh thread would read the items while
        # the event loop changes them.
        self._live = Live(get_renderable=self._lines, console=console, auto_refresh=False)

    def _lines(self) -> Group:
        now = self._clock()
        # Plain Text, never markup: specs and log lines are the repositories' words. Cut to
        # the width, not wrapped, so every spec keeps one line.
        return Group(
            *(Text(progress_line(item, now), no_wrap=True, overflow="crop") for item in self._items)
        )

    def start(self) -> None:
        self._live.start()

    def changed(self, item: Item) -> None:
        pass  # drawn at the next refresh: log lines may come far faster than anyone reads

    def refresh(self) -> None:
        self._live.refresh()

    def close(self, report: Report) -> None:
        self._live.stop()  # draws the lines a last time and leaves them on the screen
        out = self._console.file
        print(file=out)
        print(summary_table(report), file=out, flush=True)

    def stop(self) -> None:
        self._live.stop()


class _LineDisplay:
    """A display that only ever writes whole lines: nothing to take over, redraw or give back."""

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainDisplay(_LineDisplay):
    """A line each time a spec changes state (a log file, CI), then the summary table."""

    def __init__(self, out: TextIO, clock: Callable[[], float]) -> None:
        self._out = out
        self._clock = clock
        self._shown: dict[str, State] = {}

    def changed(self, item: Item) -> None:
        if self._shown.get(item.spec) is item.state:
            return
        self._shown[item.spec] = item.state
        print(progress_line(item, self._clock()), file=self._out, flush=True)

    def close(self, report: Report) -> None:
        print(file=self._out)
        print(summary_table(report), file=self._out, flush=True)


class JsonDisplay(_LineDisplay):
    """JSON lines for automation: ``{"type": "progress", ...}`` on every change of state (and
    at most every ``log_interval`` seconds for new log lines), then one ``summary`` object."""

    def __init__(self, out: TextIO, clock: Callable[[], float], log_interval: float = 1.0):
        self._out = out
        self._clock = clock
        self._log_interval = log_interval
        self._last: dict[str, tuple[State, float]] = {}

    def changed(self, item: Item) -> None:
        now = self._clock()
        last = self._last.get(item.spec)
        if last is not None and last[0] is item.state and now - last[1] < self._log_interval:
            return
        self._last[item.spec] = (item.state, now)
        print(json.dumps({"type": "progress", **item.to_json(now)}), file=self._out, flush=True)

    def close(self, report: Report) -> None:
        print(json.dumps(report.to_json()), file=self._out, flush=True)


def make_display(
    items: Sequence[Item], *, as_json: bool, out: TextIO, clock: Callable[[], float]
) -> Display:
    if as_json:
        return JsonDisplay(out, clock)
    if out.isatty():
        return LiveDisplay(items, Console(file=out), clock)
    return PlainDisplay(out, clock)
