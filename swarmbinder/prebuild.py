"""Prebuilds: put repositories' images into the registry before anyone launches them.

``swarmbinder prebuild SPEC... | --file FILE`` runs :func:`run_prebuild` over one of two back
ends that share the rest of the service's machinery:

- :class:`SwarmBackend` drives the swarm itself from a config file: specs are resolved with
  :func:`~swarmbinder.resolve.resolve` (spec policy included), looked up in the registry, and
  built by a :class:`~swarmbinder.builds.BuildManager`, so a build of the same repo and ref that
  is already running (started by the service, say) is joined rather than repeated, and
  ``concurrent_build_limit`` queues the rest;
- :class:`ServiceBackend` asks a running swarmbinder: one ``/build/<spec>?build_only=true``
  stream per spec, with the admin token (allowed outside API-only mode), so the builds are
  the service's own and show in its admin console.

Every spec is resolved before anything is built: a spec that does not resolve is reported and
the others go on. Images already in the registry are skipped. The run succeeds only when every
image is in the registry.

A prebuild can also run on the swarm as a ``replicated-job`` service (:func:`start_job`):
the swarmbinder image running this same command with ``--json``, its config (or admin token)
in a Swarm secret, labelled ``swarmbinder.kind=prebuild``. Its exit code is the task's, so
``docker service ps`` shows whether it succeeded, and its log holds the progress as JSON lines
that :func:`follow_job` turns back into the live display.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import unquote

import aiohttp
import yaml
from yarl import URL

from .builds import KIND_LABEL, BuildManager, BuildSettings
from .config import OPTIONS, Config
from .errors import ConfigError, SpecError, SwarmbinderError
from .events import MSG_DONE_FOUND, BuildEvent, Phase, SSEDecoder
from .registry import RegistryClient
from .resolve import Resolved, policy_from_config, provider_session, providers_from_config, resolve
from .swarm import (
    BindMount,
    JobSpec,
    SecretInfo,
    SecretMount,
    ServiceInfo,
    SwarmClient,
    TaskState,
)

log = logging.getLogger(__name__)

KIND_PREBUILD = "prebuild"
JOB_PREFIX = "swarmbinder-prebuild-"
#: Where a job finds its config file (or admin token): a Swarm secret, since both hold secrets.
JOB_SECRET_TARGET = "/run/secrets/swarmbinder-prebuild"
DOCKER_SOCKET = "/var/run/docker.sock"
#: Finished prebuild jobs older than this are removed when the next job is started, so
#: scheduled runs do not pile up services (the latest ones stay for ``docker service ps``).
JOB_RETENTION_SECONDS = 7 * 24 * 3600
#: Specs resolved at once: resolution is API calls or ``git ls-remote``, cheap but not free.
RESOLVE_CONCURRENCY = 8
#: A rate-limited ``/build`` (HTTP 429) is retried this often, waiting as Retry-After says.
RATE_LIMIT_RETRIES = 20
MAX_RETRY_WAIT = 60.0


# --- input ---------------------------------------------------------------------------------


def parse_spec_lines(text: str, source: str = "spec file") -> list[str]:
    """Specs from a file: one ``<provider>/<spec>`` per line, ``#`` starts a comment.

    A spec never holds a bare ``#`` (URLs in specs are percent-escaped), so the comment rule
    cannot cut one short. Raises SpecError naming the line of anything that is no spec.
    """
    specs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if " " in line or "/" not in line.strip("/"):
            raise SpecError(f"{source}, line {number}: {line!r} is not <provider>/<spec>")
        specs.append(line)
    return specs


def collect_specs(given: Iterable[str], from_file: Iterable[str] = ()) -> list[str]:
    """Specs from the command line then the file, each once, in order."""
    specs: list[str] = []
    for spec in [*given, *from_file]:
        spec = spec.strip().strip("/")
        if "/" not in spec:
            raise SpecError(f"{spec!r} is not <provider>/<spec>")
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise SpecError("no specs to prebuild: give <provider>/<spec> arguments or --file")
    return specs


# --- progress ------------------------------------------------------------------------------


class State(enum.StrEnum):
    """Where one spec is; the last four are results."""

    RESOLVING = "resolving"
    CHECKING = "checking"
    WAITING = "waiting"
    FETCHING = "fetching"
    BUILDING = "building"
    PUSHING = "pushing"
    BUILT = "built"
    FOUND = "found"
    FAILED = "failed"
    UNRESOLVED = "unresolved"


RESULTS = frozenset({State.BUILT, State.FOUND, State.FAILED, State.UNRESOLVED})
_BUILD_PHASES = {
    Phase.WAITING: State.WAITING,
    Phase.FETCHING: State.FETCHING,
    Phase.BUILDING: State.BUILDING,
    Phase.PUSHING: State.PUSHING,
}


@dataclass
class Item:
    """One spec's progress, updated in place as the prebuild goes."""

    spec: str
    state: State = State.RESOLVING
    image: str = ""
    #: The last line of build log (while building), or why it failed or did not resolve.
    detail: str = ""
    started: float = 0.0
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.state in RESULTS

    @property
    def ok(self) -> bool:
        return self.state in (State.BUILT, State.FOUND)

    def elapsed(self, now: float) -> float:
        return max((self.finished if self.finished is not None else now) - self.started, 0.0)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "state": self.state.value,
            "image": self.image,
            "detail": self.detail,
            "seconds": round(self.elapsed(now), 1),
        }

    def update_from_json(self, data: Mapping[str, Any], now: float) -> None:
        """Take over a state reported by a prebuild elsewhere (a job's JSON lines)."""
        try:
            self.state = State(str(data.get("state", self.state.value)))
        except ValueError:
            return
        self.image = str(data.get("image") or self.image)
        self.detail = str(data.get("detail") or "")
        seconds = data.get("seconds")
        if isinstance(seconds, int | float):
            self.started = now - float(seconds)
        self.finished = now if self.done else None


@dataclass
class Report:
    items: list[Item]
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    @property
    def ok(self) -> bool:
        """Every image is in the registry."""
        return all(item.ok for item in self.items)

    def count(self, state: State) -> int:
        return sum(1 for item in self.items if item.state is state)

    def to_json(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "type": "summary",
            "ok": self.ok,
            **{state.value: self.count(state) for state in sorted(RESULTS)},
            "items": [item.to_json(now) for item in self.items],
        }


# --- the run -------------------------------------------------------------------------------


class Backend(Protocol):
    """Where specs are resolved and built."""

    async def resolve(self, spec: str) -> str | None:
        """The spec's image name; None when the back end resolves as it builds. Raises a
        SwarmbinderError (its user_message says why) when the spec does not resolve."""

    async def in_registry(self, image: str) -> bool: ...

    def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        """The build's events, ending with ``built`` or ``ready`` (image in the registry) or
        ``failed``. A ``failed`` with a 4xx status before any other event means the spec did
        not resolve."""
        ...


async def run_prebuild(
    items: Sequence[Item],
    backend: Backend,
    *,
    parallel: int = 0,
    on_change: Callable[[Item], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Resolve every item's spec, skip images in the registry, build the rest; ``parallel``
    > 0 caps builds in flight from this run (0: the build machinery's own limit decides).
    The items are updated in place (a display may hold them) and returned in the report."""
    now = clock()
    for item in items:
        item.started = now
    report = Report(list(items), clock)

    def changed(item: Item) -> None:
        if on_change is not None:
            on_change(item)

    def finish(item: Item, state: State, detail: str = "") -> None:
        item.state, item.detail, item.finished = state, detail.strip(), clock()
        changed(item)

    for item in items:
        changed(item)

    # 1. Resolve everything first: a typo is reported before minutes of building.
    limit = asyncio.Semaphore(RESOLVE_CONCURRENCY)

    async def resolve_one(item: Item) -> None:
        async with limit:
            try:
                image = await backend.resolve(item.spec)
            except SwarmbinderError as error:
                finish(item, State.UNRESOLVED, error.user_message)
                return
        item.image = image or ""
        if image:
            item.state = State.CHECKING
            changed(item)

    await asyncio.gather(*(resolve_one(item) for item in items))

    # 2. One build per image: two specs may name the same commit.
    groups: dict[str, list[Item]] = {}
    for item in items:
        if not item.done:
            groups.setdefault(item.image or item.spec, []).append(item)

    async def check(group: list[Item]) -> None:
        image = group[0].image
        if not image:
            return
        try:
            found = await backend.in_registry(image)
        except SwarmbinderError as error:
            for item in group:
                finish(item, State.FAILED, f"registry: {error.user_message}")
            return
        if found:
            for item in group:
                finish(item, State.FOUND)

    await asyncio.gather(*(check(group) for group in groups.values()))

    # 3. Build the rest, all requested at once unless parallel says otherwise.
    slots = asyncio.Semaphore(parallel) if parallel > 0 else None
    pending = [group for group in groups.values() if not group[0].done]

    async def build_group(group: list[Item]) -> None:
        async with slots if slots is not None else contextlib.nullcontext():
            await _build(backend, group, finish, changed)

    await asyncio.gather(*(build_group(group) for group in pending))
    return report


async def _build(
    backend: Backend,
    group: list[Item],
    finish: Callable[[Item, State, str], None],
    changed: Callable[[Item], None],
) -> None:
    lead = group[0]
    image = lead.image or None

    def update(state: State, detail: str | None = None, image: str | None = None) -> None:
        for item in group:
            item.state = state
            if detail is not None:
                item.detail = detail
            if image:
                item.image = image
            changed(item)

    def end(state: State, detail: str = "") -> None:
        for item in group:
            finish(item, state, detail)

    update(State.WAITING)
    progressed = False
    result: State | None = None
    detail = ""
    try:
        stream = backend.build(lead.spec, image)
        try:
            async for event in stream:
                line = _last_line(event.message)
                if event.phase is Phase.FAILED:
                    status = event.fields.get("status_code")
                    # Refusals of the request itself (login, rate limit) are no verdict on
                    # the spec; other 4xx before anything else are (parse, provider, ban, ref).
                    early = not progressed and isinstance(status, int) and 400 <= status < 500
                    spec_refused = early and status not in (401, 403, 429)
                    result = State.UNRESOLVED if spec_refused else State.FAILED
                    detail = line
                    break
                if event.phase in (Phase.BUILT, Phase.READY):
                    found = event.phase is Phase.READY and event.message == MSG_DONE_FOUND
                    result = State.FOUND if found else State.BUILT
                    update(result, "", str(event.fields.get("imageName") or ""))
                    break
                # A service sends its first event once the spec resolved; our own notice of
                # a rate limit comes before that.
                progressed = progressed or "rate_limited" not in event.fields
                # Lines without a phase (Docker's build output) belong to the current one.
                update(_BUILD_PHASES.get(event.phase, lead.state), line or None)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    except SwarmbinderError as error:
        result, detail = State.FAILED, error.user_message
    if result is None:
        result, detail = State.FAILED, "the build ended without a result"
    if result is State.BUILT and lead.image:
        try:
            pushed = await backend.in_registry(lead.image)
        except SwarmbinderError as error:
            pushed, detail = False, f"registry: {error.user_message}"
        if not pushed:
            result = State.FAILED
            detail = detail or f"the build ended but {lead.image} is not in the registry"
    end(result, detail)


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- back end: the swarm, directly ---------------------------------------------------------


class SwarmBackend:
    """Resolve with the config's providers and policy, look up with its registry, build with
    a BuildManager on its engine: what the service itself would do for a ``/build``."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        registry: RegistryClient,
        builds: BuildManager,
    ) -> None:
        self._config = config
        self._providers = providers_from_config(config, session)
        self._policy = policy_from_config(config)
        self._registry = registry
        self._builds = builds
        self._resolved: dict[str, Resolved] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[SwarmBackend]:
        if not config.registry.use_registry:
            raise ConfigError("use_registry", "prebuilding needs a registry to push images to")
        image_host = config.registry.image_prefix.split("/", 1)[0]
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            registry = RegistryClient(
                config.registry.registry_url or image_host,
                username=config.registry.registry_username,
                password=config.registry.registry_password,
                session=session,
                image_hosts=[image_host],
            )
            stack.push_async_callback(registry.aclose)
            swarm = await stack.enter_async_context(SwarmClient.connect(config.builds.docker_host))
            builds = BuildManager(swarm, BuildSettings.from_config(config))
            stack.push_async_callback(builds.close)
            # The specs' own requests go through a session held to allowed_outbound_networks.
            providers = await stack.enter_async_context(provider_session(config))
            yield cls(config, providers, registry, builds)
            # Built images' services have served their purpose; failed ones stay for a while
            # so `docker service logs` can still show what went wrong.
            with contextlib.suppress(SwarmbinderError):
                await builds.cleanup()

    async def resolve(self, spec: str) -> str:
        resolved = await resolve(
            spec,
            providers=self._providers,
            policy=self._policy,
            image_prefix=self._config.registry.image_prefix,
        )
        self._resolved[spec] = resolved
        return resolved.build.image

    async def in_registry(self, image: str) -> bool:
        name, _, tag = image.rpartition(":")
        return await self._registry.manifest_exists(name, tag)

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        yield BuildEvent.waiting()
        build = await self._builds.request(self._resolved[spec].build)
        async for event in build.events():
            yield event


# --- back end: a running swarmbinder -------------------------------------------------------


class ServiceBackend:
    """``/build/<spec>?build_only=true`` on a running swarmbinder, as an administrator."""

    def __init__(self, url: str, token: str, session: aiohttp.ClientSession) -> None:
        self._base = url.rstrip("/") + "/"
        self._token = token
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, token: str) -> AsyncIterator[ServiceBackend]:
        if not url.startswith(("http://", "https://")):
            raise SpecError(f"--url {url!r} is not an http:// or https:// URL")
        # Keepalives come every 20 s, so a minute of silence means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backend = cls(url, token, session)
            await backend._check()
            yield backend

    async def _check(self) -> None:
        """Fail once, clearly, when the URL is not a swarmbinder (rather than once per spec)."""
        url = self._base + "versions"
        try:
            async with self._session.get(url) as response:
                body = await response.json(content_type=None) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise SwarmbinderError(f"cannot reach swarmbinder at {url}: {error}") from None
        if not isinstance(body, dict) or "binderhub" not in body:
            raise SwarmbinderError(f"{url} did not answer as a swarmbinder (/versions)")

    async def resolve(self, spec: str) -> None:
        return None  # the service resolves each spec at the start of its /build stream

    async def in_registry(self, image: str) -> bool:
        # Only asked after a build: the service sends ``ready`` once the image is pushed.
        return True

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        url = URL(f"{self._base}build/{spec}?build_only=true", encoded=True)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {self._token}"}
        for _attempt in range(RATE_LIMIT_RETRIES):
            try:
                async with self._session.get(url, headers=headers) as response:
                    if response.status == 429:
                        wait = _retry_after(response.headers.get("Retry-After"))
                        yield BuildEvent(
                            Phase.WAITING,
                            f"Rate limited; trying again in {wait:g} s\n",
                            {"rate_limited": wait},
                        )
                        await asyncio.sleep(wait)
                        continue
                    if not response.content_type.startswith("text/event-stream"):
                        raise SwarmbinderError(
                            f"{url} answered {response.status} {response.reason}"
                        )
                    decoder = SSEDecoder()
                    async for chunk in response.content.iter_any():
                        for payload in decoder.feed(chunk):
                            event = BuildEvent.from_wire(payload)
                            if event.phase is Phase.FAILED and "API only mode" in event.message:
                                raise SwarmbinderError(
                                    "the Binder refused build_only: is the admin token right?"
                                )
                            yield event
                            if event.phase in (Phase.READY, Phase.FAILED):
                                return
                    return
            except (aiohttp.ClientError, TimeoutError) as error:
                raise SwarmbinderError(f"the stream from {self._base} broke: {error}") from None
        raise SwarmbinderError(f"still rate limited after {RATE_LIMIT_RETRIES} attempts")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 1.0), MAX_RETRY_WAIT)
    except ValueError:
        return 5.0


# --- prebuild jobs on the swarm ------------------------------------------------------------


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
        KIND_LABEL: KIND_PREBUILD,
        "swarmbinder.prebuild.specs": str(len(specs)),
        "swarmbinder.prebuild.secret": secret.name,
        "swarmbinder.created": f"{time.time() if now is None else now:.3f}",
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
    labels = {KIND_LABEL: KIND_PREBUILD, "swarmbinder.prebuild.job": name}
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
    if service is None or service.labels.get(KIND_LABEL) != KIND_PREBUILD:
        return False
    await swarm.remove_service(service.id)
    secret = service.labels.get("swarmbinder.prebuild.secret", "")
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
    for service in await swarm.list_services({KIND_LABEL: KIND_PREBUILD}):
        tasks = await swarm.tasks(service.name)
        task = tasks[-1] if tasks else None
        labels = service.labels
        jobs.append(
            JobStatus(
                name=service.name,
                specs=int(labels.get("swarmbinder.prebuild.specs", "0") or 0),
                created=float(labels.get("swarmbinder.created", "0") or 0),
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


# --- display -------------------------------------------------------------------------------


def display_spec(spec: str) -> str:
    """A spec as people read it: escaped URLs unescaped."""
    return unquote(spec)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def progress_line(item: Item, now: float, width: int = 0) -> str:
    """``state  elapsed  spec  last log line (or reason)``, cut to ``width`` when given."""
    text = (
        f"{item.state.value:<10} {format_seconds(item.elapsed(now)):>7}  {display_spec(item.spec)}"
    )
    if item.detail:
        text += f"  {item.detail}"
    return text[: width - 1] if width > 1 and len(text) >= width else text


def summary_table(report: Report) -> str:
    now = report.clock()
    rows = [("SPEC", "RESULT", "TIME", "IMAGE / REASON")]
    for item in report.items:
        what = item.image if item.ok else item.detail or item.image
        rows.append(
            (display_spec(item.spec), item.state.value, format_seconds(item.elapsed(now)), what)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    ]
    parts = [
        f"{report.count(State.BUILT)} built",
        f"{report.count(State.FOUND)} already in the registry",
    ]
    if report.count(State.FAILED):
        parts.append(f"{report.count(State.FAILED)} failed")
    if report.count(State.UNRESOLVED):
        parts.append(f"{report.count(State.UNRESOLVED)} did not resolve")
    lines.append("")
    lines.append(", ".join(parts))
    return "\n".join(lines)


class Display(Protocol):
    def changed(self, item: Item) -> None: ...

    def refresh(self) -> None: ...

    def close(self, report: Report) -> None: ...


class LiveDisplay:
    """One line per spec, redrawn in place (a terminal)."""

    def __init__(self, items: Sequence[Item], out: TextIO, clock: Callable[[], float]) -> None:
        self._items = items
        self._out = out
        self._clock = clock
        self._drawn = 0

    def changed(self, item: Item) -> None:
        pass  # drawn at the next refresh: log lines may come far faster than anyone reads

    def refresh(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        now = self._clock()
        # Up to the first line drawn, then each line cleared and rewritten; lines are cut to
        # the width so none wraps and the count stays right.
        text = f"\x1b[{self._drawn}F" if self._drawn else ""
        for item in self._items:
            text += "\x1b[2K" + progress_line(item, now, width) + "\n"
        self._out.write(text)
        self._out.flush()
        self._drawn = len(self._items)

    def close(self, report: Report) -> None:
        self.refresh()
        print(file=self._out)
        print(summary_table(report), file=self._out, flush=True)


class PlainDisplay:
    """A line each time a spec changes state (a log file, CI), then the summary table."""

    def __init__(self, out: TextIO, clock: Callable[[], float]) -> None:
        self._out = out
        self._clock = clock
        self._shown: dict[str, State] = {}

    def changed(self, item: Item) -> None:
        if self._shown.get(item.spec) is item.state:
            return
        self._shown[item.spec] = item.state
        print(progress_line(item, self._clock()), file=self._out, flush=True)

    def refresh(self) -> None:
        pass

    def close(self, report: Report) -> None:
        print(file=self._out)
        print(summary_table(report), file=self._out, flush=True)


class JsonDisplay:
    """JSON lines for automation: ``{"type": "progress", ...}`` on every change of state (and
    at most every ``log_interval`` seconds for new log lines), then one ``summary`` object."""

    def __init__(self, out: TextIO, clock: Callable[[], float], log_interval: float = 1.0):
        self._out = out
        self._clock = clock
        self._log_interval = log_interval
        self._last: dict[str, tuple[State, float]] = {}

    def changed(self, item: Item) -> None:
        now = self._clock()
        last = self._last.get(item.spec)
        if last is not None and last[0] is item.state and now - last[1] < self._log_interval:
            return
        self._last[item.spec] = (item.state, now)
        print(json.dumps({"type": "progress", **item.to_json(now)}), file=self._out, flush=True)

    def refresh(self) -> None:
        pass

    def close(self, report: Report) -> None:
        print(json.dumps(report.to_json()), file=self._out, flush=True)


def make_display(
    items: Sequence[Item], *, as_json: bool, out: TextIO, clock: Callable[[], float]
) -> Display:
    if as_json:
        return JsonDisplay(out, clock)
    if out.isatty():
        return LiveDisplay(items, out, clock)
    return PlainDisplay(out, clock)


# --- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """``swarmbinder prebuild``'s parsed command line."""

    specs: Sequence[str]
    config: Config | None = None
    url: str = ""
    token: str = ""
    parallel: int = 0
    as_json: bool = False
    as_job: bool = False
    detach: bool = False
    job_image: str = ""
    job_network: str = ""


async def main(options: Options, out: TextIO = sys.stdout) -> int:
    """Exit code 0 when every image is in the registry."""
    if options.as_job:
        return await _main_job(options, out)
    clock = time.monotonic
    items = [Item(spec) for spec in options.specs]
    display = make_display(items, as_json=options.as_json, out=out, clock=clock)
    async with _refreshing(display):
        if options.url:
            async with ServiceBackend.open(options.url, options.token) as service:
                report = await run_prebuild(
                    items, service, parallel=options.parallel, on_change=display.changed
                )
        else:
            assert options.config is not None
            async with SwarmBackend.open(options.config) as swarm:
                report = await run_prebuild(
                    items, swarm, parallel=options.parallel, on_change=display.changed
                )
    display.close(report)
    return 0 if report.ok else 1


@contextlib.asynccontextmanager
async def _refreshing(display: Display, interval: float = 0.25) -> AsyncIterator[None]:
    """Redraw the display every ``interval`` seconds (elapsed times move on their own)."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            display.refresh()

    task = asyncio.create_task(tick(), name="prebuild-display")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _main_job(options: Options, out: TextIO) -> int:
    config = options.config
    if options.url:
        target = JobTarget(url=options.url, token=options.token)
    else:
        target = JobTarget(config=config)
    docker_host = config.builds.docker_host if config is not None else None
    network = options.job_network or (config.builds.build_network if config else "host")
    async with SwarmClient.connect(docker_host) as swarm:
        with contextlib.suppress(SwarmbinderError):
            await remove_old_jobs(swarm)
        service = await start_job(
            swarm,
            image=options.job_image,
            specs=options.specs,
            target=target,
            parallel=options.parallel,
            network=network,
        )
        if options.as_json:
            print(json.dumps({"type": "job", "name": service.name}), file=out, flush=True)
        if options.detach:
            if not options.as_json:
                print(
                    f"prebuild job {service.name} started (docker service ps {service.name})",
                    file=out,
                )
            return 0
        clock = time.monotonic
        items = [Item(spec, started=clock()) for spec in options.specs]
        by_spec = {item.spec: item for item in items}
        display = make_display(items, as_json=options.as_json, out=out, clock=clock)
        if not options.as_json:
            print(f"prebuild job {service.name} started", file=out, flush=True)

        def on_line(data: dict[str, Any]) -> None:
            item = by_spec.get(str(data.get("spec", "")))
            if data.get("type") == "progress" and item is not None:
                item.update_from_json(data, clock())
                display.changed(item)

        async with _refreshing(display):
            task, summary = await follow_job(swarm, service.name, on_line)
        report = Report(items, clock)
        for data in (summary or {}).get("items", []):
            if isinstance(data, dict) and str(data.get("spec")) in by_spec:
                by_spec[str(data["spec"])].update_from_json(data, clock())
        if summary is not None:
            display.close(report)
        code = task.exit_code if task.exit_code is not None else (0 if task.succeeded else 1)
        if not task.succeeded and summary is None:
            why = task.error or task.message or task.state.value
            print(f"prebuild job {service.name} failed: {why}", file=sys.stderr)
        if not options.as_json:
            print(f"prebuild job {service.name} ended with exit code {code}", file=out)
        return code if code in (0, 1, 2) else 1
