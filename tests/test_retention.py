"""Registry retention (image_retention_days): the sweep's rules over a fake registry, then the
real sweep against the test ground's registry and engine."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from docker_cli import adocker

from swarmbinder.jobspec import JobSpec
from swarmbinder.registry import RegistryClient
from swarmbinder.retention import (
    DAY,
    ImageUse,
    images_in_use,
    registry_images,
    sweep,
)
from swarmbinder.store import Store
from swarmbinder.store.records import StoreUnavailable
from swarmbinder.swarm import SwarmClient

T0 = 1_800_000_000.0


class FakeRegistry:
    def __init__(self, images: list[str]) -> None:
        self.images = list(images)
        self.deleted: list[str] = []

    async def delete_tag(self, name: str, tag: str) -> bool:
        self.deleted.append(f"{name}:{tag}")
        return True


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "store.sqlite")
    yield store
    await store.close()


async def fake_sweep(
    store: Store, registry: FakeRegistry, in_use: set[str], now: float
) -> tuple[list[str], list[str], list[str], int]:
    report = await sweep(
        registry=cast(RegistryClient, registry),
        store=store,
        images=registry.images,
        in_use=in_use,
        keep_days=30,
        now=now,
    )
    return report.deleted, report.kept_in_use, report.first_seen, report.kept_recent


async def test_the_sweep_keeps_what_is_used_recent_or_new_and_deletes_the_rest(
    store: Store,
) -> None:
    images = ["r/binder-old:1", "r/binder-running:1", "r/binder-recent:1"]
    registry = FakeRegistry(images)
    # The first sweep sees everything for the first time: nothing goes, the clock starts.
    assert await fake_sweep(store, registry, {"r/binder-running:1"}, T0) == (
        [],
        ["r/binder-running:1"],
        ["r/binder-old:1", "r/binder-recent:1"],
        0,
    )
    await store.touch_images(["r/binder-recent:1"], T0 + 20 * DAY)  # launched then
    # 31 days on: only the image neither run nor launched within 30 days is deleted.
    deleted, kept, first, recent = await fake_sweep(
        store, registry, {"r/binder-running:1"}, T0 + 31 * DAY
    )
    assert (deleted, kept, first, recent) == (["r/binder-old:1"], ["r/binder-running:1"], [], 1)
    assert registry.deleted == ["r/binder-old:1"]
    # The running image's clock restarted when it was last seen running; the deleted image's
    # record is gone, so if it is rebuilt it gets a whole period again.
    last = await store.images_last_used()
    assert last["r/binder-running:1"] == T0 + 31 * DAY and "r/binder-old:1" not in last


async def test_exactly_the_retention_is_still_kept(store: Store) -> None:
    registry = FakeRegistry(["r/binder-a:1"])
    await fake_sweep(store, registry, set(), T0)
    assert (await fake_sweep(store, registry, set(), T0 + 30 * DAY))[0] == []
    assert (await fake_sweep(store, registry, set(), T0 + 30 * DAY + 1))[0] == ["r/binder-a:1"]


async def test_launches_are_batched_and_a_missing_store_keeps_them(store: Store) -> None:
    now = [T0]
    use = ImageUse(store, lambda: now[0])
    use.note("r/binder-a:1")
    use.note("r/binder-a:1")
    use.note("r/binder-b:1")
    await use.flush()
    assert await store.images_last_used() == {"r/binder-a:1": T0, "r/binder-b:1": T0}

    class AwayStore:
        async def touch_images(self, images: list[str], at: float) -> None:
            raise StoreUnavailable("store", "not answering")

    away = ImageUse(cast(Store, AwayStore()), lambda: now[0])
    away.note("r/binder-c:1")
    with pytest.raises(StoreUnavailable):
        await away.flush()
    away._store = store  # back
    now[0] = T0 + 5
    await away.flush()
    assert (await store.images_last_used())["r/binder-c:1"] == T0 + 5


# -- for real ------------------------------------------------------------------------------------


@pytest.mark.swarm
async def test_a_real_sweep_deletes_only_the_unused_image(
    testground: dict[str, Any], store: Store
) -> None:
    registry_host = testground["registry"]
    prefix = f"{registry_host}/sbret{uuid.uuid4().hex[:8]}-"
    old, running, recent = (f"{prefix}{name}:1" for name in ("old", "running", "recent"))
    service = f"sbret-{uuid.uuid4().hex[:8]}"
    try:
        for image in (old, running, recent):
            await adocker("tag", testground["images"]["singleuser"], image)
            await adocker("push", "--quiet", image)
        async with SwarmClient.connect() as swarm, RegistryClient(registry_host) as registry:
            # A service that names the image: it runs it (here it exits at once; the service,
            # and so the use, stays until removed).
            await swarm.create_job(JobSpec(name=service, image=running, command=["true"], args=[]))
            in_use = await images_in_use(swarm)
            assert running in in_use and old not in in_use
            listed = await registry_images(registry, prefix)
            assert sorted(listed) == sorted([old, running, recent])

            first = await sweep(
                registry=registry, store=store, images=listed, in_use=in_use, keep_days=30,
                now=T0,
            )  # fmt: skip
            assert first.deleted == [] and sorted(first.first_seen) == sorted([old, recent])
            await store.touch_images([recent], T0 + 20 * DAY)
            later = await sweep(
                registry=registry, store=store, images=listed, in_use=in_use, keep_days=30,
                now=T0 + 31 * DAY,
            )  # fmt: skip
            assert later.deleted == [old]
            assert not await registry.manifest_exists(*old.rsplit(":", 1))
            assert await registry.manifest_exists(*running.rsplit(":", 1))
            assert await registry.manifest_exists(*recent.rsplit(":", 1))
            assert sorted(await registry_images(registry, prefix)) == sorted([running, recent])
    finally:
        async with SwarmClient.connect() as swarm, RegistryClient(registry_host) as registry:
            await swarm.remove_service(service)
            await swarm.remove_leftover_containers(service)
            for image in (old, running, recent):
                with contextlib.suppress(Exception):
                    await registry.delete_tag(*image.rsplit(":", 1))
        for image in (old, running, recent):
            with contextlib.suppress(AssertionError):
                await adocker("rmi", image)
