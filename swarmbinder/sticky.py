"""Sticky builds: which Swarm node should build a repository.

Builds of one repository go to the same node so its Docker layer cache is reused. The node is
chosen by rendezvous (highest random weight) hashing: every node gets a score from
``sha256(node key, repo URL)`` and the nodes are ranked by score. Adding a node takes over only
the repos it now wins (about ``1/(n+1)`` of them); removing one moves only the repos it had, each
to its own second choice. The full ranking is returned so a caller can fail over in order.

The node key is the hostname, not the Swarm node ID: a host that leaves and rejoins the swarm
gets a new ID but keeps its Docker cache. Scores use sha256, never ``hash()``, which is salted
per process and would move every repo on each restart.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Default node label that marks build nodes; when no node carries it, every node builds.
BUILD_NODE_LABEL = "swarmbinder.build=true"


class NodeState(enum.StrEnum):
    """``Status.State`` of a Swarm node."""

    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


class NodeAvailability(enum.StrEnum):
    """``Spec.Availability`` of a Swarm node."""

    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


@dataclass(frozen=True)
class Node:
    """What ranking needs to know about one Swarm node."""

    id: str
    hostname: str
    state: NodeState = NodeState.READY
    availability: NodeAvailability = NodeAvailability.ACTIVE
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The identity that is hashed: the hostname, or the ID when it has none."""
        return self.hostname or self.id

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.READY and self.availability is NodeAvailability.ACTIVE

    @property
    def constraint(self) -> str:
        """A Swarm placement constraint that pins a task to this node."""
        return f"node.id=={self.id}"

    def has_label(self, label: str) -> bool:
        key, value = parse_label(label)
        return self.labels.get(key) == value


def parse_label(label: str) -> tuple[str, str]:
    """Split ``key=value``; a bare ``key`` means ``key=true``."""
    key, sep, value = label.partition("=")
    key = key.strip()
    if not key:
        raise ValueError(f"node label {label!r} has no key")
    return key, value.strip() if sep else "true"


def score(node_key: str, repo_url: str) -> int:
    """The rendezvous weight of a node for a repository."""
    digest = hashlib.sha256(f"{node_key}\0{repo_url}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rank_nodes(
    repo_url: str,
    nodes: Iterable[Node],
    *,
    build_label: str | None = BUILD_NODE_LABEL,
    required_labels: Mapping[str, str] | None = None,
) -> list[Node]:
    """Nodes that may build ``repo_url``, best first.

    Only ready, active nodes carrying every one of ``required_labels`` (the build placement
    constraints, which Swarm would enforce anyway) are returned. If ``build_label`` is set and
    *any* of those nodes carries it, only labelled nodes are candidates. Whether the label is in
    use is decided on all nodes, down or drained ones included, so losing the last labelled node
    does not silently send builds to nodes the operator kept free of them: the result is then
    empty, and the caller decides whether to wait or build unpinned.
    """
    required = dict(required_labels or {})
    candidates = [n for n in nodes if all(n.labels.get(k) == v for k, v in required.items())]
    if build_label is not None and any(n.has_label(build_label) for n in candidates):
        candidates = [n for n in candidates if n.has_label(build_label)]
    eligible = [n for n in candidates if n.schedulable]
    # ties (two nodes sharing a hostname) fall back to the node ID so the order is total
    return sorted(eligible, key=lambda n: (score(n.key, repo_url), n.id), reverse=True)


def pick_node(
    repo_url: str,
    nodes: Iterable[Node],
    *,
    build_label: str | None = BUILD_NODE_LABEL,
    required_labels: Mapping[str, str] | None = None,
) -> Node | None:
    """The first choice of :func:`rank_nodes`, or ``None`` when no node may build."""
    ranked = rank_nodes(repo_url, nodes, build_label=build_label, required_labels=required_labels)
    return ranked[0] if ranked else None
