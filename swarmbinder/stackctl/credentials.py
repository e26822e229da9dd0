"""The stack's Swarm secrets: random tokens and the registry token pair, made once and never
overwritten, and the SSH console's host key and keys secrets."""

from __future__ import annotations

import secrets

from .. import hostsetup as hs
from ..registrytokens import make_signing_pair
from .options import (
    CONSOLE_HOST_KEY,
    CONSOLE_KEYS,
    POSTGRES_SECRETS,
    SECRETS,
    STACK_LABEL,
    TOKEN_PAIR,
    Console,
    StackError,
    StackOptions,
)


def make_secrets(name: str) -> list[str]:
    """The stack's secrets that do not exist yet, made as ``up`` makes them (for a cluster
    deployed with ``docker stack deploy``); returns the names created. Never overwrites one."""
    StackOptions(name=name).check()
    if not hs.docker_answers():
        raise StackError(f"the Docker engine at {hs.docker_host()} does not answer")
    try:
        return ensure_secrets(name)
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def ensure_secrets(stack: str) -> list[str]:
    """Create the stack's secrets that do not exist; returns the names created."""
    created = []
    for name in (*SECRETS, *POSTGRES_SECRETS):
        full = f"{stack}-{name}"
        # Hex: build_token_secret and cookie-secret must be hex, none may hold a newline, and
        # postgres-password goes into SQL and URLs as it is.
        if hs.ensure_secret(full, lambda: secrets.token_hex(32), {STACK_LABEL: stack}):
            created.append(full)
    return created + ensure_token_pair(stack)


def ensure_token_pair(stack: str) -> list[str]:
    """The registry token issuer's key and certificate, made together when either is missing
    (a half-made pair, left by an ``up`` that was stopped between the two, is replaced)."""
    key, certificate = (f"{stack}-{name}" for name in TOKEN_PAIR)
    exists = {
        name: hs.run(["docker", "secret", "inspect", name], check=False).returncode == 0
        for name in (key, certificate)
    }
    if all(exists.values()):
        return []
    for name in (n for n, there in exists.items() if there):
        if hs.run(["docker", "secret", "rm", name], check=False).returncode != 0:
            raise StackError(
                f"secret {name} exists without its pair and is in use: remove the stack "
                "(swarmbinder down) and run up again"
            )
    pair = make_signing_pair()
    labels = {STACK_LABEL: stack}
    hs.ensure_secret(key, pair.key_pem.decode, labels)
    hs.ensure_secret(certificate, pair.certificate_pem.decode, labels)
    return [key, certificate]


def ensure_console_secrets(stack: str, console: Console) -> list[str]:
    """The console's host key (made once: clients keep trusting it across deploys) and its
    keys secret; returns the names created."""
    created = []
    host_key = f"{stack}-{CONSOLE_HOST_KEY}"
    if hs.ensure_secret(host_key, _new_host_key, {STACK_LABEL: stack}):
        created.append(host_key)
    keys = console.keys
    if keys is not None and hs.ensure_secret(
        console.keys_secret(stack), lambda: keys, {STACK_LABEL: stack}
    ):
        created.append(console.keys_secret(stack))
    return created


def _new_host_key() -> str:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="swarmbinder-console")
    return key.export_private_key().decode()


def console_secrets(stack: str) -> list[str]:
    """The stack's console secrets that exist: keys secrets of every version and the host key."""
    names = hs.run(["docker", "secret", "ls", "--format", "{{.Name}}"], timeout=30).stdout.split()
    keys = [n for n in names if n.startswith(f"{stack}-{CONSOLE_KEYS}")]
    return sorted(keys) + [n for n in names if n == f"{stack}-{CONSOLE_HOST_KEY}"]


def remove_unused_console_keys(stack: str, keep: str | None) -> None:
    """Remove the console's keys secrets but ``keep``; Swarm refuses one still in use."""
    for name in console_secrets(stack):
        if name.startswith(f"{stack}-{CONSOLE_KEYS}") and name != keep:
            hs.run(["docker", "secret", "rm", name], check=False)
