"""The Docker Swarm adapter: with its part :mod:`swarmbinder.swarmupdates`, the only module
that talks to aiodocker.

It returns frozen dataclasses, never raw mappings, copies every spec it is given (aiodocker
rewrites ``ContainerSpec.Env`` in place), and turns every transport or API failure into
:class:`~swarmbinder.errors.SwarmUnavailable` (the engine did not answer) or
:class:`~swarmbinder.errors.SwarmRequestFailed` (it answered no) at one choke point
(``EngineCalls``, in :mod:`swarmbinder.swarmupdates`).

Facts of Swarm this module works around (see the README's "Swarm notes"):

- ``GET /services/{id}/logs?follow=1`` never ends after a job's task finishes, so log
  followers are closed by their caller once the task state is terminal.
- containers of job tasks stay behind after the service is removed; ``remove_service``
  removes them by the ``com.docker.swarm.service.name`` label. The manager's API only sees its
  own node's containers, so on other nodes a short-lived reaper service does it (given an image
  with docker-py, such as the builder's): Swarm does remove the containers of an ordinary
  replicated service, the reaper included, when that service is removed.
- a long log line comes as 16 KiB frames with no newline between them, and a repository can
  make repo2docker write a line of any length: :class:`~swarmbinder.loglines.LineSplitter`
  joins them in linear time and cuts them.
- an update supersedes a job's task with desired state ``shutdown`` (``remove`` on 20.10),
  and its timestamp can tie with the new task's: :func:`current_iteration` leaves it out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime
import enum
import json
import logging
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
from aiodocker.multiplexed import multiplexed_result_stream

from .errors import ServiceNameConflict, SwarmRequestFailed
from .jobspec import (
    DEFAULT_LOG_ROTATION,
    JobSpec,
    LogRotation,
    SecretMount,
    VolumeMount,
    secrets_api,
)
from .labels import DOCKER_SOCKET, KIND_REAPER, LABEL_KIND
from .loglines import LineSplitter, StreamProgress
from .swarmupdates import SpecUpdates

log = logging.getLogger(__name__)

#: Removes the exited containers of the service named by argv[1] on its own node.
REAPER_SCRIPT = (
    "import sys, docker\n"
    "label = 'com.docker.swarm.service.name=' + sys.argv[1]\n"
    "for c in docker.from_env().containers.list(all=True, filters={'label': label}):\n"
    "    c.remove(force=True)\n"
)
#: How long a reaper may take; one that cannot start (its node went away) is removed.
REAPER_TIMEOUT = 30.0
#: Timeout for ordinary API calls; streaming calls (logs) have none and are closed by callers.
API_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)


class TaskStateName(enum.StrEnum):
    NEW = "new"
    ALLOCATED = "allocated"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    REMOVE = "remove"
    ORPHANED = "orphaned"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str) -> TaskStateName:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


TERMINAL_STATES = frozenset(
    {
        TaskStateName.COMPLETE,
        TaskStateName.SHUTDOWN,
        TaskStateName.FAILED,
        TaskStateName.REJECTED,
        TaskStateName.REMOVE,
        TaskStateName.ORPHANED,
    }
)


#: Desired states of an update's superseded tasks ("remove" on Docker 20.10): not this run's.
SUPERSEDED_DESIRED_STATES = ("shutdown", "remove")


@dataclass(frozen=True)
class TaskState:
    id: str
    service_id: str
    node_id: str
    state: TaskStateName
    desired_state: str
    message: str
    error: str
    exit_code: int | None
    container_id: str
    timestamp: str
    #: What the task reserves on its node (its service's reservations when it was made).
    reserved_cpus: float = 0.0
    reserved_memory: int = 0
    #: The task's environment as its spec gave it (``KEY=value``).
    env: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state is TaskStateName.COMPLETE and (self.exit_code or 0) == 0

    @property
    def superseded(self) -> bool:
        return self.desired_state in SUPERSEDED_DESIRED_STATES

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> TaskState:
        status = raw.get("Status") or {}
        container = status.get("ContainerStatus") or {}
        exit_code = container.get("ExitCode")
        reservations = ((raw.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
        return cls(
            id=str(raw.get("ID", "")),
            service_id=str(raw.get("ServiceID", "")),
            node_id=str(raw.get("NodeID", "")),
            state=TaskStateName.parse(str(status.get("State", "unknown"))),
            desired_state=str(raw.get("DesiredState", "")),
            message=str(status.get("Message", "")),
            error=str(status.get("Err", "")),
            exit_code=int(exit_code) if exit_code is not None else None,
            container_id=str(container.get("ContainerID", "")),
            timestamp=str(status.get("Timestamp", "")),
            reserved_cpus=int(reservations.get("NanoCPUs") or 0) / 1e9,
            reserved_memory=int(reservations.get("MemoryBytes") or 0),
            env=tuple((raw.get("Spec") or {}).get("ContainerSpec", {}).get("Env") or ()),
        )


def current_iteration(states: Iterable[TaskState]) -> list[TaskState]:
    """The current iteration's tasks, oldest first, even when a superseded one ties on time."""
    listed = list(states)
    current = [t for t in listed if not t.superseded] or listed
    return sorted(current, key=lambda t: t.timestamp)


@dataclass(frozen=True)
class ServiceInfo:
    id: str
    name: str
    labels: Mapping[str, str]
    image: str
    created_at: str
    constraints: tuple[str, ...]
    #: What its tasks reserve in all (each replica's reservation times the replicas).
    reserved_cpus: float = 0.0
    reserved_memory: int = 0
    #: The container's environment and named volumes.
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> ServiceInfo:
        spec = raw.get("Spec") or {}
        template = spec.get("TaskTemplate") or {}
        placement = template.get("Placement") or {}
        reservations = (template.get("Resources") or {}).get("Reservations") or {}
        container = template.get("ContainerSpec") or {}
        replicated = (spec.get("Mode") or {}).get("Replicated")
        replicas = int(replicated.get("Replicas", 1) or 0) if replicated is not None else 1
        return cls(
            id=str(raw.get("ID", "")),
            name=str(spec.get("Name", "")),
            labels=dict(spec.get("Labels") or {}),
            image=str(container.get("Image", "")),
            created_at=str(raw.get("CreatedAt", "")),
            constraints=tuple(placement.get("Constraints") or ()),
            reserved_cpus=int(reservations.get("NanoCPUs") or 0) / 1e9 * replicas,
            reserved_memory=int(reservations.get("MemoryBytes") or 0) * replicas,
            env=dict(e.partition("=")[::2] for e in container.get("Env") or ()),
            volumes=tuple(
                VolumeMount(str(m["Source"]), str(m["Target"]), bool(m.get("ReadOnly")))
                for m in container.get("Mounts") or ()
                if m.get("Type") == "volume" and m.get("Source")
            ),
        )


@dataclass(frozen=True)
class NodeInfo:
    id: str
    hostname: str
    role: str
    state: str
    availability: str
    labels: Mapping[str, str]
    addr: str
    #: The node's CPUs as the engine reports them.
    cpus: float = 0.0
    #: The node's memory in bytes as the engine reports it.
    memory: int = 0

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> NodeInfo:
        spec = raw.get("Spec") or {}
        status = raw.get("Status") or {}
        return cls(
            id=str(raw.get("ID", "")),
            hostname=str((raw.get("Description") or {}).get("Hostname", "")),
            role=str(spec.get("Role", "")),
            state=str(status.get("State", "unknown")),
            availability=str(spec.get("Availability", "")),
            labels=dict(spec.get("Labels") or {}),
            addr=str(status.get("Addr", "")),
            cpus=int(((raw.get("Description") or {}).get("Resources") or {}).get("NanoCPUs") or 0)
            / 1e9,
            memory=int(
                ((raw.get("Description") or {}).get("Resources") or {}).get("MemoryBytes") or 0
            ),
        )


@dataclass(frozen=True)
class SecretInfo:
    """A Swarm secret as the engine describes it; the engine never returns its data."""

    id: str
    name: str
    labels: Mapping[str, str]
    #: When the engine made it (epoch seconds); 0 when unknown.
    created: float = 0.0

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> SecretInfo:
        spec = raw.get("Spec") or {}
        return cls(
            id=str(raw.get("ID", "")),
            name=str(spec.get("Name", "")),
            labels=dict(spec.get("Labels") or {}),
            created=_engine_time(str(raw.get("CreatedAt", ""))),
        )

    def age(self, now: float) -> float:
        """Seconds since it was made; unknown counts as old."""
        return now - self.created if self.created else float("inf")


def _engine_time(value: str) -> float:
    """The engine's RFC 3339 time (nanoseconds and all) as epoch seconds; 0 if it does not parse."""
    try:
        return datetime.datetime.fromisoformat(value[:19]).replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return 0.0


class SwarmClient(SpecUpdates):
    """Typed access to the parts of the Engine API swarmbinder uses (the choke point and spec
    updates: see :mod:`swarmbinder.swarmupdates`)."""

    def __init__(
        self, docker: aiodocker.Docker, log_rotation: LogRotation = DEFAULT_LOG_ROTATION
    ) -> None:
        self._docker = docker
        self._log_rotation = log_rotation

    @classmethod
    def connect(
        cls, url: str | None = None, log_rotation: LogRotation = DEFAULT_LOG_ROTATION
    ) -> SwarmClient:
        """A client for ``url`` (else DOCKER_HOST, else the local socket); every service it
        creates logs through ``log_rotation``."""
        return cls(aiodocker.Docker(url=url, timeout=API_TIMEOUT), log_rotation)

    def _service_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as sent to ``services/create``: the one place every service we create
        passes, so none escapes log rotation."""
        body["TaskTemplate"]["LogDriver"] = self._log_rotation.to_api()
        return body

    async def close(self) -> None:
        await self._docker.close()

    async def __aenter__(self) -> SwarmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- engine ------------------------------------------------------------------------

    async def info(self) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self._json("info")
        return result

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo.from_api(n) for n in await self._json("nodes")]

    # -- services ----------------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> ServiceInfo:
        """Create the one-shot service; raise ServiceNameConflict if the name is taken.

        The name is the lock: two callers racing for one name both reach the engine, one
        wins, and the other learns it lost by finding the service under that name (Swarm
        reports the conflict as 409 or, on some versions, as a 500).
        """
        body = self._service_body(copy.deepcopy(spec.to_api()))
        try:
            created = await self._json("services/create", "POST", data=body)
        except SwarmRequestFailed as exc:
            existing = await self.inspect_service(spec.name)
            if existing is not None:
                raise ServiceNameConflict(spec.name, existing.id) from exc
            raise
        service = await self.inspect_service(str(created["ID"]))
        if service is None:  # removed between create and inspect
            raise SwarmRequestFailed(f"inspect service {spec.name}", 404, "vanished after create")
        return service

    async def inspect_service(self, name_or_id: str) -> ServiceInfo | None:
        try:
            raw = await self._json(f"services/{name_or_id}")
        except SwarmRequestFailed as exc:
            if exc.status == 404:
                return None
            raise
        return ServiceInfo.from_api(raw)

    async def update_job(
        self,
        name_or_id: str,
        *,
        constraints: Sequence[str],
        labels: Mapping[str, str],
        secrets: Sequence[SecretMount] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Replace a job service's placement constraints and labels (a new job iteration), and
        its secrets and environment when given."""
        raw = await self._json(f"services/{name_or_id}")
        spec = copy.deepcopy(raw["Spec"])
        spec["Labels"] = dict(labels)
        template = spec.setdefault("TaskTemplate", {})
        template.setdefault("Placement", {})["Constraints"] = list(constraints)
        container = template.setdefault("ContainerSpec", {})
        if secrets is not None:
            container["Secrets"] = secrets_api(secrets)
        if env is not None:
            container["Env"] = [f"{k}={v}" for k, v in env.items()]
        version = raw["Version"]["Index"]
        await self._json(
            f"services/{raw['ID']}/update", "POST", params={"version": str(version)}, data=spec
        )

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]:
        """Services carrying every label (value None: any value)."""
        wanted = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        raw = await self._json("services", params={"filters": json.dumps({"label": wanted})})
        return [ServiceInfo.from_api(s) for s in raw]

    async def remove_service(
        self,
        name_or_id: str,
        *,
        settle_seconds: float = 10,
        reaper_image: str | None = None,
    ) -> bool:
        """Remove the service and the containers its job tasks leave behind; False if absent.

        A task that was starting when the service went away can still produce (or finish) a
        container afterwards, so containers are reaped until a listing comes back empty twice
        in a row, for at most ``settle_seconds``. With ``reaper_image``, containers its tasks
        left on other ready nodes are removed there by a reaper service (see the module doc).
        """
        service = await self.inspect_service(name_or_id)
        if service is None:
            return False
        remote: set[str] = set()
        if reaper_image:
            local = str((await self.info()).get("Swarm", {}).get("NodeID", ""))
            ready = {n.id for n in await self.nodes() if n.state == "ready"}
            remote = {
                t.node_id
                for t in await self.tasks(service.name)
                if t.node_id and t.node_id != local and t.node_id in ready
            }
        try:
            await self._json(f"services/{service.id}", "DELETE")
        except SwarmRequestFailed as exc:
            if exc.status != 404:
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle_seconds
        empty_listings = 0
        while empty_listings < 2 and loop.time() < deadline:
            found = await self._service_containers(service.name)
            empty_listings = empty_listings + 1 if not found else 0
            for container_id in found:
                await self._remove_container(container_id)
            await asyncio.sleep(0.5)
        if remote and reaper_image:
            await asyncio.gather(
                *(self._reap_on(node, service.name, reaper_image) for node in sorted(remote))
            )
        return True

    async def _reap_on(self, node_id: str, service_name: str, image: str) -> None:
        """Remove ``service_name``'s containers on ``node_id`` with a one-replica service."""
        reaper = f"swarmbinder-reap-{node_id[:12]}-{service_name}"[:63].rstrip("-")
        body = {
            "Name": reaper,
            "Labels": {LABEL_KIND: KIND_REAPER},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": image,
                    "Command": ["python3", "-c", REAPER_SCRIPT, service_name],
                    "Mounts": [
                        {
                            "Type": "bind",
                            "Source": DOCKER_SOCKET,
                            "Target": DOCKER_SOCKET,
                        }
                    ],
                },
                "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
                "Placement": {"Constraints": [f"node.id=={node_id}"]},
            },
            "Mode": {"Replicated": {"Replicas": 1}},
        }
        try:
            await self._json("services/create", "POST", data=self._service_body(body))
        except SwarmRequestFailed as exc:
            if await self.inspect_service(reaper) is None:
                log.warning("could not reap %s on node %s: %s", service_name, node_id, exc)
                return
        try:
            async with asyncio.timeout(REAPER_TIMEOUT):
                await self.wait_job(reaper)
        except TimeoutError:
            log.warning("reaping %s on node %s did not finish in time", service_name, node_id)
        finally:
            with contextlib.suppress(SwarmRequestFailed):
                await self._json(f"services/{reaper}", "DELETE")

    async def remove_leftover_containers(self, service_name: str) -> int:
        """Remove every container of ``service_name`` (a job's exited containers stay)."""
        found = await self._service_containers(service_name)
        for container_id in found:
            await self._remove_container(container_id)
        return len(found)

    async def _service_containers(self, service_name: str) -> list[str]:
        filters = json.dumps({"label": [f"com.docker.swarm.service.name={service_name}"]})
        containers = await self._json("containers/json", params={"all": "1", "filters": filters})
        return [str(c["Id"]) for c in containers]

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self._json(
                f"containers/{container_id}", "DELETE", params={"force": "1", "v": "1"}
            )
        except SwarmRequestFailed as exc:
            if exc.status not in (404, 409):  # gone already, or removal in progress
                raise

    # -- secrets -----------------------------------------------------------------------

    async def find_secret(self, name: str) -> SecretInfo | None:
        """The secret called exactly ``name`` (the engine's name filter also matches prefixes)."""
        raw = await self._json("secrets", params={"filters": json.dumps({"name": [name]})})
        found = [SecretInfo.from_api(s) for s in raw]
        exact = [s for s in found if s.name == name]
        return exact[0] if exact else None

    async def list_secrets(self, labels: Mapping[str, str | None]) -> list[SecretInfo]:
        """Secrets carrying every label (value None: any value)."""
        wanted = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        raw = await self._json("secrets", params={"filters": json.dumps({"label": wanted})})
        return [SecretInfo.from_api(s) for s in raw]

    async def ensure_secret(
        self, name: str, data: bytes, labels: Mapping[str, str] | None = None
    ) -> SecretInfo:
        """The secret ``name``, created with ``data`` if it does not exist yet.

        Swarm secrets cannot be changed, so callers put a hash of ``data`` into ``name``: an
        existing secret of that name holds the same data and is reused. Two callers racing to
        create it both end with the one the engine kept. ``data`` never appears in an error.
        """
        existing = await self.find_secret(name)
        if existing is not None:
            return existing
        body = {
            "Name": name,
            "Labels": dict(labels or {}),
            "Data": base64.b64encode(data).decode("ascii"),
        }
        try:
            created = await self._json("secrets/create", "POST", data=body)
        except SwarmRequestFailed as exc:
            if exc.status != 409:
                raise
            # Lost the race to another creator: theirs holds the same data.
            raced = await self.find_secret(name)
            if raced is None:
                raise
            return raced
        return SecretInfo(id=str(created["ID"]), name=name, labels=dict(labels or {}))

    async def remove_secret(self, name_or_id: str) -> bool:
        """Remove the secret; False if it does not exist. A secret in use cannot be removed
        (SwarmRequestFailed with status 400)."""
        try:
            await self._json(f"secrets/{name_or_id}", "DELETE")
        except SwarmRequestFailed as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- tasks -------------------------------------------------------------------------

    async def tasks(self, service_name: str, *, every_iteration: bool = False) -> list[TaskState]:
        """The current iteration's tasks (see :func:`current_iteration`), or every task."""
        raw = await self._json("tasks", params={"filters": json.dumps({"service": [service_name]})})
        states = [TaskState.from_api(t) for t in raw]
        return (
            sorted(states, key=lambda t: t.timestamp)
            if every_iteration
            else current_iteration(states)
        )

    async def list_tasks(self, filters: Mapping[str, Sequence[str]]) -> list[TaskState]:
        """Every task matching the Engine API's task ``filters`` (``{"desired-state":
        ["running"]}``, ``{"service": [ids...]}``), in no particular order."""
        raw = await self._json(
            "tasks", params={"filters": json.dumps({k: list(v) for k, v in filters.items()})}
        )
        return [TaskState.from_api(t) for t in raw]

    async def wait_job(self, service_name: str, *, poll_interval: float = 0.25) -> TaskState:
        """Poll until the job's task reaches a terminal state (wrap in asyncio.timeout)."""
        while True:
            tasks = await self.tasks(service_name)
            done = [t for t in tasks if t.terminal]
            if done:
                return done[-1]
            await asyncio.sleep(poll_interval)

    # -- logs --------------------------------------------------------------------------

    async def follow_logs(
        self,
        service_name: str,
        *,
        tail: int | str = "all",
        progress: StreamProgress | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield the service's log lines as they come, stdout and stderr merged; ``progress``
        follows the text received, a line's part included.

        The stream does not end by itself when a job finishes; the caller closes it (aclose)
        once the task is terminal.
        """
        params = {
            "follow": "1",
            "stdout": "1",
            "stderr": "1",
            "tail": str(tail),
        }
        splitter = LineSplitter()
        async with self._translate(f"logs of {service_name}"):
            async with self._docker._query(
                f"services/{service_name}/logs", "GET", params=params, timeout=None
            ) as response:
                async for chunk in multiplexed_result_stream(response):  # type: ignore[no-untyped-call]
                    lines = splitter.feed(chunk)
                    if progress is not None:
                        progress.received += len(chunk)
                        progress.mid_line = splitter.mid_line
                    for line in lines:
                        yield line
        last = splitter.close()
        if last:
            yield last

    async def read_logs(
        self, service_name: str, *, max_seconds: float = 15, tail: int | str = "all"
    ) -> list[str]:
        """The log lines so far (all, or the last ``tail``), within max_seconds: a non-follow
        call has been seen to hang."""
        params = {"follow": "0", "stdout": "1", "stderr": "1", "tail": str(tail)}
        splitter = LineSplitter()
        lines: list[str] = []
        async with self._translate(f"logs of {service_name}"):
            async with asyncio.timeout(max_seconds):
                async with self._docker._query(
                    f"services/{service_name}/logs", "GET", params=params, timeout=None
                ) as response:
                    async for chunk in multiplexed_result_stream(response):  # type: ignore[no-untyped-call]
                        lines.extend(splitter.feed(chunk))
        lines.append(splitter.close())
        return [line for line in lines if line]
