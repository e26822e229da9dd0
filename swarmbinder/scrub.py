"""Scrubbing: the second wall between the service's secrets and what it shows.

The first wall keeps secrets away from builds. This one assumes that failed: a hostile
repository once made its build print the registry's push credentials (the base64 ``auth`` of a
Docker ``config.json``, i.e. of ``binder:<password>``) into its log events and its failure
reason. A :class:`Scrubber` knows the secrets of the process (the config's, added at start-up,
and credentials minted later) and replaces each of them in text with ``[secret]``, in the forms
a leak takes:

* as it is, and JSON-escaped (a log line is often a JSON document);
* URL-encoded, by ``quote(s, safe="")`` and by ``quote_plus``;
* base64, standard and URL-safe, with and without padding;
* base64 of a longer text holding it, such as ``binder:<password>`` or a ``config.json``: the
  characters of such an encoding that only the secret's bytes decide. The secret may start at
  any byte of a 3-byte group, so there are three of these cores, each dropping the characters
  that share bits with the unknown bytes before and after the secret;
* those cores once more encoded inside a longer text: a ``config.json`` whose ``auth`` is
  itself base64-encoded again (as Kubernetes stores it) holds the password two layers down;
* each line of a secret of several lines (a PEM key), as it is.

Secrets shorter than :data:`MIN_SECRET_LENGTH` are ignored: replacing ``abc`` everywhere would
wreck every log and hide nothing worth hiding. The derived forms need :data:`MIN_DERIVED_LENGTH`
characters, so that no core is short enough to turn up in ordinary text by chance.

Secrets are counted: each :meth:`Scrubber.add` is undone by one :meth:`Scrubber.discard`, so two
owners of the same value (an app and a CLI, two builds) cannot remove it from under each other.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TypeVar, cast
from urllib.parse import quote, quote_plus

__all__ = [
    "DEFAULT_SCRUBBER",
    "MIN_DERIVED_LENGTH",
    "MIN_SECRET_LENGTH",
    "REPLACEMENT",
    "ScrubFilter",
    "Scrubber",
    "install_log_scrubbing",
    "secret_forms",
]

REPLACEMENT = "[secret]"
#: Shorter secrets are not scrubbed at all.
MIN_SECRET_LENGTH = 4
#: Shorter secrets are scrubbed only as they are, not in encoded forms.
MIN_DERIVED_LENGTH = 8

T = TypeVar("T")

_URLSAFE = str.maketrans("+/", "-_")


def _base64_cores(data: bytes) -> list[str]:
    """The parts of the base64 of ``<k unknown bytes> + data + <unknown bytes>`` that ``data``
    alone decides, for k = 0, 1, 2 (every way ``data`` can sit in the 3-byte groups)."""
    cores = []
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data).decode("ascii")
        # Character i carries bits 6i..6i+5 of the stream; the secret has bits 8k..8(k+n)-1.
        first = -(-8 * k // 6)
        last = 8 * (k + len(data)) // 6
        cores.append(encoded[first:last])
    return cores


def _both_alphabets(text: str) -> set[str]:
    return {text, text.translate(_URLSAFE)}


def secret_forms(secret: str) -> frozenset[str]:
    """Every text :meth:`Scrubber.scrub` replaces for ``secret`` (empty if it is too short)."""
    if len(secret) < MIN_SECRET_LENGTH:
        return frozenset()
    forms = {secret}
    if len(secret) < MIN_DERIVED_LENGTH:
        return frozenset(forms)
    if "\n" in secret:
        # A PEM key leaks a line at a time into a log. Its armour lines are no secret.
        forms |= {
            line
            for line in (raw.strip() for raw in secret.splitlines())
            if len(line) >= MIN_DERIVED_LENGTH and not line.startswith("-----")
        }
    forms |= {quote(secret, safe=""), quote_plus(secret, safe=""), json.dumps(secret)[1:-1]}
    data = secret.encode("utf-8")
    whole = base64.b64encode(data).decode("ascii")
    forms |= _both_alphabets(whole) | _both_alphabets(whole.rstrip("="))
    first_layer: set[str] = set()
    for core in _base64_cores(data):
        first_layer |= _both_alphabets(core)
    forms |= first_layer
    for core in first_layer:
        for inner in _base64_cores(core.encode("ascii")):
            forms |= _both_alphabets(inner)
    return frozenset(forms)


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching any of ``words``, longest first, shaped as a trie of nested groups.

    A flat ``a|b|c`` makes ``re`` try every alternative at every position of the text; a trie
    tries only the characters that can come next, which is several times faster with hundreds
    of forms.
    """
    return _trie_node(sorted(set(words)))


def _trie_node(words: list[str]) -> str:
    """The pattern for sorted, distinct ``words`` (which may include the empty word)."""
    ends_here = bool(words) and words[0] == ""
    if ends_here:
        words = words[1:]
    if not words:
        return ""
    # In a sorted list the first and last words share exactly the prefix all words share.
    shared = os.path.commonprefix([words[0], words[-1]])
    if shared:
        body = re.escape(shared) + _trie_node([w[len(shared) :] for w in words])
    else:
        branches = [
            re.escape(char) + _trie_node([w[1:] for w in group])
            for char, group in itertools.groupby(words, key=lambda w: w[0])
        ]
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends_here:
        # A word ends here and longer ones go on: the greedy ? tries the longer ones first.
        body = "(?:" + body + ")?"
    return body


class Scrubber:
    """The secrets one process knows, and the function that removes them from text.

    Thread-safe. :meth:`add` and :meth:`discard` only note the change; the next scrub builds
    the one compiled pattern for the new set (about a millisecond per known secret), and
    every scrub after that uses it as is.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._forms: dict[str, frozenset[str]] = {}
        self._generation = 0
        #: (generation it was built for, pattern or None when there is nothing to scrub)
        self._compiled: tuple[int, re.Pattern[str] | None] = (0, None)
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Scrub ``secret`` from now on. Empty, None and too-short values are ignored."""
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            return
        forms = None if secret in self._forms else secret_forms(secret)
        with self._lock:
            count = self._counts.get(secret, 0)
            self._counts[secret] = count + 1
            if count == 0:
                self._forms[secret] = forms if forms is not None else secret_forms(secret)
                self._generation += 1

    def update(self, secrets: Iterable[str | None]) -> None:
        for secret in secrets:
            self.add(secret)

    def discard(self, secret: str | None) -> None:
        """Undo one :meth:`add` of ``secret``; unknown values are ignored."""
        if not secret:
            return
        with self._lock:
            count = self._counts.get(secret, 0)
            if count > 1:
                self._counts[secret] = count - 1
            elif count == 1:
                del self._counts[secret]
                del self._forms[secret]
                self._generation += 1

    def __contains__(self, secret: object) -> bool:
        return secret in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def _pattern(self) -> re.Pattern[str] | None:
        generation, pattern = self._compiled
        if generation == self._generation:
            return pattern
        with self._lock:
            generation = self._generation
            forms = set().union(*self._forms.values()) if self._forms else set()
        # Compiled outside the lock: add() must never wait for a compile. The text is the same
        # for the same set of secrets, so a set seen before comes from re's own cache.
        pattern = re.compile(_trie_pattern(forms)) if forms else None
        with self._lock:
            if self._compiled[0] < generation:
                self._compiled = (generation, pattern)
        return pattern

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, in each of its forms, replaced by ``[secret]``."""
        pattern = self._pattern()
        if pattern is None or not text:
            return text
        return pattern.sub(REPLACEMENT, text)

    def scrub_obj(self, value: T) -> T:
        """A JSON-like value with its strings scrubbed: mappings (as dicts), lists and tuples are
        copied, other values kept. Keys are kept: they are the answer's structure, not its data.
        """
        pattern = self._pattern()
        if pattern is None:
            return value
        return cast(T, _walk(value, pattern))


def _walk(value: object, pattern: re.Pattern[str]) -> object:
    if isinstance(value, str):
        return pattern.sub(REPLACEMENT, value) if value else value
    if isinstance(value, Mapping):
        return {key: _walk(item, pattern) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, pattern) for item in value]
    if isinstance(value, tuple):
        return tuple(_walk(item, pattern) for item in value)
    return value


#: The process's scrubber: the log filter of ``swarmbinder serve`` uses it, the app fills it
#: with the config's secrets while it runs, and build events are scrubbed with it.
DEFAULT_SCRUBBER = Scrubber()


class ScrubFilter(logging.Filter):
    """Scrubs every record a handler emits: the message with its arguments merged in (the
    arguments are then dropped, so no formatter sees them raw), the exception text and the
    stack text."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: leave the record alone, so the handler reports it as usual.
            return True
        record.msg = self.scrubber.scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is printed scrubbed.
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrubber.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrubber.scrub(record.stack_info)
        return True


_EXCEPTION_FORMATTER = logging.Formatter()


def install_log_scrubbing(scrubber: Scrubber = DEFAULT_SCRUBBER) -> None:
    """Scrub what every handler of the root logger emits (handlers added later are not
    covered: call this after ``logging.basicConfig``). Calling it again changes nothing."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) and f.scrubber is scrubber for f in handler.filters):
            handler.addFilter(ScrubFilter(scrubber))
