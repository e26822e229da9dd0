"""The commands an operator runs next to a stack: ``admin`` (the console, for the stack this
manager runs or for any URL), ``admin-ssh`` (the console over SSH), ``backup`` and ``restore``
(the stack's state), and the progress display they share with ``up`` and ``down``.

Each command is ``(name, help, arguments, run, description)`` in :data:`COMMANDS`; :mod:`.cli`
registers them. The console (textual) and asyncssh are imported only by the command that runs
them, so the rest of swarmbinder never loads either.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

PROG = "swarmbinder"
log = logging.getLogger("swarmbinder")


class TerminalProgress:
    """Steps as lines on stderr; on a terminal the status of a long step is one line that
    updates in place, elsewhere (CI logs) it is printed every 15 s at most."""

    def __init__(self, quiet: bool = False) -> None:
        self._quiet = quiet
        self._tty = sys.stderr.isatty()
        self._status_shown = False
        self._last_status = 0.0

    def step(self, message: str) -> None:
        if self._quiet:
            return
        self._clear()
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    def status(self, message: str) -> None:
        if self._quiet:
            return
        if self._tty:
            print(f"\r\033[K{PROG}: {message}", end="", file=sys.stderr, flush=True)
            self._status_shown = True
        elif time.monotonic() - self._last_status >= 15:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)
            self._last_status = time.monotonic()

    def _clear(self) -> None:
        if self._status_shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self._status_shown = False


@contextmanager
def stack_input_errors() -> Iterator[None]:
    """A stack command asked for something impossible: bad input (exit 2), not a failure."""
    from . import stackctl

    try:
        yield
    except stackctl.StackInputError as e:
        raise UsageError(str(e)) from None


def stack_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack",
        default=os.environ.get("SWARMBINDER_STACK") or "swarmbinder",
        help="the stack's name (default: $SWARMBINDER_STACK, else swarmbinder)",
    )


# --- admin ---------------------------------------------------------------------------------


def _admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("SWARMBINDER_URL") or None,
        help="the service's base URL (default: $SWARMBINDER_URL, else the URL of the stack "
        "this swarm manager runs, with its admin token)",
    )
    parser.add_argument(
        "--stack",
        default=None,
        help="without --url: the stack to open when this swarm runs several (default: "
        "$SWARMBINDER_STACK, else the one stack deployed by 'swarmbinder up')",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the admin token (default: the stack's; with --url, "
        "$SWARMBINDER_ADMIN_TOKEN, else a prompt)",
    )


def read_admin_token(token_file: str | None) -> str:
    """The admin token from a file, the environment, or a prompt; never from the command
    line, where other users of the machine would see it in the process list."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read the token file {token_file}: {e.strerror}") from None
        if not token:
            raise UsageError(f"the token file {token_file} is empty")
        return token
    token = os.environ.get("SWARMBINDER_ADMIN_TOKEN", "").strip()
    if token:
        return token
    if not sys.stdin.isatty():
        raise UsageError("no admin token: use --token-file or set SWARMBINDER_ADMIN_TOKEN")
    import getpass

    token = getpass.getpass("Admin token: ").strip()
    if not token:
        raise UsageError("no admin token given")
    return token


def admin(args: argparse.Namespace) -> int:
    if args.url is None:
        from .stackctl.access import find_console

        # The stack's own token, read from its Swarm secret inside Binder's task: it stays
        # in this process's memory, out of its arguments, its output and the disk.
        with stack_input_errors():
            access = find_console(args.stack or os.environ.get("SWARMBINDER_STACK"))
        url = access.url
        token = read_admin_token(args.token_file) if args.token_file else access.token
    else:
        if args.stack:
            raise UsageError("give --url or --stack, not both")
        url = str(args.url)
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, not {url!r}")
        token = read_admin_token(args.token_file)
    # Imported here, and by name: the service itself never loads textual, and type checks of
    # the service do not reach into the console's package.
    console = importlib.import_module("swarmbinder_tui.app")
    console.run(url, token)
    return 0


# --- admin-ssh -----------------------------------------------------------------------------


def _admin_ssh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the swarmbinder service's base URL")
    parser.add_argument(
        "--token-file", metavar="FILE", required=True, help="file holding the admin token"
    )
    parser.add_argument(
        "--authorized-keys",
        metavar="FILE",
        required=True,
        help="public keys allowed in, in authorized_keys format (re-read at every login)",
    )
    parser.add_argument(
        "--host-key",
        metavar="FILE",
        required=True,
        help="the server's private host key (a new ed25519 key is written there if missing)",
    )
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=2222, help="port to listen on (2222)")
    parser.add_argument(
        "--max-sessions", type=int, default=8, help="consoles open at once, at most (8)"
    )


def admin_ssh(args: argparse.Namespace) -> int:
    url = str(args.url)
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, not {url!r}")
    if args.max_sessions < 1:
        raise UsageError("--max-sessions must be at least 1")
    token_file = os.path.abspath(args.token_file)
    read_admin_token(token_file)  # unreadable or empty: refuse now, not in every session
    # Imported here, not at the top: only this command needs asyncssh.
    from . import sshconsole

    options = sshconsole.ConsoleOptions(
        command=(sys.executable, "-m", PROG, "admin", "--url", url, "--token-file", token_file),
        authorized_keys=Path(args.authorized_keys),
        host_key=Path(args.host_key),
        listen=args.listen,
        port=args.port,
        max_sessions=args.max_sessions,
    )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = sshconsole.ConsoleServer(options)
        sock = sshconsole.bind(args.listen, args.port)
    except sshconsole.ConsoleSetupError as e:
        raise UsageError(str(e)) from None
    log.info("serving the admin console of %s", url)
    asyncio.run(sshconsole.serve(server, sock))
    return 0


# --- backup, restore -----------------------------------------------------------------------


def _state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the backup's directory")
    stack_name_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def backup(args: argparse.Namespace) -> int:
    from .stackctl.backup import backup as back_up

    progress = TerminalProgress(args.quiet)
    with stack_input_errors():
        result = back_up(args.stack, Path(args.directory), progress)
    size = sum(result.parts.values()) / 1e6
    progress.step(f"backed up stack {args.stack} into {result.directory} ({size:.1f} MB)")
    return 0


def restore(args: argparse.Namespace) -> int:
    from .stackctl.backup import restore as put_back

    progress = TerminalProgress(args.quiet)
    with stack_input_errors():
        parts = put_back(args.stack, Path(args.directory), progress)
    progress.step(f"restored {', '.join(parts)} into stack {args.stack}")
    return 0


Run = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]

#: (name, help, arguments, run, description), in the order ``--help`` lists them.
COMMANDS: list[tuple[str, str, Arguments, Run, str]] = [
    (
        "admin",
        "open the admin console (a terminal UI; works over ssh -t)",
        _admin_arguments,
        admin,
        "Open the live admin console: builds, launches and quotas, bans, nodes and the audit "
        "log. Without --url, on a manager of a stack deployed by 'swarmbinder up', of that "
        "stack (--stack picks one of several), with its admin token read from the stack's "
        "secret and never shown. With --url, of the service there; the token is read from "
        "--token-file, else SWARMBINDER_ADMIN_TOKEN, else asked for.",
    ),
    (
        "admin-ssh",
        "serve the admin console to SSH clients (no shell)",
        _admin_ssh_arguments,
        admin_ssh,
        "Run an SSH server whose every session is the admin console of the service at --url. "
        "Clients log in with a public key listed in --authorized-keys, under any user name; "
        "whatever command they ask for, they get the console, and nothing else: no shell, no "
        "sftp or scp, no forwarding. Sessions need a terminal (ssh -t). Runs until SIGTERM.",
    ),
    (
        "backup",
        "copy the stack's state (registry, hub database, Binder's store) into DIR",
        _state_arguments,
        backup,
        "On the node that keeps the stack's state, while it runs: the registry's volume, the "
        "hub's database and Binder's store (SQLite snapshots, or pg_dump in PostgreSQL mode) "
        "into DIR, a new or empty directory; the files are readable by their owner only.",
    ),
    (
        "restore",
        "put a backup from DIR into the running stack",
        _state_arguments,
        restore,
        "On the node that keeps the stack's state, after 'swarmbinder up' with the same store: "
        "stops the registry, the hub and Binder, puts the backup in DIR into their volumes "
        "(pg_restore in PostgreSQL mode), starts them again and waits until the stack is "
        "healthy. What the stack held before is replaced.",
    ),
]
