from __future__ import annotations

from dataclasses import replace

import pytest

from swarmbinder.sticky import (
    Node,
    NodeAvailability,
    NodeState,
    parse_label,
    pick_node,
    rank_nodes,
    score,
)

REPOS = [f"https://github.com/owner{i % 97}/repo-{i}" for i in range(2000)]


def nodes(count: int, start: int = 0) -> list[Node]:
    return [Node(id=f"id{i:02d}", hostname=f"worker-{i}") for i in range(start, start + count)]


def first_choices(node_list: list[Node]) -> dict[str, str]:
    return {repo: rank_nodes(repo, node_list)[0].hostname for repo in REPOS}


def test_score_is_sha256_based_and_stable() -> None:
    # a fixed value: the weight must not change between processes or releases
    assert score("worker-1", "https://github.com/u/r") == 0x2F1646BB75FD8ADE
    assert score("worker-1", "https://github.com/u/r") != score(
        "worker-2", "https://github.com/u/r"
    )


def test_same_repo_always_gets_the_same_node() -> None:
    cluster = nodes(5)
    for repo in REPOS[:200]:
        picks = {rank_nodes(repo, cluster)[0].id for _ in range(3)}
        picks.add(rank_nodes(repo, list(reversed(cluster)))[0].id)
        assert len(picks) == 1


def test_ranking_lists_every_eligible_node_once() -> None:
    cluster = nodes(6)
    ranked = rank_nodes("https://github.com/u/r", cluster)
    assert sorted(n.id for n in ranked) == sorted(n.id for n in cluster)


def test_repos_spread_over_nodes() -> None:
    counts: dict[str, int] = {}
    for host in first_choices(nodes(4)).values():
        counts[host] = counts.get(host, 0) + 1
    assert len(counts) == 4
    assert all(400 <= c <= 600 for c in counts.values()), counts


@pytest.mark.parametrize("n", [1, 3, 7])
def test_adding_a_node_moves_about_one_in_n_plus_one(n: int) -> None:
    before = first_choices(nodes(n))
    grown = nodes(n + 1)
    after = first_choices(grown)
    moved = [repo for repo in REPOS if before[repo] != after[repo]]
    # every moved repo went to the new node, none shuffled between old nodes
    assert {after[repo] for repo in moved} <= {grown[-1].hostname}
    expected = len(REPOS) / (n + 1)
    assert abs(len(moved) - expected) < 0.2 * expected, (len(moved), expected)


def test_removing_the_top_node_moves_exactly_its_repos_to_their_second_choice() -> None:
    cluster = nodes(5)
    gone = cluster[2]
    survivors = [n for n in cluster if n != gone]
    for repo in REPOS:
        ranked = rank_nodes(repo, cluster)
        after = rank_nodes(repo, survivors)
        if ranked[0] == gone:
            assert after[0] == ranked[1]
        else:
            assert after[0] == ranked[0]
        assert after == [n for n in ranked if n != gone]


@pytest.mark.parametrize(
    ("state", "availability"),
    [
        (NodeState.DOWN, NodeAvailability.ACTIVE),
        (NodeState.UNKNOWN, NodeAvailability.ACTIVE),
        (NodeState.DISCONNECTED, NodeAvailability.ACTIVE),
        (NodeState.READY, NodeAvailability.DRAIN),
        (NodeState.READY, NodeAvailability.PAUSE),
    ],
)
def test_unusable_nodes_are_skipped_in_rank_order(
    state: NodeState, availability: NodeAvailability
) -> None:
    cluster = nodes(5)
    for repo in REPOS[:100]:
        healthy_ranking = rank_nodes(repo, cluster)
        bad = healthy_ranking[0]
        changed = [
            replace(n, state=state, availability=availability) if n == bad else n for n in cluster
        ]
        assert [n.id for n in rank_nodes(repo, changed)] == [n.id for n in healthy_ranking[1:]]


def test_build_label_restricts_candidates_when_in_use() -> None:
    cluster = nodes(4)
    labelled = [
        Node("idA", "builder-a", labels={"swarmbinder.build": "true"}),
        Node("idB", "builder-b", labels={"swarmbinder.build": "true", "other": "x"}),
        Node("idC", "builder-c", labels={"swarmbinder.build": "false"}),
    ]
    for repo in REPOS[:50]:
        assert {n.id for n in rank_nodes(repo, cluster + labelled)} == {"idA", "idB"}
        assert len(rank_nodes(repo, cluster + labelled, build_label=None)) == 7
    assert len(rank_nodes(REPOS[0], cluster)) == 4


def test_build_label_in_use_even_when_labelled_nodes_are_down() -> None:
    down = Node("idA", "builder-a", state=NodeState.DOWN, labels={"swarmbinder.build": "true"})
    assert rank_nodes(REPOS[0], [*nodes(3), down]) == []
    assert pick_node(REPOS[0], [*nodes(3), down]) is None


def test_custom_build_label() -> None:
    cluster = [*nodes(3), Node("idG", "gpu", labels={"gpu": "true"})]
    assert pick_node(REPOS[0], cluster, build_label="gpu") == cluster[-1]
    assert pick_node(REPOS[0], cluster, build_label="gpu=yes") is not None


def test_required_labels_are_hard_constraints() -> None:
    cluster = [
        *nodes(3),
        Node("idX", "builder-x", labels={"binder-builds": "true"}),
        Node("idY", "builder-y", labels={"binder-builds": "true", "swarmbinder.build": "true"}),
    ]
    required = {"binder-builds": "true"}
    for repo in REPOS[:50]:
        ranked = rank_nodes(repo, cluster, build_label=None, required_labels=required)
        assert {n.id for n in ranked} == {"idX", "idY"}
        # the soft build label then narrows within the nodes the constraints allow
        assert [n.id for n in rank_nodes(repo, cluster, required_labels=required)] == ["idY"]
    assert rank_nodes(REPOS[0], nodes(3), required_labels=required) == []


def test_pick_node_and_constraint() -> None:
    node = pick_node(REPOS[0], nodes(3))
    assert node is not None
    assert node == rank_nodes(REPOS[0], nodes(3))[0]
    assert node.constraint == f"node.id=={node.id}"
    assert pick_node(REPOS[0], []) is None


def test_hostname_not_id_decides() -> None:
    # a host that rejoins the swarm gets a new ID but keeps its cache
    before = [Node("old", "worker-1"), *nodes(3, start=2)]
    after = [Node("new", "worker-1"), *nodes(3, start=2)]
    for repo in REPOS[:200]:
        assert rank_nodes(repo, before)[0].hostname == rank_nodes(repo, after)[0].hostname


def test_parse_label() -> None:
    assert parse_label("a.b=c") == ("a.b", "c")
    assert parse_label("flag") == ("flag", "true")
    assert parse_label("k=") == ("k", "")
    with pytest.raises(ValueError):
        parse_label("=v")
