"""Where a stack's state lives: the node label that pins it.

The registry's images, the hub's database, Binder's SQLite store and PostgreSQL's data are
local volumes: a task that Swarm reschedules onto another node would start on an empty one.
docker-stack.yml and stack/postgres.yml constrain those services to the node labelled
``swarmbinder.state.<stack>=true``. The stack's name is in the label's key, not its value, so
two stacks on one swarm can keep their state on the same node or on different ones.

``up`` sets the label on the manager it runs on when no node has it (or on the node named by
``--state-node``), and leaves a label it finds where it is: the state lives there. Moving the
state is the operator's act: stop the stack, copy its volumes, then ``up --state-node NEW``,
which moves the label only while the stack is down. ``down --purge`` removes the label along
with the volumes it removes, on this node only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import hostsetup as hs
from .options import StackInputError
from .state import running_tasks

LABEL_PREFIX = "swarmbinder.state."


def state_label(stack: str) -> str:
    return f"{LABEL_PREFIX}{stack}"


def state_constraint(stack: str) -> str:
    """The placement constraint of the state's services, as the stack files spell it."""
    return f"node.labels.{state_label(stack)} == true"


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    manager: bool = True
    ready: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.hostname or self.id[:12]


@dataclass(frozen=True)
class StatePlan:
    """The node that keeps the stack's state, and what ``up`` changes to say so."""

    stack: str
    node: Node
    #: the label is to be set on ``node`` (absent, or another value)
    add: bool = False
    #: the node the label moves away from (``--state-node`` while the stack is down)
    moved_from: Node | None = None

    def line(self) -> str:
        where = f"node {self.node}"
        if self.moved_from:
            return (
                f"moving the state of stack {self.stack} from node {self.moved_from} to {where} "
                f"(label {state_label(self.stack)}); its volumes on {self.moved_from} stay there"
            )
        how = "labelling it" if self.add else "label"
        return (
            f"the state of stack {self.stack} (registry, hub database, Binder's store) is kept "
            f"on {where} ({how} {state_label(self.stack)})"
        )


def plan_state(
    stack: str,
    nodes: Sequence[Node],
    this_node: str,
    asked: str | None,
    deployed: bool,
    holder: str | None = None,
) -> StatePlan:
    """Which node keeps the state: the labelled one, else ``asked`` (a hostname or an ID),
    else the node whose volumes ``holder`` the running stack's state (a stack deployed before
    the label existed), else this node. Raises StackInputError for a name no node has, a
    worker, or a node that is down, and for a move while the stack runs."""
    label = state_label(stack)
    labelled = [n for n in nodes if label in n.labels]
    if len(labelled) > 1:
        names = ", ".join(str(n) for n in labelled)
        raise StackInputError(
            f"label {label} is on several nodes ({names}); the state is on one: remove it from "
            f"the others (docker node update --label-rm {label} NODE)"
        )
    target = _find_node(nodes, asked) if asked else None
    current = labelled[0] if labelled else None
    if current is None and holder:
        current = next((n for n in nodes if n.id == holder), None)
    if target is None:
        target = current or _find_node(nodes, this_node)
    _check_can_hold(target, asked)
    if current is None or current.id == target.id:
        return StatePlan(stack, target, add=target.labels.get(label) != "true")
    if deployed:  # where it runs, its volumes are in use
        raise StackInputError(
            f"the state of stack {stack} is on node {current} while the stack runs: to move it "
            f"to {target}, stop the stack (swarmbinder down), copy its volumes there, then run "
            f"swarmbinder up --state-node {asked}"
        )
    moved_from = current if label in current.labels else None
    return StatePlan(stack, target, add=True, moved_from=moved_from)


def _find_node(nodes: Sequence[Node], name: str) -> Node:
    exact = [n for n in nodes if name in (n.id, n.hostname)]
    if not exact:
        exact = [n for n in nodes if len(name) >= 6 and n.id.startswith(name)]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise StackInputError(
            f"--state-node {name}: {len(exact)} nodes are called that; give the node's ID"
        )
    known = ", ".join(str(n) for n in nodes) or "none"
    raise StackInputError(f"--state-node {name}: no node of this swarm is called that ({known})")


def _check_can_hold(node: Node, asked: str | None) -> None:
    what = f"--state-node {asked}" if asked else f"node {node}"
    if not node.manager:
        # Binder and the hub create services through the engine they run on.
        raise StackInputError(
            f"{what} is a worker: the stack's state runs with Binder and the hub, on a manager"
        )
    if not node.ready:
        raise StackInputError(f"{what} is down or drained: its services would wait for it forever")


def swarm_nodes() -> list[Node]:
    ids = hs.run(["docker", "node", "ls", "-q"], timeout=30).stdout.split()
    if not ids:
        return []
    inspect = hs.run(["docker", "node", "inspect", "--format", "{{json .}}", *ids], timeout=30)
    return [node_from_inspect(json.loads(line)) for line in inspect.stdout.splitlines() if line]


def node_from_inspect(raw: Mapping[str, object]) -> Node:
    spec = raw.get("Spec", {})
    spec = spec if isinstance(spec, dict) else {}
    description = raw.get("Description", {})
    description = description if isinstance(description, dict) else {}
    status = raw.get("Status", {})
    status = status if isinstance(status, dict) else {}
    return Node(
        id=str(raw.get("ID", "")),
        hostname=str(description.get("Hostname", "")),
        manager=spec.get("Role") == "manager",
        ready=status.get("State") == "ready" and spec.get("Availability") == "active",
        labels=dict(spec.get("Labels") or {}),
    )


def state_holder(stack: str) -> str | None:
    """The ID of the node the stack's registry task runs on (None: none runs)."""
    tasks = running_tasks(f"{stack}_registry")
    if not tasks:
        return None
    inspect = hs.run(["docker", "inspect", "--format", "{{.NodeID}}", tasks[0]], check=False)
    return inspect.stdout.strip() or None


def this_node_id() -> str:
    return hs.run(["docker", "info", "--format", "{{.Swarm.NodeID}}"], timeout=30).stdout.strip()


def apply_state_plan(plan: StatePlan) -> None:
    """Set the label (idempotent: a node that has it is left alone)."""
    label = state_label(plan.stack)
    if plan.moved_from:
        hs.run(["docker", "node", "update", "--label-rm", label, plan.moved_from.id], timeout=60)
    if plan.add:
        hs.run(
            ["docker", "node", "update", "--label-add", f"{label}=true", plan.node.id], timeout=60
        )


def remove_state_label(stack: str) -> tuple[str, str]:
    """After ``down --purge`` removed this node's volumes: the label too, if this node has it.
    Returns (what was removed, what to tell), each '' if nothing; a label on another node
    stays, with the volumes there."""
    label = state_label(stack)
    here = this_node_id()
    for node in swarm_nodes():
        if label not in node.labels:
            continue
        if node.id != here:
            return "", (
                f"the state of stack {stack} is on node {node}: its volumes and its label "
                f"{label} stay there (remove them on that node)"
            )
        hs.run(["docker", "node", "update", "--label-rm", label, node.id], timeout=60)
        return f"label {label} of node {node}", ""
    return "", ""
