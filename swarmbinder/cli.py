"""The ``swarmbinder`` command: ``swarmbinder <command> [options]``.

Each subcommand is one function registered with :func:`command`; :func:`main` builds the parser
from the registry, so adding a command is one decorated function and, if it takes options, one
function adding its arguments.

Exit codes: 0 success; 1 a runtime failure reported by swarmbinder; 2 bad input (usage, config,
a port already in use). Every failure is one line on stderr, ``swarmbinder: error: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import platform
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import aiohttp
import yaml
from aiohttp import web

from . import __version__, stackcmd
from .app import config_secrets, create_app
from .config import Config, ignored_warning, load_config
from .errors import ConfigError, SpecError, SwarmbinderError, UsageError
from .logsetup import log_startup_notes, start_logging
from .scrub import DEFAULT_SCRUBBER, install_log_scrubbing
from .stackcmd import TerminalProgress as _TerminalProgress
from .stackcmd import stack_input_errors as _stack_input_errors
from .stackcmd import stack_name_argument as _stack_name_argument

PROG = "swarmbinder"
log = logging.getLogger("swarmbinder")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    description: str


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments,
    description: str = "",
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run(args) -> exit code`` as subcommand ``name``; ``help`` is one short line."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, run, arguments, description or help)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="BinderHub on Docker Swarm.")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        cmd.arguments(sub)
        sub.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, SpecError, UsageError) as e:
        # Bad input, whether a flag, a config value or a launch spec: one line, exit 2.
        return _fail(str(e), 2)
    except SwarmbinderError as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return 130
    return code


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $SWARMBINDER_CONFIG, else built-in defaults)",
    )


# --- serve ---------------------------------------------------------------------------------


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_argument(parser)
    parser.add_argument("--port", type=int, help="port to listen on (overrides option port)")
    parser.add_argument("--host", help="address to listen on (overrides option host)")


@command(
    "serve",
    "run the web service",
    _serve_arguments,
    "Run the swarmbinder web service until SIGTERM or SIGINT.",
)
def serve(args: argparse.Namespace) -> int:
    flags = {"port": args.port, "host": args.host}
    config = load_config(args.config, os.environ, {k: v for k, v in flags.items() if v is not None})
    start_logging(config.server)
    # Held for the whole process, not only while the app runs: its shutdown logs too.
    DEFAULT_SCRUBBER.update(config_secrets(config))
    install_log_scrubbing(DEFAULT_SCRUBBER)
    log_startup_notes(config)
    asyncio.run(_serve(config))
    return 0


async def _serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly (aiohttp's graceful shutdown)."""
    host, port = config.server.host, config.server.port
    # Bind first: a taken port is one clear line, before the app connects to anything.
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise UsageError(_bind_problem(e, host, port)) from None
    runner = web.AppRunner(create_app(config))
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base = config.server.base_url
    log.info("swarmbinder %s serving on http://%s:%d%s", __version__, host, port, base)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _bind_problem(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use"
    if error.errno == errno.EACCES:
        return f"not allowed to listen on port {port} on {host}"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


# --- check-config, show-config, version -----------------------------------------------------


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="YAML config file to check")


@command(
    "check-config",
    "check a config file",
    _check_config_arguments,
    "Check a config file on its own: SWARMBINDER_* variables are not applied. Prints "
    "'ok: FILE', or the first problem found and exits with code 2.",
)
def check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file, env={})
    if config.ignored_binderhub_options:
        print(f"warning: {ignored_warning(config.ignored_binderhub_options)}", file=sys.stderr)
    print(f"ok: {args.file}")
    return 0


def _show_config_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


@command(
    "show-config",
    "print the effective config, secrets masked",
    _show_config_arguments,
    "Print the effective config (defaults, then the file, then SWARMBINDER_* variables) in the "
    "config file's layout, with every secret that is set shown as ***.",
)
def show_config(args: argparse.Namespace) -> int:
    options = load_config(args.config, os.environ).as_dict(mask_secrets=True)
    if args.json:
        print(json.dumps(options, indent=2))
    else:
        print(yaml.safe_dump(options, sort_keys=False), end="")
    return 0


# --- build ---------------------------------------------------------------------------------


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_argument(parser)
    parser.add_argument("spec", metavar="PROVIDER/SPEC", help="e.g. gh/org/repo/main")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve and print the plan (ref, repo URL, image, service, node); create nothing",
    )


@command(
    "build",
    "build one repository's image on the swarm",
    _build_arguments,
    "Resolve PROVIDER/SPEC, then build its image with repo2docker as a one-shot Swarm service "
    "(joining a build of the same repo and ref that is already running) and print its events. "
    "Exits 0 when the image is in the registry.",
)
def build(args: argparse.Namespace) -> int:
    from .buildcmd import run_build

    config = load_config(args.config, os.environ)
    return asyncio.run(run_build(config, args.spec, as_json=args.json, dry_run=args.dry_run))


# --- prebuild ------------------------------------------------------------------------------


def _prebuild_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="*", metavar="PROVIDER/SPEC", help="e.g. gh/org/repo/main")
    parser.add_argument(
        "--file", metavar="FILE", help="more specs, one a line, # comments ('-': stdin)"
    )
    _add_config_argument(parser)
    parser.add_argument("--url", help="a running swarmbinder to build through, as its admin")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="its admin token, with --url (default: $SWARMBINDER_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines, then a summary object")
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="builds in flight at most (default 0: concurrent_build_limit's queue decides)",
    )
    parser.add_argument(
        "--as-job", action="store_true", help="run as a replicated-job service on the swarm"
    )
    parser.add_argument("--detach", action="store_true", help="with --as-job: do not wait")
    parser.add_argument(
        "--job-image",
        default=f"swarmbinder/swarmbinder:{__version__}",
        help="with --as-job: the swarmbinder image to run (default: %(default)s)",
    )
    parser.add_argument(
        "--job-network", help="with --as-job: its network (default: build_network, else host)"
    )


@command(
    "prebuild",
    "build images into the registry without launching anything",
    _prebuild_arguments,
    "Resolve every spec (reporting those that do not resolve), skip images already in the "
    "registry and build the rest, sharing builds that are already running, with one progress "
    "line per build and a summary table. Drives the swarm with the config, or a running "
    "swarmbinder with --url and its admin token. Exits 0 only when every image is in the "
    "registry.",
)
def prebuild(args: argparse.Namespace) -> int:
    from . import prebuildcmd

    if args.url and args.config:
        raise UsageError("give --url or --config, not both")
    if args.detach and not args.as_job:
        raise UsageError("--detach goes with --as-job")
    if args.parallel < 0:
        raise UsageError("--parallel must be 0 or more")
    from_file: list[str] = []
    if args.file:
        source = "stdin" if args.file == "-" else args.file
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {source}: {getattr(e, 'strerror', None) or e}") from None
        from_file = prebuildcmd.parse_spec_lines(text, source)
    token = ""
    if args.url:
        token = os.environ.get("SWARMBINDER_ADMIN_TOKEN", "")
        if args.token_file:
            try:
                token = Path(args.token_file).read_text().strip()
            except OSError as e:
                raise UsageError(f"cannot read {args.token_file}: {e.strerror or e}") from None
        if not token:
            raise UsageError("--url needs the admin token: --token-file or SWARMBINDER_ADMIN_TOKEN")
    options = prebuildcmd.Options(
        specs=prebuildcmd.collect_specs(args.specs, from_file),
        config=None if args.url else load_config(args.config, os.environ),
        url=args.url or "",
        token=token,
        parallel=args.parallel,
        as_json=args.json,
        as_job=args.as_job,
        detach=args.detach,
        job_image=args.job_image,
        job_network=args.job_network or "",
    )
    return asyncio.run(prebuildcmd.main(options))


@command("version", "print swarmbinder's version and Python's and aiohttp's")
def version(args: argparse.Namespace) -> int:
    print(f"swarmbinder {__version__}")
    print(f"Python {platform.python_version()}")
    print(f"aiohttp {aiohttp.__version__}")
    return 0


# --- up, down ------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a port number") from None


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    _stack_name_argument(parser)
    for flag, variable, default, what in (
        ("--port", "SWARMBINDER_PORT", 8585, "Binder's published port"),
        ("--hub-port", "SWARMBINDER_HUB_PORT", 8000, "the hub's published port"),
        ("--registry-port", "SWARMBINDER_REGISTRY_PORT", 5000, "the registry's published port"),
    ):
        parser.add_argument(flag, type=int, help=f"{what} (default: ${variable}, else {default})")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="Binder's config file, deployed as a Swarm config (default: stack/config/binder.yaml)",
    )
    parser.add_argument(
        "--base",
        choices=["auto", "dockerhub", "debootstrap"],
        default="auto",
        help="where base images come from (default: Docker Hub if it answers, else debootstrap)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for a healthy stack (300)"
    )
    parser.add_argument(
        "--state-node",
        metavar="NODE",
        help="the node (hostname or ID) that keeps the registry's images and the databases; "
        "moves them only while the stack is down (default: the node labelled for them, else "
        "this one)",
    )
    console = parser.add_mutually_exclusive_group()
    console.add_argument(
        "--ssh-console",
        metavar="AUTHORIZED_KEYS",
        help="also run the admin console over SSH for the public keys in this OpenSSH "
        "authorized_keys file (default: $SWARMBINDER_SSH_CONSOLE_KEYS; without either, a "
        "console the stack runs is kept as it is)",
    )
    console.add_argument(
        "--no-ssh-console", action="store_true", help="remove the SSH console from the stack"
    )
    parser.add_argument(
        "--ssh-port",
        type=int,
        default=None,
        help="the SSH console's published port (default: $SWARMBINDER_SSH_PORT, else the "
        "running console's, else 2222)",
    )
    from .stackctl import add_replica_arguments, add_tls_arguments  # next to their rules

    add_replica_arguments(parser)
    add_tls_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print only the URL")


@command(
    "up",
    "deploy (or update) the stack on this machine and print Binder's URL",
    _up_arguments,
    "Bring a local Binder up: the Docker engine (installed and started on Debian as root if "
    "none answers), a single-node swarm if the engine is in none, the images, the stack's "
    "secrets (made once, never overwritten), docker-stack.yml deployed, then a wait until "
    "Binder's /health is ok. Idempotent: a second run changes nothing and says so. With "
    "--ssh-console, the admin console over SSH (stack/ssh-console.yml) is deployed too; later "
    "runs keep it until --no-ssh-console. --replicas N: Binder replicas sharing PostgreSQL.",
)
def up(args: argparse.Namespace) -> int:
    from . import stackctl
    from .stackctl.access import console_command

    defaults = stackctl.StackOptions()
    keys = args.ssh_console
    if keys is None and not args.no_ssh_console:
        keys = os.environ.get("SWARMBINDER_SSH_CONSOLE_KEYS") or None
    ssh_port = args.ssh_port
    if ssh_port is None and not args.no_ssh_console and os.environ.get("SWARMBINDER_SSH_PORT"):
        ssh_port = _env_int("SWARMBINDER_SSH_PORT", stackctl.DEFAULT_SSH_PORT)
    options = stackctl.StackOptions(
        name=args.stack,
        port=args.port or _env_int("SWARMBINDER_PORT", defaults.port),
        hub_port=args.hub_port or _env_int("SWARMBINDER_HUB_PORT", defaults.hub_port),
        registry_port=args.registry_port
        or _env_int("SWARMBINDER_REGISTRY_PORT", defaults.registry_port),
        public_host=os.environ.get("SWARMBINDER_PUBLIC_HOST") or defaults.public_host,
        registry_host=os.environ.get("SWARMBINDER_REGISTRY_HOST") or defaults.registry_host,
        server_constraints=os.environ.get("SWARMBINDER_HUB_CONSTRAINTS", ""),
        config_file=Path(args.config) if args.config else defaults.config_file,
        base=args.base,
        state_node=args.state_node,
        timeout=args.timeout,
        ssh_console_keys=Path(keys) if keys else None,
        no_ssh_console=args.no_ssh_console,
        ssh_port=ssh_port,
        replicas=args.replicas,
        store=args.store,
    )
    progress = _TerminalProgress(args.quiet)
    with _stack_input_errors():
        result = stackctl.up(options, progress, tls=stackctl.tls_options(args))
    if result.changed:
        progress.step(f"stack {options.name} is up ({result.seconds:.0f} s)")
    else:
        progress.step(f"nothing changed: stack {options.name} is up to date")
    progress.step(f"open the admin console with: {console_command(options.name)}")
    print(f"Binder is running at {result.url}" if not args.quiet else result.url)
    return 0


def _down_arguments(parser: argparse.ArgumentParser) -> None:
    _stack_name_argument(parser)
    parser.add_argument(
        "--purge", action="store_true", help="also remove the stack's volumes and secrets"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


@command(
    "down",
    "remove the stack (volumes and secrets stay unless --purge)",
    _down_arguments,
    "Remove the stack (with its SSH console, if any), the user servers its hub started and the "
    "builds its Binder left. The registry's images, the hub's database and the secrets (the "
    "console's too) stay for the next 'up' unless --purge.",
)
def down(args: argparse.Namespace) -> int:
    from . import stackctl

    progress = _TerminalProgress(args.quiet)
    with _stack_input_errors():
        result = stackctl.down(args.stack, purge=args.purge, progress=progress)
    if result.removed_stack:
        progress.step(f"stack {args.stack} removed")
    else:
        progress.step(f"nothing to remove: no stack {args.stack}")
    return 0


@command(
    "secrets",
    "create the stack's secrets that do not exist yet (on a swarm manager)",
    _stack_name_argument,
    "Create the secrets docker-stack.yml needs that do not exist yet, with random values (the "
    "registry token issuer's key and certificate as a pair), as 'up' does; for a cluster "
    "deployed with 'docker stack deploy'. An existing secret is never changed. Prints the "
    "names created.",
)
def make_secrets(args: argparse.Namespace) -> int:
    from . import stackctl

    with _stack_input_errors():
        created = stackctl.make_secrets(args.stack)
    for name in created:
        print(f"created secret {name}")
    if not created:
        print(f"nothing to create: every secret of stack {args.stack} exists")
    return 0


# --- admin, admin-ssh: in stackcmd ---------------------------------------------------------

for _name, _help, _arguments, _run, _description in stackcmd.COMMANDS:
    command(_name, _help, _arguments, _description)(_run)
