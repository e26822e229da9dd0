"""One repository, however its URL is spelled: what bans, allow-lists and quotas match.

``https://github.com/org/repo``, ``HTTPS://GitHub.COM./org/repo.git/``,
``https://github.com:443/org/./%72epo`` and ``git@github.com:org/repo`` all name one
repository, and git clones the same thing from each. A ban matched only against the spell-it-
as-you-like launch spec is a ban in name only, so every rule is also matched against the
*canonical* repository URL (:func:`canonical_repo_url`):

* scheme and host in lower case, the host without a trailing dot, no user name or password;
* no port when it is the scheme's default (``https`` 443, ``http`` 80, ``git`` 9418, ``ssh`` 22);
* escapes of unreserved characters (letters, digits, ``-._~``) decoded, other escapes kept
  with upper-case hex (``%2f`` -> ``%2F``);
* ``.`` and ``..`` segments resolved and empty segments dropped, as servers do;
* no trailing ``/`` and no ``.git``, no query and no fragment;
* git's scp-like ``user@host:path`` read as ``ssh://host/path``.

The path keeps its case (some git servers tell ``Repo`` from ``repo``); rules match ignoring
case anyway, and :func:`same_repository` compares ignoring it. Text that is not a URL with a
host (a DOI, a record id) is its own canonical form.

What a rule is matched against is a :class:`RepoIdentity`'s :meth:`~RepoIdentity.subjects`:
the spec after the provider prefix (BinderHub's ``banned_specs`` form), the spec with it
(``gh/org/repo/HEAD``), and the canonical repository URL. A rule applies when it matches any
of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Ports that say nothing: a URL with one names the same repository as the URL without.
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22, "git+ssh": 22}

_SCP_FORM = re.compile(r"[^@/:]+@(?P<host>[\w.-]+):(?P<path>(?!//).+)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUFFIXES = ("/", ".git")


def normalise_escapes(text: str) -> str:
    """Decode the escapes of unreserved characters; write the others' hex in upper case."""

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else f"%{match.group(1).upper()}"

    return _ESCAPE.sub(one, text)


def remove_dot_segments(path: str) -> str:
    """``/a/./b/../c`` -> ``/a/c``; ``..`` never climbs above the root. Empty segments go
    too (``/a//b`` -> ``/a/b``). The result is ``""`` or starts with ``/``."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    return "/" + "/".join(kept) if kept else ""


def _canonical_path(path: str) -> str:
    path = normalise_escapes(path)
    # Until nothing changes: ``repo.git/`` loses both suffixes, and ``a/..git`` loses its
    # ``.git`` only to show a ``..`` segment, which must go too (else a second pass would
    # change the result).
    while True:
        before = path
        path = remove_dot_segments(path)
        for suffix in _SUFFIXES:
            path = path.removesuffix(suffix)
        if path == before:
            return path


def _canonical_host(netloc: str, scheme: str) -> str:
    hostport = netloc.rpartition("@")[2]  # user names and passwords are not the repository
    if hostport.startswith("["):  # an IPv6 literal: [::1]:443
        host, _, rest = hostport.partition("]")
        host += "]"
        port = rest.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    host = normalise_escapes(host).lower().rstrip(".")
    if port.isdigit() and int(port) != DEFAULT_PORTS.get(scheme):
        return f"{host}:{int(port)}"
    if port and not port.isdigit():
        return f"{host}:{port}"  # not a port any client accepts; keep it visible
    return host


def canonical_repo_url(url: str) -> str:
    """The one spelling of the repository ``url`` names (see the module's rules).

    Pure and never raising: what does not look like a URL with a host comes back as it was,
    stripped of surrounding blanks. ``canonical_repo_url(canonical_repo_url(u))`` is
    ``canonical_repo_url(u)``.
    """
    text = url.strip()
    if not _SCHEME.match(text):
        scp = _SCP_FORM.fullmatch(text)
        if scp is None:
            return text
        text = f"ssh://{scp.group('host')}/{scp.group('path')}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    scheme = parts.scheme.lower()
    host = _canonical_host(parts.netloc, scheme)
    if not host:
        return text
    return f"{scheme}://{host}{_canonical_path(parts.path)}"


def same_repository(url: str, other: str) -> bool:
    """Whether two repository URLs name one repository (case of the path ignored)."""
    return canonical_repo_url(url).casefold() == canonical_repo_url(other).casefold()


@dataclass(frozen=True)
class RepoIdentity:
    """A launch's repository, in every form a rule may be written against."""

    #: The provider prefix: ``gh``, ``git``, ...
    provider: str
    #: The spec after the prefix, as in the launch URL: ``org/repo/HEAD``.
    spec: str
    #: The URL the provider clones (``""`` when not known); matched in canonical form.
    repo_url: str = ""

    @property
    def canonical_url(self) -> str:
        return canonical_repo_url(self.repo_url) if self.repo_url else ""

    def subjects(self) -> tuple[str, ...]:
        """What rules are matched against, in this order: the spec without the provider
        prefix, the spec with it, the canonical repository URL."""
        forms = (self.spec, f"{self.provider}/{self.spec}", self.canonical_url)
        return tuple(dict.fromkeys(form for form in forms if form))


#: What a rule may be asked about: a bare spec (after the prefix), or a whole identity.
Subject = str | RepoIdentity


def subjects_of(subject: Subject) -> tuple[str, ...]:
    """The texts a rule is matched against for ``subject``."""
    return (subject,) if isinstance(subject, str) else subject.subjects()


def spec_of(subject: Subject) -> str:
    """The spec to name in a message (the launch URL's, as BinderHub's messages do)."""
    return subject if isinstance(subject, str) else subject.spec


#: For docs, the admin API's answers and the console's hint: which forms a pattern may take.
PATTERN_FORMS_HELP = (
    "A spec pattern is a regular expression matched (ignoring case, anchored at the start) "
    "against three forms of each launch; it applies when it matches any of them: the spec "
    "without the provider prefix as BinderHub's banned_specs are written (org/repo/HEAD), the "
    "spec with it (gh/org/repo/HEAD), and the canonical repository URL "
    "(https://github.com/org/repo: lower-case scheme and host, no default port, no trailing "
    "'/' or '.git')."
)
