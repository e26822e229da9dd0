"""The registry's garbage collection, as a Swarm job, after a retention sweep deleted images.

Deleting a manifest (:mod:`swarmbinder.retention`) frees nothing: the blobs stay on the
registry's volume until Distribution's ``garbage-collect`` removes the ones no manifest
references. It must not run while anything pushes (it would delete the layers of an image being
pushed, whose manifest does not exist yet), so with ``registry_gc`` a round goes:

1. take the lock: create the job's service, held back (its placement matches no node), named
   after the registry's service, so one replica collects at a time;
2. make the registry read-only: a service update sets Distribution's
   ``REGISTRY_STORAGE_MAINTENANCE_READONLY`` (pulls work, pushes get 405), and wait until every
   task of the registry that is not finished runs read-only;
3. place the job on the registry's node: the registry's image, environment and named volumes,
   ``garbage-collect --delete-untagged`` and a ``du`` of its storage, whose size Binder records
   as a label of that node (:mod:`swarmbinder.diskuse`);
4. whatever happened (an error, a timeout, a cancel), remove the job and make the registry
   writable again (``finally``); a replica that died in between leaves a read-only registry
   that the next round of any replica makes writable (:func:`recover`), under the same lock.

What a hostile user could do: push while the registry is read-only (refused; their build
fails and can be retried), or make many images for the sweep to delete (the job runs once per
sweep, not per image). The job runs the registry's own image over its volume; it never runs
anything a repository made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .buildjob import QUEUED_CONSTRAINT
from .config import Config
from .diskuse import registry_labels
from .errors import SwarmbinderError
from .joblock import take_job_lock
from .jobspec import JobSpec
from .labels import KIND_REGISTRY_GC, LABEL_CREATED, LABEL_KIND
from .retention import SweepReport
from .swarm import ServiceInfo, SwarmClient, TaskStateName

log = logging.getLogger(__name__)

#: Distribution's switch for read-only mode, and the value that turns it on.
READ_ONLY_ENV = "REGISTRY_STORAGE_MAINTENANCE_READONLY"
READ_ONLY_VALUE = '{"enabled": true}'
#: Where the registry image reads its config (the stack's, and Docker Hub's registry:2).
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
#: Filesystem storage's root when the environment does not set it.
DEFAULT_ROOT = "/var/lib/registry"
ROOT_ENV = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
#: The job's report of the storage's size after collecting, in its log.
SIZE_MARKER = "swarmbinder-registry-size "
#: Debian names the binary docker-registry, Docker Hub's image registry.
GC_SCRIPT = (
    'bin=$(command -v docker-registry || command -v registry) && "$bin" garbage-collect '
    f'--delete-untagged "$0" && echo "{SIZE_MARKER}$(du -sb "$1" | cut -f1)"'
)
#: How long to wait for the registry to come back writable before leaving it to Swarm (and
#: how much longer than registry_gc_timeout a job may live before it counts as a dead one's).
WRITABLE_WAIT = 120.0


class RegistryGCFailed(SwarmbinderError):
    """The registry's garbage collection could not run or failed."""


@dataclass(frozen=True)
class GCReport:
    node_id: str
    #: Bytes of the registry's storage after collecting; None if the job did not say.
    size: int | None
    seconds: float


def job_name(registry_service: str) -> str:
    """The job's name: the lock, one per registry."""
    return f"{registry_service}-gc"[:63]


def parse_size(lines: Sequence[str]) -> int | None:
    for line in reversed(lines):
        _, marker, text = line.partition(SIZE_MARKER)
        if marker and text.strip().isdigit():
            return int(text.strip())
    return None


def is_read_only(env: Sequence[str]) -> bool:
    return any(e.startswith(READ_ONLY_ENV + "=") for e in env)


def job_spec(registry: ServiceInfo, name: str, now: float) -> JobSpec:
    """The job, held back: the registry's image, environment (writable: the job is the only
    writer) and named volumes, collecting garbage and measuring what is left."""
    env = {k: v for k, v in registry.env.items() if k != READ_ONLY_ENV}
    return JobSpec(
        name=name,
        image=registry.image,
        command=["sh", "-c", GC_SCRIPT, REGISTRY_CONFIG, env.get(ROOT_ENV, DEFAULT_ROOT)],
        args=[],
        labels={LABEL_KIND: KIND_REGISTRY_GC, LABEL_CREATED: f"{now:.3f}"},
        env=env,
        mounts=registry.volumes,
        # Held back (no node matches) until the registry is read-only.
        constraints=[QUEUED_CONSTRAINT],
    )


async def settled(swarm: SwarmClient, service: str, *, read_only: bool) -> str:
    """Wait until every unfinished task of the registry runs in the wanted mode (the old
    ones stopped); its node's ID. Wrap in asyncio.timeout."""
    while True:
        live = [t for t in await swarm.tasks(service, every_iteration=True) if not t.terminal]
        if live and all(
            t.state is TaskStateName.RUNNING and is_read_only(t.env) == read_only for t in live
        ):
            nodes = {t.node_id for t in live}
            if len(nodes) > 1:
                raise RegistryGCFailed(f"{service} runs on {len(nodes)} nodes; it needs one volume")
            return nodes.pop()
        await asyncio.sleep(0.5)


async def _release(swarm: SwarmClient, service: str, job: str, reaper_image: str | None) -> None:
    """Stop the job, then let the registry write again: never the other way round."""
    try:
        await swarm.remove_service(job, reaper_image=reaper_image)
    finally:
        await swarm.set_service_env(service, {READ_ONLY_ENV: None})


async def collect_garbage(
    swarm: SwarmClient,
    service: str,
    *,
    time_limit: float = 1800,
    reaper_image: str | None = None,
    while_read_only: Callable[[], Awaitable[None]] | None = None,
) -> GCReport | None:
    """One garbage collection of the registry ``service``; None if another replica runs one.
    ``while_read_only`` is awaited once the registry is read-only, before the job runs."""
    started = time.time()
    registry = await swarm.inspect_service(service)
    if registry is None:
        raise RegistryGCFailed(f"registry service {service!r} (registry_service) does not exist")
    spec = job_spec(registry, job_name(service), started)
    if not await take_job_lock(swarm, spec, stale_after=time_limit + WRITABLE_WAIT, now=started):
        return None
    try:
        async with asyncio.timeout(time_limit):
            await swarm.set_service_env(service, {READ_ONLY_ENV: READ_ONLY_VALUE})
            node = await settled(swarm, service, read_only=True)
            if while_read_only is not None:
                await while_read_only()
            await swarm.update_job(spec.name, constraints=[f"node.id=={node}"], labels=spec.labels)
            task = await swarm.wait_job(spec.name)
        lines = await swarm.read_logs(spec.name)
        if not task.succeeded:
            # The program's last words say why; the task's error only says it exited.
            detail = lines[-1] if lines else task.error or f"exit code {task.exit_code}"
            raise RegistryGCFailed(f"garbage collection of {service} failed: {detail}")
    except TimeoutError:
        raise RegistryGCFailed(
            f"garbage collection of {service} took over {time_limit:.0f} s"
        ) from None
    finally:
        await _release(swarm, service, spec.name, reaper_image)
    try:
        async with asyncio.timeout(WRITABLE_WAIT):
            await settled(swarm, service, read_only=False)
    except TimeoutError:
        log.warning("registry gc: %s is not running writable yet; Swarm carries on", service)
    size = parse_size(lines)
    await _record_size(swarm, node, size, time.time())
    report = GCReport(node, size, time.time() - started)
    log.info("registry gc: %s collected in %.0f s, %s bytes left", service, report.seconds, size)
    return report


async def _record_size(swarm: SwarmClient, node_id: str, size: int | None, now: float) -> None:
    await swarm.set_node_labels(node_id, registry_labels(size, now))
    for node in await swarm.nodes():
        if node.id != node_id:  # where the registry was before it moved
            await swarm.set_node_labels(node.id, registry_labels(None, now))


async def recover(swarm: SwarmClient, service: str, *, stale_after: float = 1800) -> bool:
    """Make a registry left read-only (by a replica that died collecting) writable again,
    under the lock; True if it did."""
    registry = await swarm.inspect_service(service)
    if registry is None or READ_ONLY_ENV not in registry.env:
        return False
    now = time.time()
    spec = job_spec(registry, job_name(service), now)
    if not await take_job_lock(swarm, spec, stale_after=stale_after, now=now):
        return False
    await _release(swarm, service, spec.name, None)
    log.warning("registry gc: %s was left read-only; it is writable again", service)
    return True


def after_sweep(config: Config, swarm: SwarmClient) -> Callable[[SweepReport], Awaitable[None]]:
    """What runs after each retention sweep with ``registry_gc``: a collection when the sweep
    deleted something, else the recovery of a registry left read-only."""
    disks = config.disks
    service = disks.registry_service or ""

    async def run(report: SweepReport) -> None:
        try:
            if report.deleted:
                await collect_garbage(
                    swarm,
                    service,
                    time_limit=disks.registry_gc_timeout,
                    reaper_image=config.builds.build_image,
                )
            else:
                await recover(swarm, service, stale_after=disks.registry_gc_timeout)
        except SwarmbinderError as exc:
            log.warning("registry gc skipped this round: %s", exc)

    return run
