"""The Pools tab: each warm pool (``warm_pools``) with its servers, as the admin API's ``pools``.

A pool is named by the spec its pattern resolved to (or the pattern, before it resolved), and
shows its image's tag (a commit, cut short), its size, the servers ready to hand out and those
starting, how many were handed out in the last hour, whether its image is building, and the
last error (a failed build or spawn, retried with backoff). The table is short and is refilled
on each change; every cell is :mod:`.plain` text, since specs, patterns and errors come from
configuration and repositories.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from .plain import cell, plain

Json = dict[str, Any]

#: Characters of an image tag shown: a commit's abbreviated hash.
TAG_SHOWN = 12
#: Characters of a pool's last error shown in its cell.
ERROR_SHOWN = 80

COLUMNS = (
    "Pool",
    "Image tag",
    "Size",
    "Ready",
    "Starting",
    "Handed out (1 h)",
    "Building",
    "Last error",
)


def short_tag(image: str) -> str:
    """The tag of ``registry:port/name:tag``, cut short; ``-`` before the spec resolved."""
    name, _, tag = image.rpartition(":")
    if not image or "/" in tag or not name:
        return image[-TAG_SHOWN:] if image else "-"
    return tag[:TAG_SHOWN]


def pool_cells(pool: Json) -> list[str]:
    return [
        str(pool.get("spec") or pool.get("pattern") or "?"),
        short_tag(str(pool.get("image") or "")),
        str(pool.get("size", 0)),
        str(pool.get("waiting", 0)),
        str(pool.get("starting", 0)),
        str(pool.get("handed_out_last_hour", 0)),
        "yes" if pool.get("building") else "",
        str(pool.get("last_error") or "")[:ERROR_SHOWN],
    ]


class PoolsView(Vertical):
    """Warm pools: ready, starting and handed-out servers per repository."""

    def __init__(self) -> None:
        super().__init__(id="pools-view")

    def compose(self) -> ComposeResult:
        yield Static("No data yet.", id="pools-summary")
        table: DataTable[Text] = DataTable(id="pools-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table

    def show(self, data: Json | None, error: str = "") -> None:
        summary = self.query_one("#pools-summary", Static)
        if data is None:
            summary.update(plain(f"Pools unavailable: {error}"))
            return
        pools: list[Json] = list(data.get("pools") or [])
        table = self.query_one("#pools-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        for n, pool in enumerate(pools):
            # A pattern may name several specs and (with warm_pool_auto) a spec come and go:
            # the position keeps keys unique, the table being refilled whole anyway.
            table.add_row(*map(cell, pool_cells(pool)), key=f"{n}:{pool.get('spec', '')}")
        if pools:
            table.move_cursor(row=min(cursor, len(pools) - 1))
        if not pools:
            summary.update(plain("No warm pools (none configured in warm_pools, or auth_enabled)."))
            return
        ready = sum(int(p.get("waiting", 0)) for p in pools)
        starting = sum(int(p.get("starting", 0)) for p in pools)
        handed = sum(int(p.get("handed_out_last_hour", 0)) for p in pools)
        failing = sum(1 for p in pools if p.get("last_error"))
        summary.update(
            plain(
                f"{len(pools)} pools: {ready} ready, {starting} starting, "
                f"{handed} handed out in the last hour"
                + (f"; {failing} failing" if failing else "")
            )
        )
