"""What the node housekeeping job runs on each build node: measure, prune past a threshold, report.

This module is the job's program: :mod:`swarmbinder.housekeeping` sends its source text to
``python3 -c`` in the job's image (which has the docker package but not swarmbinder), so it
imports only the standard library at the top and docker inside :func:`main`. Its rules are
plain functions, tested without Docker.

Arguments: the threshold (percent of the data root's disk in use, past which it prunes) and a
JSON list of image references never to remove (every image a Swarm service names, and the
job's own). It prints one line, :data:`REPORT_MARKER` and a JSON object, that Binder reads.

The disk measured is the one holding the job's own root filesystem: under the overlay2 (and
vfs) storage drivers a container's root is a directory of the Docker data root, so its
``statvfs`` is the data root's filesystem. No mount of the node's filesystem is needed.

What is removed, past the threshold: the build cache, then every image no container uses
(running or stopped: a user server, a build, anything) and no reference in the keep list
names, newest first so children go before their parents, each by its tags without force: an
image a container started using since the listing is refused by the engine and stays.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The start of the job's report line in its log.
REPORT_MARKER = "swarmbinder-housekeeping "


def normalise_reference(reference: str) -> str:
    """``reference`` as the engine lists an image's tags: no digest, no default registry, a
    tag (``latest`` when none)."""
    name = reference.partition("@")[0]
    for default in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(default):
            name = name[len(default) :]
            break
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def images_to_remove(
    images: Iterable[Mapping[str, Any]],
    containers: Iterable[Mapping[str, Any]],
    keep: Iterable[str],
) -> list[Mapping[str, Any]]:
    """The images (as the engine lists them) no container uses and ``keep`` does not name,
    newest first."""
    used = {str(c.get("ImageID", "")) for c in containers}
    kept = {normalise_reference(k) for k in keep}
    chosen = [
        image
        for image in images
        if image.get("Id") not in used
        and not any(normalise_reference(t) in kept for t in image.get("RepoTags") or ())
    ]
    return sorted(chosen, key=lambda image: int(image.get("Created") or 0), reverse=True)


def image_references(image: Mapping[str, Any]) -> list[str]:
    """What to remove an image by: its tags, or its ID when it has none (``<none>:<none>``)."""
    tags = [t for t in image.get("RepoTags") or () if t != "<none>:<none>"]
    return tags or [str(image["Id"])]


def disk_use(path: str = "/") -> tuple[int, int]:
    """(bytes used, bytes in all) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def over_threshold(used: int, total: int, percent: float) -> bool:
    return total > 0 and used * 100 >= percent * total


def prune(client: Any, keep: Sequence[str], errors: tuple[type[Exception], ...]) -> dict[str, Any]:
    """Remove the build cache and the images :func:`images_to_remove` chooses; what went."""
    cache = client.api.prune_builds() or {}
    removed: list[str] = []
    images, containers = client.api.images(all=False), client.api.containers(all=True)
    for image in images_to_remove(images, containers, keep):
        for reference in image_references(image):
            try:
                client.api.remove_image(reference, force=False, noprune=False)
            except errors:
                break  # in use since the listing, or a parent of an image that stays
            removed.append(reference)
    dangling = client.api.prune_images(filters={"dangling": True}) or {}
    return {
        "images_removed": removed,
        "cache_bytes": int(cache.get("SpaceReclaimed") or 0),
        "dangling_bytes": int(dangling.get("SpaceReclaimed") or 0),
    }


def report(
    node_id: str, hostname: str, before: tuple[int, int], after: tuple[int, int], pruned: Any
) -> str:
    """The report line Binder parses (:func:`swarmbinder.housekeeping.parse_reports`)."""
    fields = {
        "node_id": node_id,
        "hostname": hostname,
        "used_before": before[0],
        "used": after[0],
        "total": after[1],
        "freed": max(0, before[0] - after[0]),
        "pruned": pruned,
    }
    return REPORT_MARKER + json.dumps(fields, sort_keys=True)


def main(argv: Sequence[str]) -> int:
    import docker  # type: ignore[import-untyped,import-not-found,unused-ignore]

    threshold, keep = float(argv[0]), list(json.loads(argv[1]))
    client = docker.from_env()
    before = disk_use()
    pruned = None
    if over_threshold(*before, threshold):
        pruned = prune(client, keep, (docker.errors.APIError,))
    after = disk_use()
    node_id, hostname = os.environ.get("NODE_ID", ""), os.environ.get("NODE_HOSTNAME", "")
    print(report(node_id, hostname, before, after, pruned), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
