"""One job at a time across Binder's replicas: the job service's name is the lock.

Creating the service takes the lock (the engine refuses a second service of one name, on any
replica); a service that has stood longer than its job may run is a dead replica's: it is
removed and the round that found it skipped, so the next round takes the lock. Used by the
jobs that must never run twice at once: the registry's garbage collection and node
housekeeping.
"""

from __future__ import annotations

import logging

from .errors import ServiceNameConflict
from .jobspec import JobSpec
from .labels import LABEL_CREATED
from .swarm import SwarmClient

log = logging.getLogger(__name__)


async def take_job_lock(
    swarm: SwarmClient,
    spec: JobSpec,
    *,
    stale_after: float,
    now: float,
    reaper_image: str | None = None,
) -> bool:
    """Create the job ``spec``; False if another one stands. One whose ``swarmbinder.created``
    label is older than ``stale_after`` seconds is removed (with ``reaper_image``, the
    containers its tasks left on other nodes too) and this round skipped."""
    try:
        await swarm.create_job(spec)
        return True
    except ServiceNameConflict:
        existing = await swarm.inspect_service(spec.name)
        created = float((existing.labels if existing else {}).get(LABEL_CREATED, "0") or 0)
        if existing is not None and now - created > stale_after:
            log.warning("removing job %s, left since %.0f by a replica gone", spec.name, created)
            await swarm.remove_service(spec.name, reaper_image=reaper_image)
        return False
