"""What is deployed now, as the engine reports it, and the wait until the stack is healthy;
and :func:`stack_command`, the frame of the commands that act on a deployed stack."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from .. import hostsetup as hs
from .console import console_from_spec
from .options import (
    CONSOLE_SERVICE,
    FRONT_SERVICE,
    INPUTS_LABEL,
    SERVICES,
    Console,
    Progress,
    StackError,
    StackOptions,
    Store,
)


@contextmanager
def stack_command(stack: str) -> Iterator[None]:
    """Refuse a bad stack name before anything runs, and turn the host's setup errors into
    the one-line :class:`StackError` the CLI prints."""
    StackOptions(name=stack).check()
    try:
        yield
    except hs.SetupError as exc:
        raise StackError(str(exc)) from None


def service_spec(name: str) -> dict[str, object] | None:
    proc = hs.run(["docker", "service", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    spec: dict[str, object] = json.loads(proc.stdout)[0]["Spec"]
    return spec


def running_tasks(service: str) -> list[str]:
    """The IDs of the service's tasks meant to be running (none if there is no such service)."""
    return hs.run(
        ["docker", "service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running"]
        + [service],
        check=False,
        timeout=30,
    ).stdout.split()


def deployed_console(stack: str) -> Console | None:
    spec = service_spec(f"{stack}_{CONSOLE_SERVICE}")
    return console_from_spec(stack, spec) if spec else None


def console_current(stack: str, console: Console) -> bool:
    """Whether a running task of the console service has ``console``'s keys and port. Right
    after a deploy the old task runs on for a moment: it would refuse the new keys."""
    tasks = running_tasks(f"{stack}_{CONSOLE_SERVICE}")
    if not tasks:
        return False
    inspect = hs.run(["docker", "inspect", "--format", "{{json .}}", *tasks], check=False)
    for line in inspect.stdout.splitlines():
        task = json.loads(line)
        status = task.get("Status", {})
        mounted = task.get("Spec", {}).get("ContainerSpec", {}).get("Secrets", [])
        published = status.get("PortStatus", {}).get("Ports", [])
        if (
            status.get("State") == "running"
            and console.keys_secret(stack) in {s.get("SecretName") for s in mounted}
            and console.port in {p.get("PublishedPort") for p in published}
        ):
            return True
    return False


def current_inputs(stack: str) -> str | None:
    spec = service_spec(f"{stack}_binder")
    labels = spec.get("Labels", {}) if spec else {}
    return labels.get(INPUTS_LABEL) if isinstance(labels, dict) else None


def deployed_ports(stack: str) -> dict[str, int]:
    """The published port of each of the stack's services that is deployed; Binder's is the
    front's in PostgreSQL mode."""
    ports: dict[str, int] = {}
    for service in ("binder", FRONT_SERVICE, "proxy", "registry"):
        spec = service_spec(f"{stack}_{service}")
        endpoint = spec.get("EndpointSpec", {}) if spec else {}
        for port in endpoint.get("Ports", []) if isinstance(endpoint, dict) else []:
            if "PublishedPort" in port:
                ports["binder" if service == FRONT_SERVICE else service] = int(
                    port["PublishedPort"]
                )
    return ports


def task_states(
    stack: str, services: tuple[str, ...] = SERVICES, replicas: Mapping[str, int] | None = None
) -> dict[str, str]:
    """service -> the state of its newest task that should be running ('' if none); a service
    with several ``replicas`` is running once that many of its tasks are."""
    proc = hs.run(
        [
            "docker",
            "stack",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}}\t{{.CurrentState}}",
            stack,
        ],
        check=False,
        timeout=30,
    )
    states = dict.fromkeys(services, "")
    running = dict.fromkeys(services, 0)
    for line in proc.stdout.splitlines():
        task, _, state = line.partition("\t")
        service = task.removeprefix(f"{stack}_").split(".")[0]
        if service in states:
            states[service] = state.split(" ")[0].lower()
            if states[service] == "running":
                running[service] += 1
    for service, wanted in (replicas or {}).items():
        if service in states and 0 < running[service] < wanted:
            states[service] = f"{running[service]}/{wanted} running"
    return states


def stack_converged(
    stack: str, services: tuple[str, ...] = SERVICES, replicas: Mapping[str, int] | None = None
) -> bool:
    states = task_states(stack, services, replicas)
    return all(state == "running" for state in states.values())


def _http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(2000).decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def wait_healthy(
    options: StackOptions,
    report: Progress,
    console: Console | None = None,
    store: Store | None = None,
) -> None:
    """Until every service runs (Swarm counts a task with a healthcheck as running once it is
    healthy; Binder's, as many as the ``store`` has replicas), the ``console``'s with its keys
    and port, Binder's /health says ok and the hub answers through the proxy."""
    store = store or Store()
    services = store.services + ((CONSOLE_SERVICE,) if console else ())
    replicas = {"binder": store.replicas}
    started = time.monotonic()
    # Published on the engine's host: this machine, or the manager DOCKER_HOST names.
    health = f"http://{options.engine_host}:{options.port}/health"
    hub = f"http://{options.engine_host}:{options.hub_port}/hub/api/"
    states: dict[str, str] = {}
    status, body = 0, ""
    while time.monotonic() - started < options.timeout:
        states = task_states(options.name, services, replicas)
        if console and states[CONSOLE_SERVICE] == "running":
            if not console_current(options.name, console):
                states[CONSOLE_SERVICE] = "updating"
        if all(s == "running" for s in states.values()):
            status, body = _http_status(health)
            if status == 200 and _http_status(hub)[0] == 200:
                report.step(f"the stack is healthy ({time.monotonic() - started:.0f} s)")
                return
        shown = ", ".join(f"{k} {v or 'pending'}" for k, v in states.items())
        report.status(f"waiting for the stack: {shown} ({time.monotonic() - started:.0f} s)")
        time.sleep(1)
    raise StackError(_unhealthy_message(options, services, states, status, body))


def _unhealthy_message(
    options: StackOptions,
    services: tuple[str, ...],
    states: Mapping[str, str],
    status: int,
    body: str,
) -> str:
    waited = f"within {options.timeout:.0f} s"
    stuck = [s for s in services if states.get(s) != "running"]
    if not stuck:
        # Every task runs but Binder says something is down: /health names it.
        try:
            down = [c["service"] for c in json.loads(body).get("checks", []) if not c.get("ok")]
        except (ValueError, AttributeError, TypeError):
            down = []
        what = f" (down: {', '.join(down)})" if down else f" (HTTP {status})" if status else ""
        where = f"{options.engine_host}:{options.port}"
        return f"Binder's /health at {where} was not ok {waited}{what}"
    service = f"{options.name}_{stuck[0]}"
    return f"service {service} did not become healthy {waited}; its last log lines: " + (
        last_log_lines(service) or "(none)"
    )


def last_log_lines(service: str, lines: int = 5) -> str:
    # A log call can hang on Swarm: always with a timeout.
    try:
        proc = hs.run(
            ["docker", "service", "logs", "--raw", "--no-trunc", "--tail", str(lines), service],
            check=False,
            timeout=20,
        )
    except hs.SetupError:
        return ""
    text = (proc.stdout + proc.stderr).splitlines()
    return " | ".join(line.strip() for line in text if line.strip())[-800:]
