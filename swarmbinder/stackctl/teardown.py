"""``swarmbinder down``: the stack, the user servers and builds it made, its network, and with
``purge`` its volumes, secrets and configs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from .. import hostsetup as hs
from ..labels import (
    KIND_BUILD,
    KIND_BUILD_AUTH,
    KIND_REGISTRY_AUTH,
    LABEL_HUB,
    LABEL_IMAGE,
    LABEL_KIND,
    LABEL_ROLE,
    ROLE_USER_SERVER,
)
from .credentials import console_secrets
from .options import (
    NAMESPACE_LABEL,
    POSTGRES_SECRETS,
    SECRETS,
    TOKEN_PAIR,
    DownResult,
    Progress,
    Silent,
    StackError,
    StackOptions,
)
from .placement import remove_state_label
from .registry_tls import remove_local_ca
from .state import service_spec, stack_command
from .tls import remove_tls_files, remove_unused_tls_secrets


def down(name: str, *, purge: bool = False, progress: Progress | None = None) -> DownResult:
    """Remove the stack and what its hub and Binder made; volumes and secrets stay unless
    ``purge``. Raises StackError with one line on failure."""
    with stack_command(name):
        return _down(name, purge, progress or Silent())


def _down(name: str, purge: bool, report: Progress) -> DownResult:
    if not hs.docker_answers():
        raise StackError(f"the Docker engine at {hs.docker_host()} does not answer")
    options = StackOptions(name=name)
    binder = service_spec(f"{name}_binder")
    prefix = _env_of(binder).get("SWARMBINDER_IMAGE_PREFIX", "") if binder else ""
    servers = _services_labelled({LABEL_ROLE: ROLE_USER_SERVER, LABEL_HUB: options.hub_id})
    if servers:
        report.step(f"removing {len(servers)} user server(s)")
        _remove_services(servers)
    builds = [
        s
        for s, labels in _services_with_labels({LABEL_KIND: KIND_BUILD}).items()
        if prefix and labels.get(LABEL_IMAGE, "").startswith(prefix)
    ]
    if builds:
        report.step(f"removing {len(builds)} build service(s)")
        _remove_services(builds)
    stack_services = _services_labelled({NAMESPACE_LABEL: name})
    if stack_services:
        report.step(f"removing stack {name}")
        hs.run(["docker", "stack", "rm", name], timeout=120)
    _wait_gone(name, servers + builds, report)
    result = DownResult(removed_stack=bool(stack_services), user_servers=len(servers))
    result.builds = len(builds)
    if purge:
        result.purged = _purge(name, report)
    for path in remove_tls_files(name, purge=purge):
        report.step(f"removed {path}")
    return result


def _env_of(spec: Mapping[str, object]) -> dict[str, str]:
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    env = container.get("Env", []) if isinstance(container, dict) else []
    return dict(item.partition("=")[::2] for item in env)


def _services_with_labels(labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
    cmd = ["docker", "service", "ls", "--format", "{{.Name}}"]
    for key, value in labels.items():
        cmd += ["--filter", f"label={key}={value}"]
    names = hs.run(cmd, timeout=30).stdout.split()
    if not names:
        return {}
    inspect = hs.run(
        [
            "docker",
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}}\t{{json .Spec.Labels}}",
            *names,
        ],
        check=False,
        timeout=30,
    )
    found: dict[str, dict[str, str]] = {}
    for line in inspect.stdout.splitlines():
        service, _, raw = line.partition("\t")
        found[service] = json.loads(raw) or {}
    return found


def _services_labelled(labels: Mapping[str, str]) -> list[str]:
    return sorted(_services_with_labels(labels))


def _remove_services(names: list[str]) -> None:
    hs.run(["docker", "service", "rm", *names], check=False, timeout=60)


def _wait_gone(name: str, extra_services: list[str], report: Progress, timeout: float = 90) -> None:
    """Until the stack's and those services' containers are gone, then remove the networks,
    which Docker keeps while any container is still attached to them."""
    options = StackOptions(name=name)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        # Stopped ones too: they hold the volumes until Swarm removes them.
        left = _containers({NAMESPACE_LABEL: name}, every=True)
        for service in extra_services:
            left += _containers({"com.docker.swarm.service.name": service})
        if not left:
            break
        report.status(
            f"waiting for {len(left)} container(s) to stop ({time.monotonic() - started:.0f} s)"
        )
        time.sleep(1)
    else:
        raise StackError(f"containers of stack {name} were still there after {timeout:.0f} s")
    # Job containers stay behind (Exited) after their service is removed.
    for service in extra_services:
        for container in _containers({"com.docker.swarm.service.name": service}, every=True):
            hs.run(["docker", "rm", "-f", container], check=False)
    # PostgreSQL mode's too: the front's is made by up, outside the stack.
    networks = (options.network, options.user_network, options.db_network, options.front_network)
    for network in networks:
        while time.monotonic() - started < timeout:
            inspect = hs.run(["docker", "network", "inspect", network], check=False)
            if inspect.returncode != 0:
                break
            if hs.run(["docker", "network", "rm", network], check=False).returncode == 0:
                break
            report.status(
                f"waiting to remove network {network} ({time.monotonic() - started:.0f} s)"
            )
            time.sleep(1)
        else:
            raise StackError(f"network {network} is still in use after {timeout:.0f} s")


def _containers(labels: Mapping[str, str], every: bool = False) -> list[str]:
    cmd = ["docker", "ps", "-q", *(["-a"] if every else [])]
    for key, value in labels.items():
        cmd += ["--filter", f"label={key}={value}"]
    return hs.run(cmd, timeout=30).stdout.split()


def _purge(name: str, report: Progress) -> list[str]:
    purged: list[str] = []
    volumes = hs.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={NAMESPACE_LABEL}={name}"], timeout=30
    ).stdout.split()
    for volume in volumes:
        for _ in range(20):  # busy until the last container using it is gone
            if hs.run(["docker", "volume", "rm", volume], check=False).returncode == 0:
                purged.append(volume)
                break
            time.sleep(0.5)
        else:
            raise StackError(f"volume {volume} is still in use; remove it with docker volume rm")
    label, elsewhere = remove_state_label(name)
    purged += [label] if label else []
    if elsewhere:
        report.step(elsewhere)
    made = (*SECRETS, *POSTGRES_SECRETS, *TOKEN_PAIR)
    for full in [f"{name}-{secret}" for secret in made] + console_secrets(name):
        if hs.run(["docker", "secret", "rm", full], check=False).returncode == 0:
            purged.append(full)
    # The builder's registry credentials, made by Binder as builds need them and named by
    # content, so the stack cannot tell its own: remove every one no service uses (the engine
    # refuses a secret in use); the next build that needs one makes it again.
    auth = [
        secret
        for kind in (KIND_REGISTRY_AUTH, KIND_BUILD_AUTH)
        for secret in hs.run(
            ["docker", "secret", "ls", "-q", "--filter", f"label={LABEL_KIND}={kind}"],
            timeout=30,
        ).stdout.split()
    ]
    unused = [s for s in auth if hs.run(["docker", "secret", "rm", s], check=False).returncode == 0]
    if unused:
        purged.append(f"{len(unused)} unused registry credentials secret(s)")
    purged += remove_unused_tls_secrets(name, None)
    purged += remove_local_ca(name)
    for kind in ("binder", "hub", "tls"):
        hs.remove_unused_configs(f"{name}-{kind}-config-")
    if purged:
        report.step(f"removed {', '.join(purged)}")
    return purged
