"""Node housekeeping: a Swarm global job on the build nodes that keeps their disks from filling.

Builds leave layers in each build node's cache and images nothing runs any more; mybinder.org's
most common incident was a full disk. Every ``node_housekeeping_interval`` Binder runs a
``global-job`` service, one task on every build node, whose program
(:mod:`swarmbinder.nodeprune`) measures the disk of the node's Docker data root and, past
``node_housekeeping_threshold`` percent, prunes the build cache and the images no container
uses and no Swarm service names. Each task prints one report line; Binder reads them from the
job's log, logs what each node freed, and writes each node's disk use as node labels
(:mod:`swarmbinder.diskuse`) for ``/metrics`` and the admin console. The job is removed when
done.

One job at a time, across replicas: the job's name is the lock (as a build's is). A job left by
a replica that died is removed once it is older than :data:`JOB_TIMEOUT`.

What a hostile user could do: nothing here reads repository content. The job's container holds
the node's Docker socket (it must, to prune), so it runs only Binder's own program in the
configured image, never a repository's code or image; the images it keeps (those services
run, and the one each build is about to push) are read from Swarm, which a repository cannot
write to, and an image a running server uses is refused by the engine
itself. A repository can fill a node's disk faster than an interval (a build writing a huge
layer); the build's own limits bound that, and the next round prunes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .diskuse import disk_labels
from .errors import SwarmbinderError
from .joblock import take_job_lock
from .jobspec import BindMount, JobSpec
from .labels import DOCKER_SOCKET, KIND_HOUSEKEEPING, LABEL_CREATED, LABEL_KIND
from .nodeprune import REPORT_MARKER, normalise_reference
from .retention import image_without_digest, images_in_use
from .sticky import BUILD_NODE_LABEL, parse_label
from .swarm import NodeInfo, SwarmClient, TaskState

log = logging.getLogger(__name__)

#: The job's service name, and so the lock: one housekeeping job in the swarm at a time.
JOB_NAME = "swarmbinder-housekeeping"
#: How long a round waits for every node's task; a node that has not reported by then (it went
#: down, or cannot pull the image) is left for the next round.
JOB_TIMEOUT = 300.0
#: The job's program, sent as source to ``python3 -c``.
PROGRAM = (Path(__file__).parent / "nodeprune.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class HousekeepingSettings:
    """The node_housekeeping options, as a round needs them."""

    image: str
    threshold: int = 80
    interval: float = 3600
    #: build_node_selector: the job runs where builds run.
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: node_housekeeping_keep_images: never pruned, whether a service names them or not.
    keep_images: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> HousekeepingSettings:
        disks = config.disks
        return cls(
            image=disks.node_housekeeping_image or config.builds.build_image,
            threshold=disks.node_housekeeping_threshold,
            interval=disks.node_housekeeping_interval,
            node_selector=dict(config.builds.build_node_selector),
            keep_images=tuple(disks.node_housekeeping_keep_images),
        )


@dataclass(frozen=True)
class NodeReport:
    """One node's task's report (see :func:`swarmbinder.nodeprune.report`)."""

    node_id: str
    hostname: str
    used_before: int
    used: int
    total: int
    freed: int
    #: The images removed by tag (or ID); None when the node was below the threshold.
    images_removed: tuple[str, ...] | None
    cache_bytes: int = 0

    @property
    def pruned(self) -> bool:
        return self.images_removed is not None


def parse_reports(lines: Iterable[str]) -> list[NodeReport]:
    """The report lines among a job's log lines (the engine may prefix a line with a time or
    details, so the marker is looked for anywhere); a line that does not parse is skipped."""
    reports: dict[str, NodeReport] = {}
    for line in lines:
        _, marker, text = line.partition(REPORT_MARKER)
        if not marker:
            continue
        try:
            raw = json.loads(text)
            pruned = raw.get("pruned")
            report = NodeReport(
                node_id=str(raw["node_id"]),
                hostname=str(raw.get("hostname", "")),
                used_before=int(raw["used_before"]),
                used=int(raw["used"]),
                total=int(raw["total"]),
                freed=int(raw.get("freed", 0)),
                images_removed=None
                if pruned is None
                else tuple(str(i) for i in pruned.get("images_removed", ())),
                cache_bytes=0 if pruned is None else int(pruned.get("cache_bytes", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("housekeeping: unreadable report line %r", line[:200])
            continue
        if report.node_id:
            reports[report.node_id] = report
    return list(reports.values())


def job_constraints(node_selector: Mapping[str, str], nodes: Sequence[NodeInfo]) -> list[str]:
    """Where builds run: build_node_selector, and the build node label once any node has it
    (the rule of :func:`swarmbinder.buildjob.job_spec`)."""
    constraints = [f"{k}=={v}" for k, v in node_selector.items()]
    key, value = parse_label(BUILD_NODE_LABEL)
    if any(n.labels.get(key) == value for n in nodes):
        constraints.append(f"node.labels.{key}=={value}")
    return constraints


def kept_images(service_images: Iterable[str], settings: HousekeepingSettings) -> list[str]:
    """Images never pruned: every image a Swarm service names (a user server between two
    tasks, the stack's own services, a build's image while it is pushed), the job's own and
    node_housekeeping_keep_images."""
    named = [*service_images, settings.image, *settings.keep_images]
    return sorted({normalise_reference(image_without_digest(i)) for i in named if i})


def job_spec(
    settings: HousekeepingSettings, constraints: Sequence[str], keep: Sequence[str], now: float
) -> JobSpec:
    return JobSpec(
        name=JOB_NAME,
        image=settings.image,
        command=["python3", "-c", PROGRAM],
        args=[str(settings.threshold), json.dumps(list(keep))],
        labels={LABEL_KIND: KIND_HOUSEKEEPING, LABEL_CREATED: f"{now:.3f}"},
        # Swarm fills in the node's ID and name for each task: the report names its node.
        env={"NODE_ID": "{{.Node.ID}}", "NODE_HOSTNAME": "{{.Node.Hostname}}"},
        mounts=[BindMount(DOCKER_SOCKET, DOCKER_SOCKET)],
        constraints=constraints,
        global_job=True,
    )


def describe(report: NodeReport) -> str:
    """One log line of what a node's task found and did."""
    mb = 1024 * 1024
    share = f"{100 * report.used / report.total:.0f}%" if report.total else "?"
    line = f"{report.hostname or report.node_id}: {share} of {report.total // mb} MiB in use"
    if report.images_removed is None:
        return line + " (below the threshold: nothing pruned)"
    return (
        f"{line} after pruning {len(report.images_removed)} image reference(s) and "
        f"{report.cache_bytes // mb} MiB of build cache: {report.freed // mb} MiB freed"
    )


async def _wait_all_done(swarm: SwarmClient, name: str, poll: float = 1.0) -> list[TaskState]:
    """Every task of the global job terminal (wrap in asyncio.timeout)."""
    while True:
        tasks = await swarm.tasks(name)
        if tasks and all(t.terminal for t in tasks):
            return tasks
        await asyncio.sleep(poll)


async def run_housekeeping(
    swarm: SwarmClient, settings: HousekeepingSettings, *, now: float | None = None
) -> list[NodeReport] | None:
    """One round: run the job, record each node's disk use; None if another round runs."""
    now = time.time() if now is None else now
    nodes = await swarm.nodes()
    keep = kept_images(await images_in_use(swarm), settings)
    spec = job_spec(settings, job_constraints(settings.node_selector, nodes), keep, now)
    if not await take_job_lock(
        swarm, spec, stale_after=JOB_TIMEOUT, now=now, reaper_image=spec.image
    ):
        return None
    try:
        try:
            async with asyncio.timeout(JOB_TIMEOUT):
                await _wait_all_done(swarm, JOB_NAME)
        except TimeoutError:
            log.warning("housekeeping: some nodes did not report within %.0f s", JOB_TIMEOUT)
        reports = parse_reports(await swarm.read_logs(JOB_NAME))
    finally:
        await swarm.remove_service(JOB_NAME, reaper_image=settings.image)
    known = {n.id for n in nodes}
    for report in reports:
        if report.node_id in known:
            await swarm.set_node_labels(report.node_id, disk_labels(report.used, report.total, now))
        log.info("housekeeping: %s", describe(report))
    return reports


async def housekeeping_forever(swarm: SwarmClient, settings: HousekeepingSettings) -> None:
    """A round now and every ``settings.interval`` seconds until cancelled; a round that fails
    (the engine does not answer) is logged and the next one tried."""
    while True:
        try:
            await run_housekeeping(swarm, settings)
        except SwarmbinderError as exc:
            log.warning("node housekeeping skipped this round: %s", exc)
        await asyncio.sleep(settings.interval)


def start_housekeeping(
    config: Config, swarm: SwarmClient, start: Callable[[Awaitable[None], str], None]
) -> None:
    """Start the rounds with ``start`` (the app's task owner) when node_housekeeping is on."""
    if config.disks.node_housekeeping:
        start(housekeeping_forever(swarm, HousekeepingSettings.from_config(config)), "housekeeping")
