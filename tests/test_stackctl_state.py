"""Where a stack's state lives (the node label ``up`` sets) and how ``swarmbinder admin`` finds
a stack's console: the rules, without an engine. The real thing is in
test_stack_state_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swarmbinder.cli import main
from swarmbinder.stackctl import StackInputError
from swarmbinder.stackctl import access as access_module
from swarmbinder.stackctl.access import ConsoleAccess, pick_stack
from swarmbinder.stackctl.placement import (
    Node,
    StatePlan,
    node_from_inspect,
    plan_state,
    state_constraint,
    state_label,
)

LABEL = state_label("lab")
A = Node("aaaaaaaaaaaa1", "alpha")
B = Node("bbbbbbbbbbbb2", "beta")
WORKER = Node("cccccccccccc3", "gamma", manager=False)
DRAINED = Node("dddddddddddd4", "delta", ready=False)


def labelled(node: Node, value: str = "true") -> Node:
    return Node(node.id, node.hostname, node.manager, node.ready, {LABEL: value})


def test_the_label_names_the_stack_so_two_stacks_can_share_a_node() -> None:
    assert state_label("lab") == "swarmbinder.state.lab"
    assert state_constraint("lab") == "node.labels.swarmbinder.state.lab == true"
    both = Node("x", "x", labels={state_label("one"): "true", state_label("two"): "true"})
    for stack in ("one", "two"):
        plan = plan_state(stack, [both, B], "bbbbbbbbbbbb2", None, deployed=False)
        assert plan.node == both and not plan.add


def test_first_up_labels_the_manager_it_runs_on() -> None:
    plan = plan_state("lab", [A, B], B.id, None, deployed=False)
    assert plan == StatePlan("lab", B, add=True)
    assert plan.line() == (
        "the state of stack lab (registry, hub database, Binder's store) is kept on node beta "
        "(labelling it swarmbinder.state.lab)"
    )


def test_a_label_on_another_node_is_respected() -> None:
    plan = plan_state("lab", [labelled(A), B], B.id, None, deployed=True)
    assert plan.node.id == A.id and not plan.add and plan.moved_from is None
    assert "kept on node alpha (label swarmbinder.state.lab)" in plan.line()
    # Another value than the constraint's: set again, on the same node.
    assert plan_state("lab", [labelled(A, "yes"), B], B.id, None, deployed=True).add


def test_a_stack_deployed_before_the_label_stays_where_its_volumes_are() -> None:
    plan = plan_state("lab", [A, B], B.id, None, deployed=True, holder=A.id)
    assert plan.node.id == A.id and plan.add and plan.moved_from is None


def test_state_node_by_hostname_or_id() -> None:
    for name in ("alpha", A.id, A.id[:8]):
        assert plan_state("lab", [A, B], B.id, name, deployed=False).node == A


@pytest.mark.parametrize(
    ("nodes", "asked", "message"),
    [
        ([A, B], "nosuch", "--state-node nosuch: no node of this swarm is called that (alpha, "),
        ([A, WORKER], "gamma", "--state-node gamma is a worker"),
        ([A, DRAINED], "delta", "--state-node delta is down or drained"),
        ([A, Node("e1", "alpha")], "alpha", "2 nodes are called that; give the node's ID"),
        ([labelled(A), labelled(B)], None, "label swarmbinder.state.lab is on several nodes"),
    ],
)  # fmt: skip
def test_bad_state_nodes_are_refused(nodes: list[Node], asked: str | None, message: str) -> None:
    with pytest.raises(StackInputError) as refused:
        plan_state("lab", nodes, A.id, asked, deployed=False)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_state_moves_only_while_the_stack_is_down() -> None:
    with pytest.raises(StackInputError) as running:
        plan_state("lab", [labelled(A), B], A.id, "beta", deployed=True)
    assert str(running.value) == (
        "the state of stack lab is on node alpha while the stack runs: to move it to beta, stop "
        "the stack (swarmbinder down), copy its volumes there, then run swarmbinder up "
        "--state-node beta"
    )
    with pytest.raises(StackInputError):
        plan_state("lab", [A, B], A.id, "beta", deployed=True, holder=A.id)
    moved = plan_state("lab", [labelled(A), B], A.id, "beta", deployed=False)
    assert moved.node == B and moved.add and moved.moved_from == labelled(A)
    assert moved.line().startswith("moving the state of stack lab from node alpha to node beta")
    # Asked for where it is already: nothing to move.
    assert plan_state("lab", [labelled(A), B], B.id, "alpha", deployed=True).moved_from is None


def test_node_from_docker_node_inspect() -> None:
    raw: dict[str, Any] = {
        "ID": "n1",
        "Spec": {"Role": "manager", "Availability": "active", "Labels": {LABEL: "true"}},
        "Description": {"Hostname": "vm"},
        "Status": {"State": "ready"},
    }
    assert node_from_inspect(raw) == Node("n1", "vm", True, True, {LABEL: "true"})
    raw["Spec"] = {"Role": "worker", "Availability": "drain"}
    assert node_from_inspect(raw) == Node("n1", "vm", False, False, {})


def test_pick_stack() -> None:
    assert pick_stack(["one"], None) == "one"
    assert pick_stack(["one", "two"], "two") == "two"
    for stacks, asked, message in (
        ([], None, "no stack deployed by swarmbinder up on this swarm: run swarmbinder up"),
        (["one", "two"], None, "2 stacks run on this swarm (one, two): pick one with --stack"),
        (["one"], "two", "no stack two deployed by swarmbinder up on this swarm (found: one)"),
    ):
        with pytest.raises(StackInputError) as refused:
            pick_stack(stacks, asked)
        assert message in str(refused.value)


def test_admin_without_a_stack_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SWARMBINDER_URL", raising=False)
    monkeypatch.delenv("SWARMBINDER_STACK", raising=False)
    monkeypatch.setattr(access_module, "deployed_stacks", lambda: [])
    assert main(["admin"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no stack deployed by swarmbinder up" in err
    monkeypatch.setattr(access_module, "deployed_stacks", lambda: ["one", "two"])
    assert main(["admin"]) == 2
    assert "pick one with --stack" in capsys.readouterr().err
    assert main(["admin", "--stack", "one", "--url", "http://127.0.0.1:1/"]) == 2
    assert "give --url or --stack, not both" in capsys.readouterr().err


def test_admin_opens_the_stacks_console_with_its_token_unshown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import swarmbinder_tui.app

    monkeypatch.delenv("SWARMBINDER_URL", raising=False)
    monkeypatch.setenv("SWARMBINDER_STACK", "two")
    token = "s3cret-token-value"
    asked: list[str | None] = []

    def find(stack: str | None) -> ConsoleAccess:
        asked.append(stack)
        return ConsoleAccess(str(stack), "http://127.0.0.1:9/base/", token)

    opened: list[tuple[str, str]] = []
    monkeypatch.setattr("swarmbinder.stackctl.access.find_console", find)
    monkeypatch.setattr(swarmbinder_tui.app, "run", lambda url, t: opened.append((url, t)))
    assert main(["admin"]) == 0
    assert asked == ["two"] and opened == [("http://127.0.0.1:9/base/", token)]
    assert token not in repr(find("two"))
    out = capsys.readouterr()
    assert token not in out.out + out.err


def test_a_backup_directory_is_checked_before_anything_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmbinder.stackctl.backup import read_manifest

    with pytest.raises(StackInputError, match="holds no swarmbinder backup"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StackInputError, match="cannot read"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"store": "mysql"}')
    with pytest.raises(StackInputError, match="is not a swarmbinder backup's manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"stack": "lab", "store": "postgres"}')
    (tmp_path / "registry.tar").write_bytes(b"")
    with pytest.raises(StackInputError, match="lacks binder.pgdump, hub.pgdump"):
        read_manifest(tmp_path)
    for name in ("binder.pgdump", "hub.pgdump"):
        (tmp_path / name).write_bytes(b"")
    assert read_manifest(tmp_path)["store"] == "postgres"
    # Through the command: one line, exit 2, and the engine is not even asked.
    assert main(["restore", str(tmp_path / "nothing"), "--stack", "lab"]) == 2
    err = capsys.readouterr().err
    assert err == f"swarmbinder: error: {tmp_path / 'nothing'} holds no swarmbinder backup " + (
        "(no manifest.json)\n"
    )


@pytest.mark.parametrize("command", [["down"], ["backup", "DIR"], ["restore", "DIR"]])
def test_a_bad_stack_name_is_one_line_before_the_engine_is_asked(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swarmbinder import hostsetup

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the engine was asked")

    monkeypatch.setattr(hostsetup, "run", no_engine)
    argv = [str(tmp_path / "backup") if word == "DIR" else word for word in command]
    assert main([*argv, "--stack", "Bad_Name"]) == 2
    assert capsys.readouterr().err == (
        "swarmbinder: error: stack name 'Bad_Name': use 1-30 lower-case letters, digits and "
        "'-', starting with a letter\n"
    )
    assert not (tmp_path / "backup").exists()


def test_a_failed_host_step_of_a_stack_command_is_a_one_line_stack_error() -> None:
    from swarmbinder import hostsetup
    from swarmbinder.stackctl import StackError
    from swarmbinder.stackctl.state import stack_command

    with pytest.raises(StackError, match=r"^docker: no such thing$") as raised:
        with stack_command("lab"):
            raise hostsetup.SetupError("docker: no such thing")
    assert raised.value.__suppress_context__
