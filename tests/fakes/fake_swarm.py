"""An in-memory Docker Swarm behind the methods of :class:`swarmbinder.swarm.SwarmClient` that
the build manager calls, so its rules can be tested in milliseconds.

Only what the engine does is faked. Objects are kept in the Engine API's own shapes (a
service's ``Spec`` is what ``JobSpec.to_api()`` sends, a task has ``Status.State``, a node
``Spec.Availability``) and handed out through the same ``from_api`` constructors
``swarm.py`` uses, so the records are the ones the real client returns. Like the engine:

* a service name is taken once: a second create raises ``ServiceNameConflict``;
* a job's task goes ``new`` -> ``pending``, and runs once a ready, active node satisfies its
  placement constraints (``node.id``, ``node.hostname``, ``node.role``, ``node.labels.*``, with
  ``==`` or ``!=``); until then it stays pending with Swarm's "no suitable node" error;
* an update starts a new job iteration: the old task is shut down with desired state
  ``remove`` (as Docker 20.10 does) and a new one is scheduled, in one tick: the transitions
  one operation makes share a timestamp, and tasks are listed in ID order, as the engine's
  store lists them (so the old task can come last);
* a node that goes down leaves its task reported ``running`` (Swarm does, for good);
* a secret is made once per name, cannot be removed while a service refers to it, and a
  service cannot refer to a secret that does not exist;
* a service's log is followed until the caller closes the stream: it never ends by itself.

The test script plays the builder and the operator: :meth:`FakeSwarm.feed_log` writes log
lines, :meth:`FakeSwarm.finish_task` ends the running task with an exit code,
:meth:`FakeSwarm.set_node` takes a node down or drains it, and ``answering = False`` makes the
engine stop answering. :meth:`FakeSwarm.until` waits for any of that (and for what the
manager asks of the engine) without sleeping; ``calls`` counts the API calls by method.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, cast

from swarmbinder.errors import ServiceNameConflict, SwarmRequestFailed, SwarmUnavailable
from swarmbinder.jobspec import JobSpec, SecretMount, secrets_api
from swarmbinder.loglines import LineSplitter, StreamProgress
from swarmbinder.swarm import (
    SUPERSEDED_DESIRED_STATES,
    NodeInfo,
    SecretInfo,
    ServiceInfo,
    SwarmClient,
    TaskState,
    TaskStateName,
    current_iteration,
)

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
#: Desired states of tasks the engine is done with.
SUPERSEDED = SUPERSEDED_DESIRED_STATES


def _engine_id(kind: str, name: str) -> str:
    """A 25-character ID, as Swarm gives its objects, derived from the name for readability."""
    return hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()[:25]


def _engine_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _labels_match(labels: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    return all(k in labels and (v is None or labels[k] == v) for k, v in wanted.items())


class FakeSwarm:
    """One swarm's services, tasks, nodes, secrets and service logs, in memory."""

    def __init__(
        self,
        nodes: Sequence[str] = ("node1",),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``nodes``: hostnames; the first is the manager. ``clock`` dates secrets (the
        manager spares young build logins), so give it the manager's clock."""
        self._clock = clock
        self._nodes: dict[str, dict[str, Any]] = {}
        self._services: dict[str, dict[str, Any]] = {}  # by name
        self._tasks: dict[str, list[dict[str, Any]]] = {}  # by service name, oldest first
        self._logs: dict[str, list[str]] = {}
        self._secrets: dict[str, dict[str, Any]] = {}  # by name
        self._secret_data: dict[str, bytes] = {}
        self._serial = itertools.count(1)
        #: The engine's clock for task timestamps: one tick per operation, so the transitions
        #: one operation makes share a timestamp, as the engine stamps them.
        self._tick = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._answering = True
        self.calls: Counter[str] = Counter()
        #: Names of removed services, in order, with the reaper image each removal was given.
        self.removed: list[tuple[str, str | None]] = []
        for index, hostname in enumerate(nodes):
            self.add_node(hostname, role="manager" if index == 0 else "worker")

    @property
    def answering(self) -> bool:
        """False: every call, and every open log stream, fails as an engine that does not
        answer (SwarmUnavailable)."""
        return self._answering

    @answering.setter
    def answering(self, value: bool) -> None:
        self._answering = value
        self._notify()

    def client(self) -> SwarmClient:
        """This fake where a SwarmClient is expected (it has the methods the callers use)."""
        return cast(SwarmClient, self)

    # -- the test script's side: builder, operator, observer ---------------------------------

    def add_node(
        self, hostname: str, *, role: str = "worker", labels: Mapping[str, str] | None = None
    ) -> str:
        self._tick += 1
        node_id = _engine_id("node", hostname)
        self._nodes[node_id] = {
            "ID": node_id,
            "Description": {"Hostname": hostname, "Resources": {"NanoCPUs": 2_000_000_000}},
            "Spec": {"Role": role, "Availability": "active", "Labels": dict(labels or {})},
            "Status": {"State": "ready", "Addr": f"10.0.0.{len(self._nodes) + 1}"},
        }
        self._schedule()
        return node_id

    def node_id(self, hostname: str) -> str:
        return next(i for i, n in self._nodes.items() if n["Description"]["Hostname"] == hostname)

    def set_node(
        self,
        hostname: str,
        *,
        state: str | None = None,
        availability: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Change a node as the engine would report it (``state``: ready/down/disconnected;
        ``availability``: active/pause/drain). Pending tasks are scheduled again; tasks on a
        node that went down stay as they were reported, as Swarm leaves them."""
        self._tick += 1
        node = self._nodes[self.node_id(hostname)]
        if state is not None:
            node["Status"]["State"] = state
        if availability is not None:
            node["Spec"]["Availability"] = availability
        if labels is not None:
            node["Spec"]["Labels"] = dict(labels)
        self._schedule()

    def feed_log(self, service_name: str, *lines: str) -> None:
        """The builder writes ``lines`` to its log (cut at the engine stream's line limit)."""
        self._tick += 1
        log = self._logs[service_name]
        for line in lines:
            splitter = LineSplitter()
            log.extend(splitter.feed(line + "\n"))
        self._notify()

    def finish_task(self, service_name: str, exit_code: int = 0) -> None:
        """The builder exits: its running task becomes ``complete`` (0) or ``failed``."""
        self._tick += 1
        task = self._current_task(service_name)
        if task["Status"]["State"] != TaskStateName.RUNNING:
            raise AssertionError(f"{service_name}'s task is {task['Status']['State']}, not running")
        status = task["Status"]
        status["ContainerStatus"]["ExitCode"] = exit_code
        if exit_code == 0:
            self._set_state(task, TaskStateName.COMPLETE, "finished")
        else:
            self._set_state(task, TaskStateName.FAILED, "started")
            status["Err"] = f"task: non-zero exit ({exit_code})"
        self._notify()

    def reject_task(self, service_name: str, error: str) -> None:
        """The node refuses the task (e.g. it cannot pull the image)."""
        self._tick += 1
        task = self._current_task(service_name)
        self._set_state(task, TaskStateName.REJECTED, "preparing")
        task["Status"]["Err"] = error
        self._notify()

    def task(self, service_name: str) -> TaskState | None:
        """The service's newest task, as ``SwarmClient.tasks`` would list it last."""
        tasks = self._tasks.get(service_name)
        return TaskState.from_api(tasks[-1]) if tasks else None

    def service_spec(self, service_name: str) -> dict[str, Any]:
        """The service's spec as ``docker service inspect`` shows it."""
        return copy.deepcopy(self._services[service_name]["Spec"])

    def has_service(self, service_name: str) -> bool:
        return service_name in self._services

    def node_records(self) -> list[NodeInfo]:
        return [NodeInfo.from_api(n) for n in self._nodes.values()]

    def services_labelled(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]:
        return [
            ServiceInfo.from_api(s)
            for s in self._services.values()
            if _labels_match(s["Spec"].get("Labels") or {}, labels)
        ]

    def secrets_labelled(self, labels: Mapping[str, str | None]) -> list[SecretInfo]:
        return [
            SecretInfo.from_api(s)
            for s in self._secrets.values()
            if _labels_match(s["Spec"]["Labels"], labels)
        ]

    def secret_data(self, name: str) -> bytes:
        """What a task that mounts the secret reads (the API never returns it)."""
        return self._secret_data[name]

    async def until(self, condition: Callable[[], bool], within: float = 5) -> None:
        """Wait until ``condition`` holds; it is checked whenever the swarm changes or is
        asked something."""
        async with asyncio.timeout(within):
            while not condition():
                await self._next_change()

    async def polled(self, method: str, times: int = 2, within: float = 5) -> None:
        """Wait until ``method`` has been called ``times`` more times (a poller's rounds)."""
        target = self.calls[method] + times
        await self.until(lambda: self.calls[method] >= target, within)

    # -- SwarmClient: engine and nodes ----------------------------------------------------

    async def info(self) -> Mapping[str, Any]:
        await self._answer("info", "GET info")
        manager = next(n for n in self._nodes.values() if n["Spec"]["Role"] == "manager")
        return {"Swarm": {"NodeID": manager["ID"]}}

    async def nodes(self) -> list[NodeInfo]:
        await self._answer("nodes", "GET nodes")
        return self.node_records()

    # -- SwarmClient: services ------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> ServiceInfo:
        await self._answer("create_job", "POST services/create")
        existing = self._services.get(spec.name)
        if existing is not None:
            raise ServiceNameConflict(spec.name, existing["ID"])
        body = copy.deepcopy(spec.to_api())
        template = body["TaskTemplate"]
        self._check_secrets("POST services/create", template["ContainerSpec"].get("Secrets", []))
        self._check_constraints("POST services/create", template.get("Placement", {}))
        now = self._clock()
        self._services[spec.name] = {
            "ID": _engine_id("service", spec.name),
            "Version": {"Index": next(self._serial)},
            "CreatedAt": _engine_time(now),
            "Spec": body,
        }
        self._tasks[spec.name] = []
        self._logs[spec.name] = []
        self._new_task(spec.name)
        return ServiceInfo.from_api(self._services[spec.name])

    async def inspect_service(self, name_or_id: str) -> ServiceInfo | None:
        await self._answer("inspect_service", f"GET services/{name_or_id}")
        raw = self._service(name_or_id)
        return ServiceInfo.from_api(raw) if raw is not None else None

    async def update_job(
        self,
        name_or_id: str,
        *,
        constraints: Sequence[str],
        labels: Mapping[str, str],
        secrets: Sequence[SecretMount] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        what = f"POST services/{name_or_id}/update"
        await self._answer("update_job", what)
        raw = self._service(name_or_id)
        if raw is None:
            raise SwarmRequestFailed(what, 404, f"service {name_or_id} not found")
        spec = copy.deepcopy(raw["Spec"])
        spec["Labels"] = dict(labels)
        template = spec.setdefault("TaskTemplate", {})
        template.setdefault("Placement", {})["Constraints"] = list(constraints)
        container = template.setdefault("ContainerSpec", {})
        if secrets is not None:
            container["Secrets"] = secrets_api(secrets)  # the body the real client sends
        if env is not None:
            container["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._check_secrets(what, container.get("Secrets", []))
        self._check_constraints(what, template["Placement"])
        raw["Spec"] = spec
        raw["Version"]["Index"] = next(self._serial)
        # A new job iteration: the engine (20.10) marks the old task for removal and shuts it
        # down, and makes a new one, in the same tick.
        name = spec["Name"]
        for task in self._tasks[name]:
            if task["DesiredState"] not in SUPERSEDED:
                task["DesiredState"] = "remove"
                if TaskStateName(task["Status"]["State"]) not in (
                    TaskStateName.COMPLETE,
                    TaskStateName.FAILED,
                    TaskStateName.REJECTED,
                ):
                    self._set_state(task, TaskStateName.SHUTDOWN, "shutdown")
        self._new_task(name)

    async def list_services(self, labels: Mapping[str, str | None]) -> list[ServiceInfo]:
        await self._answer("list_services", "GET services")
        return self.services_labelled(labels)

    async def remove_service(
        self,
        name_or_id: str,
        *,
        settle_seconds: float = 10,
        reaper_image: str | None = None,
    ) -> bool:
        await self._answer("remove_service", f"DELETE services/{name_or_id}")
        raw = self._service(name_or_id)
        if raw is None:
            return False
        name = raw["Spec"]["Name"]
        # Its tasks and their containers go with it; so does its log.
        del self._services[name]
        self._tasks.pop(name, None)
        self._logs.pop(name, None)
        self.removed.append((name, reaper_image))
        self._notify()
        return True

    # -- SwarmClient: secrets -------------------------------------------------------------

    async def find_secret(self, name: str) -> SecretInfo | None:
        await self._answer("find_secret", "GET secrets")
        raw = self._secrets.get(name)
        return SecretInfo.from_api(raw) if raw is not None else None

    async def list_secrets(self, labels: Mapping[str, str | None]) -> list[SecretInfo]:
        await self._answer("list_secrets", "GET secrets")
        return self.secrets_labelled(labels)

    async def ensure_secret(
        self, name: str, data: bytes, labels: Mapping[str, str] | None = None
    ) -> SecretInfo:
        await self._answer("ensure_secret", "POST secrets/create")
        existing = self._secrets.get(name)
        if existing is not None:
            return SecretInfo.from_api(existing)
        secret_id = _engine_id("secret", name)
        self._secrets[name] = {
            "ID": secret_id,
            "CreatedAt": _engine_time(self._clock()),
            "Spec": {"Name": name, "Labels": dict(labels or {})},
        }
        self._secret_data[name] = bytes(data)
        self._notify()
        # As the real client: a new secret's record carries no creation time.
        return SecretInfo(id=secret_id, name=name, labels=dict(labels or {}))

    async def remove_secret(self, name_or_id: str) -> bool:
        what = f"DELETE secrets/{name_or_id}"
        await self._answer("remove_secret", what)
        name = next((n for n, s in self._secrets.items() if name_or_id in (n, s["ID"])), None)
        if name is None:
            return False
        users = [
            s["Spec"]["Name"]
            for s in self._services.values()
            if any(
                m["SecretName"] == name
                for m in s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets", [])
            )
        ]
        if users:
            raise SwarmRequestFailed(
                what, 400, f"secret '{name}' is in use by the following service: {users[0]}"
            )
        del self._secrets[name]
        del self._secret_data[name]
        self._notify()
        return True

    # -- SwarmClient: tasks and logs ------------------------------------------------------

    async def tasks(self, service_name: str) -> list[TaskState]:
        await self._answer("tasks", "GET tasks")
        raw = self._service(service_name)
        listed = sorted(
            self._tasks.get(raw["Spec"]["Name"], []) if raw else [], key=lambda t: t["ID"]
        )
        # The engine's store lists by ID; SwarmClient.tasks keeps the current iteration.
        return current_iteration(TaskState.from_api(t) for t in listed)

    async def follow_logs(
        self,
        service_name: str,
        *,
        tail: int | str = "all",
        progress: StreamProgress | None = None,
    ) -> AsyncGenerator[str, None]:
        await self._answer("follow_logs", f"GET services/{service_name}/logs")
        log = self._logs.get(service_name)
        if log is None:
            raise SwarmRequestFailed(
                f"logs of {service_name}", 404, f"service {service_name} not found"
            )
        position = 0 if tail == "all" else max(len(log) - int(tail), 0)
        while True:
            while position < len(log):
                if progress is not None:
                    progress.received += len(log[position]) + 1
                yield log[position]
                position += 1

            while len(log) == position and self._logs.get(service_name) is log and self.answering:
                await self._next_change()
            if not self.answering:
                raise SwarmUnavailable(
                    f"the Docker engine did not answer (logs of {service_name}): connection reset"
                )
            if self._logs.get(service_name) is not log:
                return  # the service went away: the engine ends the stream

    async def read_logs(
        self, service_name: str, *, max_seconds: float = 15, tail: int | str = "all"
    ) -> list[str]:
        await self._answer("read_logs", f"GET services/{service_name}/logs")
        log = self._logs.get(service_name)
        if log is None:
            raise SwarmRequestFailed(
                f"logs of {service_name}", 404, f"service {service_name} not found"
            )
        start = 0 if tail == "all" else max(len(log) - int(tail), 0)
        return [line for line in log[start:] if line]

    # -- the engine's inside --------------------------------------------------------------

    async def _answer(self, method: str, what: str) -> None:
        """Every call is a round trip: other coroutines run meanwhile, as they would while a
        real request is on the wire, and an engine that is away does not answer."""
        self.calls[method] += 1
        self._tick += 1
        await asyncio.sleep(0)
        self._notify()
        if not self.answering:
            raise SwarmUnavailable(
                f"the Docker engine did not answer ({what}): connection refused",
                user_message="The Docker Swarm manager is not answering right now.",
            )

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _next_change(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _service(self, name_or_id: str) -> dict[str, Any] | None:
        raw = self._services.get(name_or_id)
        if raw is None:
            raw = next((s for s in self._services.values() if s["ID"] == name_or_id), None)
        return raw

    def _current_task(self, service_name: str) -> dict[str, Any]:
        tasks = [t for t in self._tasks[service_name] if t["DesiredState"] not in SUPERSEDED]
        if not tasks:
            raise AssertionError(f"{service_name} has no current task")
        return tasks[-1]

    def _new_task(self, service_name: str) -> None:
        serial = next(self._serial)
        task: dict[str, Any] = {
            "ID": _engine_id("task", f"{service_name}.{serial}"),
            "ServiceID": self._services[service_name]["ID"],
            "NodeID": "",
            # A job's task is meant to run to completion.
            "DesiredState": "complete",
            "Status": {"State": "", "Message": "", "ContainerStatus": {}},
        }
        self._set_state(task, TaskStateName.NEW, "created")
        self._tasks[service_name].append(task)
        self._set_state(task, TaskStateName.PENDING, "pending task scheduling")
        self._schedule()

    def _set_state(self, task: dict[str, Any], state: TaskStateName, message: str) -> None:
        status = task["Status"]
        status["State"] = state.value
        status["Message"] = message
        status["Timestamp"] = _engine_time(EPOCH.timestamp() + self._tick / 1000)
        self._notify()

    def _schedule(self) -> None:
        """Place every pending task on the first ready, active node its constraints allow."""
        for name, tasks in self._tasks.items():
            for task in tasks:
                if (
                    task["Status"]["State"] != TaskStateName.PENDING
                    or task["DesiredState"] in SUPERSEDED
                ):
                    continue
                placement = self._services[name]["Spec"]["TaskTemplate"].get("Placement", {})
                fits = [
                    node
                    for node in sorted(
                        self._nodes.values(), key=lambda n: n["Description"]["Hostname"]
                    )
                    if node["Status"]["State"] == "ready"
                    and node["Spec"]["Availability"] == "active"
                    and all(self._satisfies(node, c) for c in placement.get("Constraints", []))
                ]
                if not fits:
                    task["Status"]["Message"] = "pending task scheduling"
                    task["Status"]["Err"] = (
                        f"no suitable node (scheduling constraints not satisfied on "
                        f"{len(self._nodes)} node{'s' if len(self._nodes) != 1 else ''})"
                    )
                    continue
                task["NodeID"] = fits[0]["ID"]
                task["Status"].pop("Err", None)
                task["Status"]["ContainerStatus"] = {
                    "ContainerID": _engine_id("container", task["ID"])
                }
                self._set_state(task, TaskStateName.RUNNING, "started")

    @staticmethod
    def _constraint_parts(constraint: str) -> tuple[str, str, str]:
        for operator in ("==", "!="):
            key, sep, value = constraint.partition(operator)
            if sep:
                return key.strip(), operator, value.strip()
        raise ValueError(constraint)

    def _satisfies(self, node: dict[str, Any], constraint: str) -> bool:
        key, operator, value = self._constraint_parts(constraint)
        if key == "node.id":
            actual: str | None = node["ID"]
        elif key == "node.hostname":
            actual = node["Description"]["Hostname"]
        elif key == "node.role":
            actual = node["Spec"]["Role"]
        else:
            actual = node["Spec"]["Labels"].get(key.removeprefix("node.labels."))
        return (actual == value) == (operator == "==")

    def _check_constraints(self, what: str, placement: Mapping[str, Any]) -> None:
        for constraint in placement.get("Constraints", []):
            try:
                key, _, _ = self._constraint_parts(constraint)
            except ValueError:
                key = ""
            if key not in ("node.id", "node.hostname", "node.role") and not key.startswith(
                "node.labels."
            ):
                raise SwarmRequestFailed(what, 400, f"invalid constraint: {constraint!r}")

    def _check_secrets(self, what: str, mounts: Sequence[Mapping[str, Any]]) -> None:
        for mount in mounts:
            secret = self._secrets.get(mount["SecretName"])
            if secret is None or secret["ID"] != mount["SecretID"]:
                raise SwarmRequestFailed(what, 400, f"secret not found: {mount['SecretName']}")
