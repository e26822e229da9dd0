"""Disk use per node and the registry's size, as Binder keeps them: labels on the Swarm nodes.

Binder learns a node's disk use from the node housekeeping job's report
(:mod:`swarmbinder.housekeeping`) and the registry's size from its garbage collection job
(:mod:`swarmbinder.registrygc`), and writes them as node labels: every replica, ``/metrics`` and
the admin console read them from Swarm, where they outlive a restart of the replica that wrote
them. Labels are text any manager can write, so a value that does not parse is shown as unknown,
never trusted as a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .labels import (
    LABEL_DISK_CHECKED,
    LABEL_DISK_TOTAL,
    LABEL_DISK_USED,
    LABEL_REGISTRY_CHECKED,
    LABEL_REGISTRY_SIZE,
)


@dataclass(frozen=True)
class NodeDisk:
    """The filesystem of a node's Docker data root when it was last measured."""

    used: int
    total: int
    checked: float

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class RegistrySize:
    """The registry's storage after its last garbage collection."""

    size: int
    checked: float


def _number(labels: Mapping[str, str], key: str) -> int | None:
    text = labels.get(key, "")
    return int(text) if text.isdigit() else None


def _time(labels: Mapping[str, str], key: str) -> float:
    try:
        return float(labels.get(key, "0"))
    except ValueError:
        return 0.0


def node_disk(labels: Mapping[str, str]) -> NodeDisk | None:
    """The disk use a node's labels record, or None (never measured, or not a number)."""
    used, total = _number(labels, LABEL_DISK_USED), _number(labels, LABEL_DISK_TOTAL)
    if used is None or total is None or used > total:
        return None
    return NodeDisk(used, total, _time(labels, LABEL_DISK_CHECKED))


def disk_labels(used: int, total: int, now: float) -> dict[str, str | None]:
    """The labels recording a measurement."""
    return {
        LABEL_DISK_USED: str(used),
        LABEL_DISK_TOTAL: str(total),
        LABEL_DISK_CHECKED: f"{now:.0f}",
    }


def registry_size(labels: Mapping[str, str]) -> RegistrySize | None:
    """The registry's size a node's labels record (the node its volume is on), or None."""
    size = _number(labels, LABEL_REGISTRY_SIZE)
    return None if size is None else RegistrySize(size, _time(labels, LABEL_REGISTRY_CHECKED))


def registry_labels(size: int | None, now: float) -> dict[str, str | None]:
    """The labels recording the registry's size on its node; None removes them (the registry
    moved away from a node)."""
    if size is None:
        return {LABEL_REGISTRY_SIZE: None, LABEL_REGISTRY_CHECKED: None}
    return {LABEL_REGISTRY_SIZE: str(size), LABEL_REGISTRY_CHECKED: f"{now:.0f}"}


def latest_registry_size(nodes_labels: Iterable[Mapping[str, str]]) -> RegistrySize | None:
    """The newest registry size any node records (a registry that moved leaves an old one)."""
    found = [s for s in map(registry_size, nodes_labels) if s is not None]
    return max(found, key=lambda s: s.checked) if found else None


def disk_json(labels: Mapping[str, str]) -> dict[str, Any]:
    """A node's disk fields in the admin API: bytes, or None when unknown."""
    disk = node_disk(labels)
    size = registry_size(labels)
    return {
        "disk_used": disk.used if disk else None,
        "disk_total": disk.total if disk else None,
        "disk_checked": disk.checked if disk else None,
        "registry_size": size.size if size else None,
    }
