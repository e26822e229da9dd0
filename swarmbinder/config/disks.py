"""The disks' section: the registry's garbage collection and the build nodes' housekeeping.

mybinder.org's most common incident was a full disk. Registry retention (the registry's section)
deletes old images' manifests; these options free the disk they held, and keep the build nodes'
Docker data roots from filling with build caches and images no container uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from .base import Section, opt

#: What Docker accepts as a service name (and a job's name is made from it).
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,59}")


def service_name(value: str | None) -> str | None:
    if value is not None and not _SERVICE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Swarm service name (letters, digits, '_', '.', '-'; at most "
            "60 characters)"
        )
    return value


@dataclass(frozen=True)
class DiskConfig(Section):
    """Disks that never fill: the registry's garbage collection and node housekeeping."""

    registry_gc: bool = opt(
        False,
        "After a retention sweep (image_retention_days) deleted images, run the registry's "
        "garbage collection (`garbage-collect --delete-untagged`) as a one-shot Swarm job on "
        "the registry's node, with its volumes, image and environment, to free the disk the "
        "deleted images held. The registry is made read-only (pulls work, pushes are refused) "
        "by a service update while the job runs, and writable again afterwards whatever "
        "happens. The job's name is the lock: one replica collects at a time. Needs "
        "registry_service.",
    )
    registry_service: str | None = opt(
        None,
        "The registry's Swarm service as `docker service ls` names it (the stack's: "
        "<stack>_registry, set by docker-stack.yml). Binder updates it to make it read-only "
        "during garbage collection, so it must run on a manager's engine.",
        check=service_name,
    )
    registry_gc_timeout: int = opt(
        1800,
        "Seconds the registry's garbage collection may take (the registry read-only meanwhile) "
        "before it is stopped and the registry made writable again. A job left by a replica "
        "that died is taken over after this long.",
        minimum=60,
    )
    node_housekeeping: bool = opt(
        False,
        "Every node_housekeeping_interval, run a Swarm global job on the build nodes (those "
        "build_node_selector and the build node label select) that measures the disk of each "
        "node's Docker data root and, past node_housekeeping_threshold, prunes the build "
        "cache and every image no container uses and no Swarm service names (never an image "
        "a user server runs). Binder records each node's disk use as node labels, for "
        "/metrics and the admin console. Its container holds the node's Docker socket and "
        "never runs repository code.",
    )
    node_housekeeping_interval: int = opt(
        3600, "Seconds between node housekeeping jobs.", minimum=10
    )
    node_housekeeping_threshold: int = opt(
        80,
        "Percent of the Docker data root's disk in use past which node housekeeping prunes "
        "(below it, it only measures). 0 prunes every time.",
        minimum=0,
        maximum=100,
    )
    node_housekeeping_keep_images: tuple[str, ...] = opt(
        (),
        "Images node housekeeping never prunes besides those Swarm services name, e.g. the "
        "base images builds start FROM (pruned, the next build pulls them again) or images "
        "no registry holds.",
    )
    node_housekeeping_image: str | None = opt(
        None,
        "Image of the node housekeeping job: any image with Python 3 and the docker package. "
        "Null: build_image (repo2docker has both).",
    )

    def check_with(self, *, retention_days: int | None) -> None:
        """The checks that need other sections' options; ConfigError names the option."""
        if self.registry_gc and self.registry_service is None:
            raise ConfigError("registry_service", "is needed by registry_gc (which registry)")
        if self.registry_gc and retention_days is None:
            raise ConfigError(
                "registry_gc", "needs image_retention_days (it runs after a sweep deleted images)"
            )
