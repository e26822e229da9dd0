"""Names derived from a repository: images, build services and temporary users.

Image names must stay byte-identical to BinderHub's, so a registry filled by BinderHub is reused
as is: ``{image_prefix}{escaped slug}-{sha256(slug)[:6]}:{resolved ref}``, lower-cased, with
``_`` turned into ``-``.

Build service names are ours. BinderHub's build names keep only five characters of the ref
(three readable plus a two-hex-digit hash), enough for pods that live minutes; a Swarm service
name is our lock for "one build per repo and ref", so it carries a 48-bit hash of both.

Temporary user names follow BinderHub's ``unique_name_from_repo`` shape
(``owner-repo-<8 random chars>``) but are sized by the length of the *escaped* name, because
SwarmSpawner names the user's service ``jupyter-{escaped username}`` and Swarm refuses names
longer than 63 characters.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from urllib.parse import urlparse

import escapism

#: Swarm service names are DNS labels (swarmkit ``validateAnnotations``).
MAX_SERVICE_NAME_LENGTH = 63
#: BinderHub keeps the repository part of an image name within 255 characters.
MAX_IMAGE_NAME_LENGTH = 255

BUILD_SERVICE_PREFIX = "swarmbinder-build-"
#: hex digits of sha256(slug, ref) that end every build service name
BUILD_HASH_LENGTH = 12
#: readable characters of the (escaped) ref kept in a build service name
BUILD_REF_LENGTH = 7

#: SwarmSpawner's default ``prefix`` (service ``{prefix}-{username}[--{servername}]``).
SPAWNER_PREFIX = "jupyter"
TEMP_SUFFIX_LENGTH = 8
_TEMP_SUFFIX_CHARS = string.ascii_lowercase + string.digits

_SLUG_SAFE = frozenset(string.ascii_letters + string.digits)
_SPAWNER_SAFE = frozenset(string.ascii_lowercase + string.digits)
_SSH_SCP_FORM = re.compile(r"^[^/:@]+@[^/:]+:(.+)$")
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def _escape(text: str, safe: frozenset[str]) -> str:
    escaped: str = escapism.escape(text, safe=safe, escape_char="-")
    return escaped


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def safe_build_slug(build_slug: str, limit: int, hash_length: int = 6) -> str:
    """Escape a provider's build slug and append a hash of it, within ``limit`` characters.

    Same scheme as BinderHub's ``_safe_build_slug``: a slug that would make an invalid image
    name (one ending in ``_``, say) still gives a valid one, and two slugs that escape or
    truncate alike still differ by their hash.
    """
    if limit < hash_length + 2:
        raise ValueError(f"limit {limit} leaves no room for a slug and a {hash_length}-char hash")
    escaped = _escape(build_slug, _SLUG_SAFE)
    return f"{escaped[: limit - hash_length - 1]}-{_sha256(build_slug)[:hash_length]}".lower()


def image_name(image_prefix: str, build_slug: str, resolved_ref: str) -> str:
    """The image (``repository:tag``) BinderHub would build for this slug and resolved ref.

    >>> image_name("registry:5000/binder-", "binder-examples-octave", "1479e02")
    'registry:5000/binder-binder-2dexamples-2doctave-03025a:1479e02'
    """
    slug = safe_build_slug(build_slug, limit=MAX_IMAGE_NAME_LENGTH - len(image_prefix))
    return f"{image_prefix}{slug}:{resolved_ref}".replace("_", "-").lower()


def split_image_name(name: str) -> tuple[str, str]:
    """Split ``[registry/]repository:tag`` into ``(registry/repository, tag)``.

    A ``:`` in the registry part (a port) is not taken for the tag separator.
    """
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def build_service_name(
    build_slug: str, resolved_ref: str, prefix: str = BUILD_SERVICE_PREFIX
) -> str:
    """A Swarm service name for building ``build_slug`` at ``resolved_ref``.

    Deterministic, so every request for the same repo and ref names the same service and a
    second ``create`` finds the first; at most 63 characters of ``[a-z0-9-]``, starting with a
    letter and not ending with ``-``. The readable parts may be cut short; the trailing hash of
    (slug, ref) keeps distinct inputs apart.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]*", prefix):
        raise ValueError(f"build service prefix {prefix!r} must be [a-z][a-z0-9-]*")
    digest = _sha256(f"{build_slug}\n{resolved_ref}")[:BUILD_HASH_LENGTH]
    ref_part = _readable(resolved_ref, BUILD_REF_LENGTH)
    room = MAX_SERVICE_NAME_LENGTH - len(prefix) - len(ref_part) - len(digest) - 2
    if room < 1:
        raise ValueError(f"build service prefix {prefix!r} is too long")
    slug_part = _readable(build_slug, room)
    parts = [p for p in (slug_part, ref_part, digest) if p]
    return prefix + "-".join(parts)


def _readable(text: str, limit: int) -> str:
    """Lower-case letters and digits of ``text`` with runs of anything else as one ``-``."""
    return _NOT_NAME_CHARS.sub("-", text.lower())[:limit].strip("-")


def spawner_escape(text: str) -> str:
    """DockerSpawner's default escape for user and server names in object names."""
    return _escape(text, _SPAWNER_SAFE).lower()


def spawner_service_name(username: str, server_name: str = "", prefix: str = SPAWNER_PREFIX) -> str:
    """The service name SwarmSpawner's default ``name_template`` gives a user's server."""
    name = f"{prefix}-{spawner_escape(username)}"
    if server_name:
        name += f"--{spawner_escape(server_name.lower())}"
    return name


def temporary_name_budget(
    username: str | None = None, prefix: str = SPAWNER_PREFIX, limit: int = MAX_SERVICE_NAME_LENGTH
) -> int:
    """How long the *escaped* temporary name may be.

    Without ``username`` the temporary name is the user name (``{prefix}-{name}``). With it, the
    temporary name is a named server of that user (``{prefix}-{username}--{name}``).
    """
    budget = limit - len(prefix) - 1
    if username is not None:
        budget -= len(spawner_escape(username)) + 2
    return budget


def temporary_name(
    repo_url: str, *, budget: int | None = None, rng: random.Random | None = None
) -> str:
    """A fresh user or server name for a launch of ``repo_url``: ``owner-repo-xxxxxxxx``.

    ``budget`` bounds the length of the name once SwarmSpawner has escaped it (every ``-``
    becomes ``-2d``); it defaults to what a user name may take (:func:`temporary_name_budget`).
    The eight random characters (36**8, about 2**41) keep concurrent launches apart.
    """
    if budget is None:
        budget = temporary_name_budget()
    suffix_cost = 3 + TEMP_SUFFIX_LENGTH  # "-" escapes to "-2d"
    if budget < suffix_cost + 1:
        raise ValueError(f"no room for a temporary name in {budget} characters")
    chooser = rng if rng is not None else random.SystemRandom()
    suffix = "".join(chooser.choices(_TEMP_SUFFIX_CHARS, k=TEMP_SUFFIX_LENGTH))
    stem = _shorten(_repo_stem(repo_url), budget - suffix_cost)
    return f"{stem}-{suffix}"


def _repo_stem(repo_url: str) -> str:
    ssh = _SSH_SCP_FORM.match(repo_url) if "://" not in repo_url else None
    path = ssh.group(1) if ssh else urlparse(repo_url).path
    path = path.strip("/").lower()
    if path.endswith(".git"):
        path = path[:-4]
    return _NOT_NAME_CHARS.sub("-", path).strip("-") or "binder"


def _escaped_length(text: str) -> int:
    # the stem is [a-z0-9-] only, and only "-" needs escaping (to "-2d")
    return len(text) + 2 * text.count("-")


def _shorten(stem: str, room: int) -> str:
    """Fit ``stem`` into ``room`` escaped characters, keeping its head and its tail."""
    if _escaped_length(stem) <= room:
        return stem
    half = (room - 3) // 2
    head = _take(stem, half)
    tail = _take(stem[::-1], half)[::-1]
    head, tail = head.rstrip("-"), tail.lstrip("-")
    if not head or not tail:
        return (head or tail or "binder")[: max(room, 1)]
    return f"{head}-{tail}"


def _take(text: str, room: int) -> str:
    taken = 0
    for i, char in enumerate(text):
        taken += 3 if char == "-" else 1
        if taken > room:
            return text[:i]
    return text
