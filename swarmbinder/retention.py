"""Registry retention: images neither launched nor built within ``image_retention_days`` go.

mybinder.org's most common incident was a full disk, and a Binder's registry only ever grows:
every commit of every repository anyone launched is an image. The sweep deletes, through the
registry's API, each image under ``image_prefix`` whose last use is older than the retention,
and never one that is in use:

* **last use** is when a launch of the image last reached ``ready`` (recorded in the store by
  every replica, batched by :class:`ImageUse`) or, for an image not launched since the sweep
  first saw it, when the sweep first saw it: a fresh build gets the whole retention period,
  and so does every image already there when retention is switched on;
* **in use** is any image a Swarm service names: a user server (any hub's), a warm pool
  server, a build (the image it will push) or anything else that runs it. Those are touched
  instead, so their period starts again when they stop.

Deleting a manifest frees no disk by itself: the registry's garbage collection does, in a job
of its own (the registry read-only meanwhile).

What a hostile user could do: keep launching an image to keep it (that is what "in use"
means: it costs them a launch each time, under the rate limit); make many images to fill the
disk before the sweep runs (bounded by the build rate limit and ``build_queue_limit``; the
sweep only deletes what is older than the retention). They cannot make the sweep delete an
image someone runs: the in-use set is read from Swarm, which the repository cannot write to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

from .errors import SwarmbinderError
from .labels import LABEL_IMAGE
from .registry import RegistryClient
from .registrytokens import repository_prefix
from .store import Store
from .swarm import SwarmClient

log = logging.getLogger(__name__)

DAY = 24 * 3600
#: How often launched images are written to the store: a restart loses at most this much.
IMAGE_USE_FLUSH_SECONDS = 10.0


@dataclass
class SweepReport:
    """What one sweep did, image names as launches use them (``host/repository:tag``)."""

    deleted: list[str] = field(default_factory=list)
    kept_in_use: list[str] = field(default_factory=list)
    first_seen: list[str] = field(default_factory=list)
    kept_recent: int = 0


class ImageUse:
    """Launched images, written to the store in batches: a launch never waits for the store
    on this account, and a burst of launches of one image is one write."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._pending: set[str] = set()

    def note(self, image: str) -> None:
        """``image`` was launched just now."""
        self._pending.add(image)

    async def flush(self) -> None:
        pending, self._pending = self._pending, set()
        try:
            await self._store.touch_images(sorted(pending), self._clock())
        except SwarmbinderError:
            self._pending |= pending  # the store is away: next time
            raise

    async def flush_forever(self, interval: float) -> None:
        """Flush every ``interval`` seconds until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush()
                except SwarmbinderError as exc:
                    log.info("recording launched images deferred: %s", exc)
        finally:
            with contextlib.suppress(SwarmbinderError):
                await self.flush()


def image_without_digest(image: str) -> str:
    """``name:tag`` of an image reference that may be pinned (``name:tag@sha256:...``)."""
    return image.partition("@")[0]


async def images_in_use(swarm: SwarmClient) -> set[str]:
    """Every image a Swarm service runs or (a build) is about to push."""
    services = await swarm.list_services({})
    used = {image_without_digest(s.image) for s in services if s.image}
    used |= {s.labels[LABEL_IMAGE] for s in services if s.labels.get(LABEL_IMAGE)}
    return used


async def registry_images(registry: RegistryClient, image_prefix: str) -> list[str]:
    """Every ``image:tag`` in the registry under ``image_prefix``."""
    repo_prefix = repository_prefix(image_prefix)
    host_part = image_prefix[: len(image_prefix) - len(repo_prefix)]
    images: list[str] = []
    for repository in await registry.list_repositories():
        if not repository.startswith(repo_prefix):
            continue
        for tag in await registry.list_tags(host_part + repository):
            images.append(f"{host_part}{repository}:{tag}")
    return images


async def sweep(
    *,
    registry: RegistryClient,
    store: Store,
    images: Iterable[str],
    in_use: Collection[str],
    keep_days: int,
    now: float,
) -> SweepReport:
    """Delete the images of ``images`` last used more than ``keep_days`` before ``now``."""
    report = SweepReport()
    last_used = await store.images_last_used()
    touched: list[str] = []
    for image in images:
        if image in in_use:
            report.kept_in_use.append(image)
            touched.append(image)
        elif image not in last_used:
            report.first_seen.append(image)
            touched.append(image)
        elif now - last_used[image] <= keep_days * DAY:
            report.kept_recent += 1
        else:
            name, _, tag = image.rpartition(":")
            if await registry.delete_tag(name, tag):
                report.deleted.append(image)
    await store.touch_images(touched, now)
    await store.forget_images(report.deleted)
    if report.deleted:
        log.info(
            "retention: deleted %d image(s) unused for %d days: %s",
            len(report.deleted),
            keep_days,
            ", ".join(report.deleted),
        )
    return report


async def sweep_forever(
    *,
    swarm: SwarmClient,
    registry: RegistryClient,
    store: Store,
    image_prefix: str,
    keep_days: int,
    interval: float,
    clock: Callable[[], float],
    after_sweep: Callable[[SweepReport], Awaitable[None]] | None = None,
) -> None:
    """Sweep every ``interval`` seconds until cancelled (a cleanup_ctx task), then run
    ``after_sweep`` (the registry's garbage collection). A round that fails (the engine,
    registry or store does not answer) is logged and retried next round."""
    while True:
        try:
            report = await sweep(
                registry=registry,
                store=store,
                images=await registry_images(registry, image_prefix),
                in_use=await images_in_use(swarm),
                keep_days=keep_days,
                now=clock(),
            )
            if after_sweep is not None:
                await after_sweep(report)
        except SwarmbinderError as exc:
            log.warning("retention sweep skipped this round: %s", exc)
        await asyncio.sleep(interval)
