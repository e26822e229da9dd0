"""``swarmbinder up``: engine, swarm, images, secrets, ``docker stack deploy`` and the wait
until the stack is healthy."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .. import __version__
from .. import hostsetup as hs
from .console import console_plan_line, plan_console, read_console_keys
from .credentials import ensure_console_secrets, ensure_secrets, remove_unused_console_keys
from .engine import Engine, current_engine, current_image, ensure_manager, port_in_use
from .inputs import binder_environment, changed_inputs, check_binder_config, stack_variables
from .options import (
    CONSOLE_SERVICE,
    POSTGRES_IMAGES,
    STACK_FILE,
    STACK_IMAGES,
    STATE_DIR,
    TLS_SERVICE,
    TRUST_SERVICE,
    Progress,
    Silent,
    StackError,
    StackInputError,
    StackOptions,
    TLSOptions,
    UpResult,
)
from .placement import apply_state_plan, plan_state, state_holder, swarm_nodes
from .registry_tls import ensure_local_ca, remove_local_ca, wait_trusted
from .replicas import (
    binder_store_environment,
    deployed_store,
    ensure_front_network,
    plan_store,
    remove_front_network,
    stack_files,
    store_inputs,
    store_plan_line,
    trusted_proxies,
)
from .state import current_inputs, deployed_console, deployed_ports, stack_converged, wait_healthy
from .tls import (
    TLSPlan,
    check_tls,
    check_tls_kept,
    check_tls_ports,
    deployed_tls_ports,
    ensure_tls_secrets,
    remove_unused_tls_secrets,
    tls_environment,
    tls_files,
    tls_inputs,
    wait_tls,
    write_caddyfile,
)

T = TypeVar("T")


def up(
    options: StackOptions, progress: Progress | None = None, tls: TLSOptions | None = None
) -> UpResult:
    """Bring the stack up (idempotent); raises StackError with one line on failure. ``tls``
    (``--tls`` and its options) replaces ``options.tls`` when given."""
    report = progress or Silent()
    started = time.monotonic()
    if tls is not None:
        options = dataclasses.replace(options, tls=tls)
    engine = current_engine()
    options = dataclasses.replace(options, engine_host=engine.host)
    options.check()
    plan = check_tls(options)  # None for --tls off, which options.tls then no longer says
    tls_off = options.tls is not None and plan is None
    options = dataclasses.replace(options, tls=plan.tls if plan else None)
    environment = {
        **binder_environment(options),
        **binder_store_environment(plan_store(options, None)),
        **tls_environment(options),
    }
    base_url = check_binder_config(options.config_file, environment)
    options = dataclasses.replace(options, base_url=base_url)
    keys = read_console_keys(options.ssh_console_keys) if options.ssh_console_keys else None
    try:
        return _up(options, engine, keys, report, started, plan, tls_off)
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def _up(
    options: StackOptions,
    engine: Engine,
    keys: str | None,
    report: Progress,
    started: float,
    tls: TLSPlan | None = None,
    tls_off: bool = False,
) -> UpResult:
    report.step("checking the Docker engine")
    hs.ensure_engine(report.step, STATE_DIR)
    node_id = ensure_manager(engine, report.step)
    deployed_as = deployed_store(options.name)
    # Checked before anything is made: a --state-node no node has is bad input.
    deployed_here = deployed_as is not None
    holder = state_holder(options.name) if deployed_here else None
    state = plan_state(
        options.name, swarm_nodes(), node_id, options.state_node, deployed_here, holder
    )
    report.step(state.line())
    store = plan_store(options, deployed_as)
    report.step(store_plan_line(store, deployed_as))
    deployed = deployed_ports(options.name)
    running_console = deployed_console(options.name)
    console = plan_console(options, keys, running_console)
    if running_console:
        deployed[CONSOLE_SERVICE] = running_console.port
    checked = [
        ("binder", options.port, "--port / SWARMBINDER_PORT"),
        ("proxy", options.hub_port, "--hub-port / SWARMBINDER_HUB_PORT"),
        ("registry", options.registry_port, "--registry-port / SWARMBINDER_REGISTRY_PORT"),
    ]
    if console:
        options.check_ports(console.port)  # a kept console's port against the new ones
        checked.append((CONSOLE_SERVICE, console.port, "--ssh-port / SWARMBINDER_SSH_PORT"))
    for service, port, variable in checked:
        # Our own running stack holds its ports; anything else holding one is a conflict.
        if deployed.get(service) != port and port_in_use(engine, port):
            raise StackInputError(
                f"port {port} on {engine.host} is already in use; choose another with {variable}"
            )
    deployed_tls = deployed_tls_ports(options.name)
    check_tls_kept(options.name, tls, deployed_tls is not None, tls_off)
    check_tls_ports(options, deployed_tls or set(), functools.partial(port_in_use, engine))

    report.step("checking the images")
    bases: hs.Bases | None = None
    image_ids: dict[str, str] = {}
    rebuilt: list[str] = []
    wanted = {*STACK_IMAGES, *(POSTGRES_IMAGES if store.postgres else ())}
    wanted |= {TLS_SERVICE} if tls else set()
    for spec in hs.project_images(__version__):
        if spec.name not in wanted:
            continue
        # Current on the engine: no build, and no base image needed (a seeded manager has none).
        if current := current_image(spec, engine):
            image_ids[spec.name] = current
            continue
        bases = bases or hs.ensure_bases(report.step, options.base)
        build = functools.partial(hs.build_image, spec, bases, report.step)
        built = _with_ticker(report, f"building {spec.tag}", build)
        if built.rebuilt:
            report.step(f"built {spec.tag} in {built.seconds:.0f} s")
            rebuilt.append(spec.name)
        image_ids[spec.name] = built.image_id

    created = ensure_secrets(options.name)
    if console:
        created += ensure_console_secrets(options.name, console)
    created += ensure_tls_secrets(options.name, tls)
    if tls and tls.tls.mode == "local":
        ca, made = ensure_local_ca(options.name)
        tls = dataclasses.replace(tls, ca=ca)
        created += made
    for name in created:
        report.step(f"created secret {name}")

    report.step(console_plan_line(options, console, running_console))
    front_subnet = ensure_front_network(options) if store.postgres or tls else ""
    extra = store_inputs(store, node_id, front_subnet, options.config_file, image_ids)
    if tls:
        caddyfile = write_caddyfile(options, tls, store.postgres)
        proxies = trusted_proxies(options.config_file, front_subnet)
        tls_extra = tls_inputs(
            options, tls, caddyfile, image_ids[TLS_SERVICE], proxies, image_ids["registry"]
        )
        extra = ({**extra[0], **tls_extra[0]}, {**extra[1], **tls_extra[1]})
    variables = stack_variables(options, image_ids, console, extra)
    services = store.services + ((CONSOLE_SERVICE,) if console else ())
    services += (TLS_SERVICE,) if tls else ()
    services += (TRUST_SERVICE,) if tls and tls.ca else ()
    deployed_inputs = current_inputs(options.name)
    reasons = changed_inputs(deployed_inputs, variables["SWARMBINDER_STACK_INPUTS"])
    if running_console and not console:
        # Also when the label never named it (a console deployed by hand).
        reasons = [r for r in reasons if not r.startswith("ssh-")] + ["ssh-console removed"]
    if deployed_inputs is None:
        reasons = ["not deployed"]
    elif not reasons and not stack_converged(options.name, services, {"binder": store.replicas}):
        reasons = ["a service is not running"]
    changed = bool(reasons)
    apply_state_plan(state)  # before the deploy: the state's services wait for the label
    if changed:
        report.step(f"deploying stack {options.name} ({', '.join(reasons)})")
        with tempfile.TemporaryDirectory(prefix="swarmbinder-stack-") as workdir:
            files = stack_files(store, console is not None, Path(workdir))
            files += tls_files(options, tls, Path(workdir))
            hs.run(
                [
                    "docker",
                    "stack",
                    "deploy",
                    *(arg for path in files for arg in ("--compose-file", str(path))),
                    # No registry has the project's images: use the engine's own.
                    "--resolve-image",
                    "never",
                    "--prune",
                    options.name,
                ],
                env={**_environ(), **variables},
                cwd=STACK_FILE.parent,
                timeout=300,
            )
        if not store.postgres and not tls:
            # Left by PostgreSQL mode: --prune removed the front, and with it the last user.
            remove_front_network(options)
    wait_healthy(options, report, console=console, store=store)
    root = wait_tls(options, tls, variables["SWARMBINDER_TLS_INPUTS"], report) if tls else None
    if tls and tls.ca:
        wait_trusted(options, report)
    if changed:
        for kind in ("binder", "hub", "tls"):
            prefix = f"{options.name}-{kind}-config-"
            current = variables.get(f"SWARMBINDER_{kind.upper()}_CONFIG_VERSION")
            hs.remove_unused_configs(prefix, keep=prefix + current if current else None)
        remove_unused_tls_secrets(options.name, tls)
        remove_local_ca(options.name, keep=tls.ca if tls else None)
        # Replaced keys (or a removed console): the old secret is used by nothing now.
        remove_unused_console_keys(
            options.name, keep=console.keys_secret(options.name) if console else None
        )
    if root:
        report.step(
            f"the local CA's root certificate is in {root}: trust it in your browser "
            "(or pass it as the CA bundle) to open Binder over HTTPS"
        )
    if console:
        report.step(
            f"the SSH console listens on port {console.port}: "
            f"ssh -t -p {console.port} admin@{options.public_host}"
        )
    return UpResult(
        url=options.url,
        changed=changed or bool(rebuilt) or bool(created),
        rebuilt=rebuilt,
        created_secrets=created,
        seconds=time.monotonic() - started,
        console=console,
        store=store,
        tls_root=root,
    )


def _environ() -> dict[str, str]:
    import os

    # The stack file's variables come from us only, never from a stray shell variable.
    return {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}


def _with_ticker(report: Progress, label: str, work: Callable[[], T]) -> T:
    """Run ``work`` while ``report.status`` shows ``label`` and the time so far, once a second;
    a quick call (an image that is up to date) shows nothing."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(1.0):
            report.status(f"{label} ({time.monotonic() - started:.0f} s)")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        return work()
    finally:
        done.set()
        ticker.join()
