"""Which SSH console a deploy includes: from a new keys file, the running one kept, or none."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .inputs import digest
from .options import CONSOLE_KEYS, DEFAULT_SSH_PORT, Console, StackInputError, StackOptions


def read_console_keys(path: Path) -> str:
    """The authorized_keys text for the console; refused here, in one line, when the console
    would refuse it at start (unreadable, or not one public key it can use)."""
    # asyncssh is loaded only when a console is asked for.
    from ..sshkeys import AuthorizedKeysError, authorized_keys_checked

    try:
        return authorized_keys_checked(path)[0]
    except AuthorizedKeysError as exc:
        raise StackInputError(f"--ssh-console: {exc}") from None


def plan_console(
    options: StackOptions, keys: str | None, running: Console | None
) -> Console | None:
    """The console this ``up`` deploys: from the keys file if given, else the running one kept
    (on ``--ssh-port`` if given), else none."""
    if options.no_ssh_console:
        return None
    if keys is not None:
        port = options.ssh_port or (running.port if running else DEFAULT_SSH_PORT)
        # 8 hex digits: the name stays within Swarm's 64 characters for any stack name.
        return Console(digest(keys.encode())[:8], port, keys)
    if running:
        return Console(running.keys_version, options.ssh_port or running.port)
    if options.ssh_port is not None:
        raise StackInputError(
            f"--ssh-port: stack {options.name} runs no SSH console; add one with --ssh-console FILE"
        )
    return None


def console_plan_line(
    options: StackOptions, console: Console | None, running: Console | None
) -> str:
    if console is None:
        if running:
            return "removing the SSH console (--no-ssh-console)"
        return "no SSH console (add one with --ssh-console FILE)"
    secret = console.keys_secret(options.name)
    if console.keys is None:
        return f"keeping the SSH console: port {console.port}, keys from secret {secret}"
    return (
        f"SSH console: port {console.port}, keys from {options.ssh_console_keys} (secret {secret})"
    )


def console_from_spec(stack: str, spec: Mapping[str, object]) -> Console | None:
    """The keys version and port of a deployed console service's spec (None if it has no
    keys secret of the stack's, e.g. a hand-made service of another shape)."""
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    mounted = container.get("Secrets", []) if isinstance(container, dict) else []
    prefix = f"{stack}-{CONSOLE_KEYS}"
    versions = [
        s["SecretName"].removeprefix(prefix)
        for s in mounted
        if str(s.get("SecretName", "")).startswith(prefix)
    ]
    endpoint = spec.get("EndpointSpec", {})
    ports = endpoint.get("Ports", []) if isinstance(endpoint, dict) else []
    published = [int(p["PublishedPort"]) for p in ports if "PublishedPort" in p]
    if not versions:
        return None
    return Console(versions[0], published[0] if published else DEFAULT_SSH_PORT)
