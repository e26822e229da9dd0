"""How ``SwarmClient.tasks`` reads the engine's task list, on answers recorded from Docker 20.10
(no engine needed): a queued build promoted by an update must never be judged by the task of
the iteration the update superseded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmbinder.swarm import SwarmClient, TaskStateName


def task(task_id: str, state: str, desired: str, timestamp: str) -> dict[str, Any]:
    return {
        "ID": task_id,
        "ServiceID": "huw31z85ccys8mu6ydeqsvqe0",
        "NodeID": "lrkrdwc0t3c1tewpfp2ew6oa0" if state != "pending" else "",
        "DesiredState": desired,
        "Status": {"State": state, "Message": state, "Timestamp": timestamp},
    }


class Answering(SwarmClient):
    """A client whose engine gives one recorded answer."""

    def __init__(self, answer: list[dict[str, Any]]) -> None:
        self._answer = answer

    async def _json(
        self,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
    ) -> Any:
        assert path == "tasks"
        return self._answer


async def test_a_superseded_iteration_is_not_listed_even_when_its_timestamp_ties() -> None:
    # 83 ms after the update of a queued job: Docker 20.10 marks the old task "remove" (not
    # "shutdown") and stamps its shutdown with the new task's assignment, listed by ID.
    stamp = "2026-12-03T07:27:19.596123456Z"
    answer = [
        task("0yu5e1ta9d3tfl1k2gz6m3h1x", "assigned", "complete", stamp),
        task("bvtxurak9fjf1ft0ol1g2bjqw", "shutdown", "remove", stamp),
    ]
    (current,) = await Answering(answer).tasks("job")
    assert current.id.startswith("0yu5e1") and current.state is TaskStateName.ASSIGNED


async def test_a_lone_superseded_task_is_still_listed() -> None:
    answer = [task("bvtxurak9fjf1ft0ol1g2bjqw", "pending", "remove", "2026-12-03T07:27:18Z")]
    (only,) = await Answering(answer).tasks("job")
    assert only.desired_state == "remove"
