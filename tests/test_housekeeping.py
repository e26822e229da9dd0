"""Node housekeeping's rules without Docker: what the job's program removes, its report and how
Binder reads it, where the job runs, the lock, the disk labels and what shows them (/metrics,
the console). The real job runs in test_housekeeping_swarm.py."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from swarmbinder import nodeprune
from swarmbinder.config import load_config
from swarmbinder.diskuse import disk_labels, latest_registry_size, node_disk, registry_labels
from swarmbinder.errors import ConfigError, ServiceNameConflict
from swarmbinder.housekeeping import (
    JOB_NAME,
    JOB_TIMEOUT,
    PROGRAM,
    HousekeepingSettings,
    job_constraints,
    job_spec,
    kept_images,
    parse_reports,
    run_housekeeping,
)
from swarmbinder.labels import LABEL_CREATED
from swarmbinder.metrics import Metrics
from swarmbinder.swarm import NodeInfo, ServiceInfo, SwarmClient
from tui.views import disk

GIB = 2**30


def image(id: str, tags: list[str], created: int) -> dict[str, Any]:
    return {"Id": id, "RepoTags": tags, "Created": created, "Size": 100}


def test_only_images_no_container_uses_and_no_service_names_are_removed_newest_first() -> None:
    images = [
        image("sha256:run", ["binder-a:1"], 1),  # a user server runs it
        image("sha256:stopped", ["binder-b:1"], 2),  # an exited container still has it
        image("sha256:named", ["swarmbinder/hub:0.1.0"], 3),  # a service names it
        image("sha256:old", ["binder-c:1"], 4),
        image("sha256:new", ["binder-d:1", "binder-d:latest"], 5),
        image("sha256:dangling", ["<none>:<none>"], 6),
    ]
    containers = [{"ImageID": "sha256:run"}, {"ImageID": "sha256:stopped"}]
    keep = ["docker.io/swarmbinder/hub:0.1.0@sha256:abc"]
    chosen = nodeprune.images_to_remove(images, containers, keep)
    assert [i["Id"] for i in chosen] == ["sha256:dangling", "sha256:new", "sha256:old"]
    # Removed by every tag (an image with two tags is only untagged by the first), or by ID.
    assert nodeprune.image_references(chosen[1]) == ["binder-d:1", "binder-d:latest"]
    assert nodeprune.image_references(chosen[0]) == ["sha256:dangling"]


@pytest.mark.parametrize(
    ("reference", "listed"),
    [
        ("registry:2", "registry:2"),
        ("docker.io/library/registry:2", "registry:2"),
        ("jupyter/base", "jupyter/base:latest"),
        ("127.0.0.1:5000/binder-x", "127.0.0.1:5000/binder-x:latest"),
        ("127.0.0.1:5000/binder-x:abc@sha256:1234", "127.0.0.1:5000/binder-x:abc"),
    ],
)
def test_references_are_compared_as_the_engine_lists_tags(reference: str, listed: str) -> None:
    assert nodeprune.normalise_reference(reference) == listed


def test_the_threshold_is_a_share_of_the_disk() -> None:
    assert nodeprune.over_threshold(80, 100, 80)
    assert not nodeprune.over_threshold(79, 100, 80)
    assert nodeprune.over_threshold(0, 100, 0)  # 0 prunes every time
    assert not nodeprune.over_threshold(0, 0, 0)  # nothing measured: nothing done


class FakeAPIError(Exception):
    pass


class FakeAPI:
    """The part of docker-py's APIClient the program uses."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def prune_builds(self) -> dict[str, int]:
        return {"SpaceReclaimed": 5 * GIB}

    def images(self, all: bool) -> list[dict[str, Any]]:
        return [image("sha256:a", ["a:1"], 2), image("sha256:b", ["b:1", "b:2"], 1)]

    def containers(self, all: bool) -> list[dict[str, Any]]:
        return []

    def remove_image(self, reference: str, force: bool, noprune: bool) -> None:
        assert force is False  # never: force would untag an image a container runs
        if reference == "a:1":
            raise FakeAPIError("conflict: image is being used by running container")
        self.removed.append(reference)

    def prune_images(self, filters: dict[str, bool]) -> dict[str, int]:
        assert filters == {"dangling": True}
        return {"SpaceReclaimed": 0}


def test_an_image_the_engine_refuses_to_remove_stays_and_the_rest_go() -> None:
    class Client:
        api = FakeAPI()

    pruned = nodeprune.prune(Client(), [], (FakeAPIError,))
    assert pruned == {"images_removed": ["b:1", "b:2"], "cache_bytes": 5 * GIB, "dangling_bytes": 0}


def test_binder_reads_the_reports_the_program_prints() -> None:
    pruned = {"images_removed": ["b:1"], "cache_bytes": GIB, "dangling_bytes": 0}
    lines = [
        "some other output",
        "2026-12-03T10:00:00Z "
        + nodeprune.report("n1", "node1", (9 * GIB, 10 * GIB), (7 * GIB, 10 * GIB), pruned),
        nodeprune.report("n2", "node2", (GIB, 10 * GIB), (GIB, 10 * GIB), None),
        nodeprune.REPORT_MARKER + "{not json",
        nodeprune.REPORT_MARKER + json.dumps({"node_id": "n3"}),  # fields missing
    ]
    reports = {r.node_id: r for r in parse_reports(lines)}
    assert set(reports) == {"n1", "n2"}
    assert reports["n1"].pruned and reports["n1"].images_removed == ("b:1",)
    assert (reports["n1"].used_before, reports["n1"].used, reports["n1"].freed) == (
        9 * GIB,
        7 * GIB,
        2 * GIB,
    )
    assert not reports["n2"].pruned and reports["n2"].freed == 0


def test_the_program_is_complete_python_on_its_own() -> None:
    compile(PROGRAM, "nodeprune", "exec")
    assert "import swarmbinder" not in PROGRAM and "from swarmbinder" not in PROGRAM


def node(id: str, labels: dict[str, str] | None = None) -> NodeInfo:
    return NodeInfo(
        id=id,
        hostname=id,
        role="worker",
        state="ready",
        availability="active",
        labels=labels or {},
        addr="",
    )


def test_the_job_runs_where_builds_run() -> None:
    selector = {"node.labels.disk": "ssd"}
    assert job_constraints(selector, [node("a"), node("b")]) == ["node.labels.disk==ssd"]
    labelled = [node("a", {"swarmbinder.build": "true"}), node("b")]
    assert job_constraints({}, labelled) == ["node.labels.swarmbinder.build==true"]


def test_the_job_is_a_global_job_with_the_socket_and_its_node_in_the_environment() -> None:
    settings = HousekeepingSettings(image="r2d:1", threshold=70, keep_images=("base:2",))
    keep = kept_images(["swarmbinder/hub:0.1.0@sha256:ab", "", "registry:2"], settings)
    assert keep == ["base:2", "r2d:1", "registry:2", "swarmbinder/hub:0.1.0"]
    body = job_spec(settings, ["node.role==worker"], keep, 1.0).to_api()
    assert body["Name"] == JOB_NAME
    assert body["Mode"] == {"GlobalJob": {}}
    container = body["TaskTemplate"]["ContainerSpec"]
    assert container["Command"][:2] == ["python3", "-c"]
    assert container["Args"] == ["70", json.dumps(keep)]
    assert "NODE_ID={{.Node.ID}}" in container["Env"]
    assert container["Mounts"][0]["Source"] == "/var/run/docker.sock"
    assert body["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"


class LockedSwarm:
    """A swarm where another round's job exists, made at ``created``."""

    def __init__(self, created: float) -> None:
        self.created = created
        self.removed: list[str] = []

    async def nodes(self) -> list[NodeInfo]:
        return [node("a")]

    async def list_services(self, labels: dict[str, str | None]) -> list[ServiceInfo]:
        return []

    async def create_job(self, spec: Any) -> ServiceInfo:
        raise ServiceNameConflict(spec.name, "x")

    async def inspect_service(self, name: str) -> ServiceInfo:
        return ServiceInfo(
            id="x",
            name=name,
            labels={LABEL_CREATED: f"{self.created:.3f}"},
            image="",
            created_at="",
            constraints=(),
        )

    async def remove_service(self, name: str, **kwargs: Any) -> bool:
        self.removed.append(name)
        return True


async def test_a_round_that_finds_a_job_running_does_nothing_and_a_dead_replicas_job_goes() -> None:
    settings = HousekeepingSettings(image="r2d:1")
    running = LockedSwarm(created=1000.0)
    assert await run_housekeeping(cast(SwarmClient, running), settings, now=1010.0) is None
    assert running.removed == []
    left = LockedSwarm(created=1000.0)
    assert await run_housekeeping(cast(SwarmClient, left), settings, now=1001 + JOB_TIMEOUT) is None
    assert left.removed == [JOB_NAME]  # the next round runs


def test_disk_labels_are_read_back_and_junk_is_unknown() -> None:
    labels = {k: v for k, v in disk_labels(3 * GIB, 10 * GIB, 5.0).items() if v is not None}
    disk_use = node_disk(labels)
    assert disk_use is not None and (disk_use.used, disk_use.total, disk_use.percent) == (
        3 * GIB,
        10 * GIB,
        30.0,
    )
    assert node_disk({**labels, "swarmbinder.disk.used": "-1"}) is None
    assert node_disk({**labels, "swarmbinder.disk.used": str(11 * GIB)}) is None
    old = {k: v for k, v in registry_labels(100, 1.0).items() if v is not None}
    new = {k: v for k, v in registry_labels(50, 2.0).items() if v is not None}
    latest = latest_registry_size([old, {}, new])
    assert latest is not None and latest.size == 50
    assert registry_labels(None, 3.0) == {
        "swarmbinder.registry.size": None,
        "swarmbinder.registry.checked": None,
    }


def test_metrics_show_each_measured_node_and_drop_nodes_gone() -> None:
    metrics = Metrics()
    measured = {k: v for k, v in disk_labels(3 * GIB, 10 * GIB, 5.0).items() if v is not None}
    sized = {k: v for k, v in registry_labels(GIB, 5.0).items() if v is not None}
    metrics.set_disks({"node1": measured | sized, "node2": {}})
    sample = metrics.registry.get_sample_value
    assert sample("swarmbinder_node_disk_used_bytes", {"node": "node1"}) == 3 * GIB
    assert sample("swarmbinder_node_disk_total_bytes", {"node": "node1"}) == 10 * GIB
    assert sample("swarmbinder_node_disk_used_bytes", {"node": "node2"}) is None
    assert sample("swarmbinder_registry_size_bytes", {}) == GIB
    metrics.set_disks({"node2": {}})
    assert sample("swarmbinder_node_disk_used_bytes", {"node": "node1"}) is None


def test_the_console_shows_unmeasured_nodes_as_unknown() -> None:
    assert disk({"disk_used": None, "disk_total": None}) == "-"
    assert disk({"disk_used": GIB, "disk_total": 4 * GIB}) == "1.0 GiB of 4.0 GiB (25%)"


@pytest.mark.parametrize(
    ("env", "option"),
    [
        ({"SWARMBINDER_REGISTRY_GC": "true"}, "registry_service"),
        (
            {"SWARMBINDER_REGISTRY_GC": "true", "SWARMBINDER_REGISTRY_SERVICE": "binder_registry"},
            "registry_gc",
        ),
        ({"SWARMBINDER_REGISTRY_SERVICE": "binder registry"}, "registry_service"),
        ({"SWARMBINDER_NODE_HOUSEKEEPING_THRESHOLD": "101"}, "node_housekeeping_threshold"),
        ({"SWARMBINDER_NODE_HOUSEKEEPING_INTERVAL": "0"}, "node_housekeeping_interval"),
        ({"SWARMBINDER_REGISTRY_GC_TIMEOUT": "5"}, "registry_gc_timeout"),
    ],
)
def test_bad_disk_options_are_refused_by_name(env: dict[str, str], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    assert caught.value.option == option


def test_the_options_that_work_together() -> None:
    config = load_config(
        None,
        env={
            "SWARMBINDER_REGISTRY_GC": "true",
            "SWARMBINDER_REGISTRY_SERVICE": "binder_registry",
            "SWARMBINDER_IMAGE_RETENTION_DAYS": "30",
            "SWARMBINDER_NODE_HOUSEKEEPING": "true",
            "SWARMBINDER_BUILD_IMAGE": "r2d:2",
        },
    )
    settings = HousekeepingSettings.from_config(config)
    assert (settings.image, settings.threshold, settings.interval) == ("r2d:2", 80, 3600)
