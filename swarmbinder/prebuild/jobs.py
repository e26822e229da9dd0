"""Prebuilds as jobs on the swarm.

A prebuild can run on the swarm as a ``replicated-job`` service (:func:`start_job`): the
swarmbinder image running ``swarmbinder prebuild --json``, its config (or admin token) in a
Swarm secret, labelled ``swarmbinder.kind=prebuild``. Its exit code is the task's, so
``docker service ps`` shows whether it succeeded, and its log holds the progress as JSON lines
that :func:`follow_job` relays back. The admin API lists and removes these jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import OPTIONS, Config
from ..errors import SwarmbinderError
from ..jobspec import BindMount, JobSpec, SecretMount
from ..labels import (
    DOCKER_SOCKET,
    KIND_PREBUILD,
    LABEL_CREATED,
    LABEL_KIND,
    LABEL_PREBUILD_JOB,
    LABEL_PREBUILD_SECRET,
    LABEL_PREBUILD_SPECS,
)
from ..swarm import SecretInfo, ServiceInfo, SwarmClient, TaskState

JOB_PREFIX = "swarmbinder-prebuild-"
#: Where a job finds its config file (or admin token): a Swarm secret, since both hold secrets.
JOB_SECRET_TARGET = "/run/secrets/swarmbinder-prebuild"
#: Finished prebuild jobs older than this are removed when the next job is started, so
#: scheduled runs do not pile up services (the latest ones stay for ``docker service ps``).
JOB_RETENTION_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class JobTarget:
    """What the job prebuilds against: a config (it drives the swarm) or a service URL."""

    config: Config | None = None
    url: str = ""
    token: str = ""


def job_config_yaml(config: Config) -> bytes:
    """The config for a job: the options that differ from their defaults, secrets included
    (it goes into a Swarm secret), with the engine reached through the mounted socket."""
    options: dict[str, Any] = {}
    plain = config.as_dict(mask_secrets=False)
    for name, option in OPTIONS.items():
        value = plain[option.section][option.attr] if option.nested else plain[name]
        default = option.default
        if value == (list(default) if isinstance(default, tuple) else default):
            continue
        if option.nested:
            options.setdefault(option.section, {})[option.attr] = value
        else:
            options[name] = value
    if _socket_path(config.builds.docker_host) is not None:
        options["docker_host"] = f"unix://{DOCKER_SOCKET}"
    return yaml.safe_dump(options, sort_keys=False).encode()


def _socket_path(docker_host: str | None) -> str | None:
    """The host's engine socket when the engine is reached through one (mounted into jobs)."""
    if not docker_host:
        return DOCKER_SOCKET
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://")
    return None


def job_spec(
    name: str,
    *,
    image: str,
    specs: Sequence[str],
    target: JobTarget,
    secret: SecretInfo,
    parallel: int = 0,
    network: str = "host",
    now: float | None = None,
) -> JobSpec:
    """The job's service: ``secret`` holds its config file (or the admin token)."""
    # Readable by the job's user only: it holds passwords and tokens.
    mount = SecretMount(secret.id, secret.name, JOB_SECRET_TARGET, mode=0o400)
    args = ["prebuild", "--json"]
    if target.config is not None:
        args += ["--config", mount.target]
        socket = _socket_path(target.config.builds.docker_host)
    else:
        args += ["--url", target.url, "--token-file", mount.target]
        socket = None
    if parallel:
        args += ["--parallel", str(parallel)]
    labels = {
        LABEL_KIND: KIND_PREBUILD,
        LABEL_PREBUILD_SPECS: str(len(specs)),
        LABEL_PREBUILD_SECRET: secret.name,
        LABEL_CREATED: f"{time.time() if now is None else now:.3f}",
    }
    return JobSpec(
        name=name,
        image=image,
        args=[*args, "--", *specs],
        labels=labels,
        env={"PYTHONUNBUFFERED": "1"},
        mounts=[BindMount(socket, DOCKER_SOCKET)] if socket else [],
        # Builds are services: only a manager's engine may create them.
        constraints=["node.role==manager"] if socket else [],
        networks=[network] if network else [],
        secrets=[mount],
    )


async def start_job(
    swarm: SwarmClient,
    *,
    image: str,
    specs: Sequence[str],
    target: JobTarget,
    parallel: int = 0,
    network: str = "host",
) -> ServiceInfo:
    """Create the prebuild job and the secret it reads; on failure neither is left behind."""
    name = JOB_PREFIX + secrets.token_hex(5)
    if target.config is not None:
        payload = job_config_yaml(target.config)
    else:
        payload = target.token.encode()
    labels = {LABEL_KIND: KIND_PREBUILD, LABEL_PREBUILD_JOB: name}
    info = await swarm.ensure_secret(name, payload, labels)
    spec = job_spec(
        name,
        image=image,
        specs=specs,
        target=target,
        secret=info,
        parallel=parallel,
        network=network,
    )
    try:
        return await swarm.create_job(spec)
    except BaseException:
        with contextlib.suppress(SwarmbinderError):
            await swarm.remove_secret(info.id)
        raise


async def remove_job(swarm: SwarmClient, name: str) -> bool:
    """Remove a prebuild job, its leftover container and its secret; False if it was gone."""
    service = await swarm.inspect_service(name)
    if service is None or service.labels.get(LABEL_KIND) != KIND_PREBUILD:
        return False
    await swarm.remove_service(service.id)
    secret = service.labels.get(LABEL_PREBUILD_SECRET, "")
    if secret:
        await swarm.remove_secret(secret)
    return True


@dataclass(frozen=True)
class JobStatus:
    """A prebuild job as ``docker service ps`` would show it, for listings."""

    name: str
    specs: int
    created: float
    state: str
    exit_code: int | None
    message: str

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "failed", "rejected", "shutdown", "orphaned")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "specs": self.specs,
            "created": self.created,
            "state": self.state,
            "exit_code": self.exit_code,
            "message": self.message,
        }


async def list_jobs(swarm: SwarmClient) -> list[JobStatus]:
    """Every prebuild job on the swarm, oldest first, with its task's state and exit code."""
    jobs = []
    for service in await swarm.list_services({LABEL_KIND: KIND_PREBUILD}):
        tasks = await swarm.tasks(service.name)
        task = tasks[-1] if tasks else None
        labels = service.labels
        jobs.append(
            JobStatus(
                name=service.name,
                specs=int(labels.get(LABEL_PREBUILD_SPECS, "0") or 0),
                created=float(labels.get(LABEL_CREATED, "0") or 0),
                state=task.state.value if task else "pending",
                exit_code=task.exit_code if task else None,
                message=(task.error or task.message) if task else "",
            )
        )
    return sorted(jobs, key=lambda job: job.created)


async def remove_old_jobs(
    swarm: SwarmClient, older_than: float = JOB_RETENTION_SECONDS, now: float | None = None
) -> list[str]:
    """Remove finished prebuild jobs created more than ``older_than`` seconds ago."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = []
    for job in await list_jobs(swarm):
        if job.finished and job.created < cutoff and await remove_job(swarm, job.name):
            removed.append(job.name)
    return removed


async def follow_job(
    swarm: SwarmClient,
    name: str,
    on_line: Callable[[dict[str, Any]], None],
    *,
    poll_interval: float = 0.5,
) -> tuple[TaskState, dict[str, Any] | None]:
    """Relay the job's JSON lines until its task ends; its final state and summary line.

    Swarm's log stream never ends after a job finishes, so it is read alongside the task
    state and closed once the task is over; the summary comes from a complete read of the
    log afterwards, so a summary the stream had not delivered yet is not missed.
    """

    async def relay() -> None:
        stream = swarm.follow_logs(name)
        try:
            async for line in stream:
                data = _json_line(line)
                if data is not None:
                    on_line(data)
        finally:
            await stream.aclose()

    reader = asyncio.create_task(relay(), name=f"logs-{name}")
    try:
        task = await swarm.wait_job(name, poll_interval=poll_interval)
        await asyncio.sleep(poll_interval)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, SwarmbinderError):
            await reader
    summary = None
    with contextlib.suppress(SwarmbinderError, TimeoutError):
        for line in await swarm.read_logs(name, max_seconds=10):
            data = _json_line(line)
            if data is not None and data.get("type") == "summary":
                summary = data
    return task, summary


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
