"""The SSH console's authorized_keys file, checked one way for ``swarmbinder up`` (before it
stores the file as a Swarm secret) and for the console server (at every login)."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from .errors import SwarmbinderError


class AuthorizedKeysError(SwarmbinderError, ValueError):
    """The file cannot be used; the message is one line naming it."""


def authorized_keys_checked(path: Path) -> tuple[str, asyncssh.SSHAuthorizedKeys]:
    """The file's text and its keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AuthorizedKeysError(
            f"cannot read the authorized keys file {path}: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError:
        raise AuthorizedKeysError(f"the authorized keys file {path} is not text") from None
    keys = asyncssh.SSHAuthorizedKeys()
    try:
        keys.load(text)  # raises on a file without a single key, where the constructor does not
    except ValueError:
        raise AuthorizedKeysError(f"no public keys in the authorized keys file {path}") from None
    return text, keys
