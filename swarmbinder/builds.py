"""Builds: repo2docker as one-shot Swarm services, shared by every request for the same image.

Swarm is the lock and the source of truth. A build's service name is a deterministic function
of (build slug, resolved ref), so concurrent requests for one repo and ref name the same
service: the first ``create`` wins and the others join it. Everything needed to pick a build
up again after a restart of swarmbinder is on the service as ``swarmbinder.*`` labels, and
queued builds are services too, held back by a placement constraint no node satisfies, so the
queue survives restarts and shows in ``docker service ls``.

Each build has exactly one watcher task, owned by the :class:`BuildManager`: it follows the
service's log on one engine stream, turns repo2docker's JSON lines into events, publishes them
to a :class:`~swarmbinder.fanout.Fanout` that every request watching the build subscribes to,
and decides success or failure from the task state and exit code.

When the engine stops answering, a watcher keeps trying for ``BuildSettings.engine_grace``
seconds (a restarting manager or a network blip should not fail a build), then fails the build
with a message that names the engine and stops. Its service cannot be removed while the engine
is away; the build stays in the manager, marked lost, and housekeeping removes the service at
the first round that reaches the engine again. A manager started later adopts the service like
any other and removes it once it has finished.

Registry credentials reach the builder as a Docker ``config.json`` in a Swarm secret, mounted
as a file and found through ``DOCKER_CONFIG``: docker-py (which repo2docker pushes with) reads
it and sends the credentials to the node's daemon. Service labels, env and args carry only the
secret's name and the directory. The builder reads the repository's files, and a repository can
make repo2docker quote a file it links to, so with a token issuer (``registry_token_key``) that
file holds a login of this build's own: it can push and pull only this build's image repository,
expires with ``build_max_age`` and is revoked when the build ends. Its secret is made for the
build and removed with its service. Without an issuer (a registry with static logins) the
configured login is mounted instead, and a repository that reads it can push anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Config
from .errors import (
    BuildFailed,
    ServiceNameConflict,
    SwarmbinderError,
    SwarmRequestFailed,
    SwarmUnavailable,
)
from .events import BuildEvent, Phase, parse_repo2docker_line
from .fanout import Fanout
from .naming import build_service_name
from .registrytokens import BuildCredential, TokenIssuer, image_repository, issuer_from_config
from .scrub import DEFAULT_SCRUBBER, Scrubber
from .sticky import BUILD_NODE_LABEL, Node, NodeAvailability, NodeState, parse_label, rank_nodes
from .swarm import (
    BindMount,
    JobSpec,
    NodeInfo,
    SecretMount,
    ServiceInfo,
    SwarmClient,
    TaskState,
    TaskStateName,
)

log = logging.getLogger(__name__)

LABEL_PREFIX = "swarmbinder."
KIND_LABEL = "swarmbinder.kind"
KIND_BUILD = "build"
#: A constraint no node satisfies: queued builds wait behind it until a slot is free.
QUEUED_CONSTRAINT = "node.labels.swarmbinder.queued==never"
DOCKER_SOCKET = "/var/run/docker.sock"
KIND_REGISTRY_AUTH = "registry-auth"
#: A build's own registry login (one image repository, short-lived), removed with its service.
KIND_BUILD_AUTH = "build-auth"
BUILD_AUTH_PREFIX = "swarmbinder-build-auth-"
#: The label naming the build service a build-auth secret belongs to.
BUILD_OF_LABEL = "swarmbinder.build"
#: The user name of a build's own registry login (not a secret: the password is an HMAC of it
#: under a key only the issuer has), so a restarted Binder can revoke it when the build ends.
LOGIN_LABEL = "swarmbinder.registry-login"
REGISTRY_AUTH_PREFIX = "swarmbinder-registry-auth-"
#: The builder's DOCKER_CONFIG: the registry credentials secret is mounted as config.json here.
BUILDER_DOCKER_CONFIG = "/etc/swarmbinder/docker"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
#: How often (seconds) a running build checks that the node it runs on is still up.
NODE_CHECK_INTERVAL = 1.0
#: How long a finished build's log must stay quiet before its result is published. It was
#: 0.2 s, then the largest part of the time from the builder's exit to ``built``
#: (bench/build.py).
LOG_DRAIN_QUIET = 0.05


class BuildStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class BuildRequest:
    """What to build: a resolved repository at an immutable ref, and the image to make."""

    provider: str
    spec: str
    repo_url: str
    ref: str
    build_slug: str
    image: str

    @property
    def service_name(self) -> str:
        # The image name is part of the hash: the same repo and ref built under another
        # image_prefix (another deployment, another registry) is another build.
        return build_service_name(self.build_slug, f"{self.ref}\n{self.image}")


@dataclass(frozen=True)
class BuildSettings:
    """The build options of the config, as the build manager needs them."""

    builder_image: str
    push: bool = True
    memory_limit: int = 0
    network: str = "host"
    appendix: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    sticky: bool = True
    max_age: float = 14400
    cleanup_interval: float = 60
    pending_timeout: float = 300
    concurrent_limit: int = 32
    log_tail_lines: int = 100
    #: Failed build services are kept this long so their log can be read with docker.
    keep_failed_for: float = 600
    extra_args: Sequence[str] = ()
    poll_interval: float = 0.25
    #: How long a watcher tolerates an engine that does not answer before failing the build.
    engine_grace: float = 30
    #: How long the node running a build may be reported down before the build is failed as
    #: lost: a busy node that misses a few heartbeats comes back and its build goes on.
    node_lost_grace: float = 10
    #: This deployment's image_prefix: only build services of images under it are adopted
    #: after a restart, so deployments sharing a swarm never take over each other's builds.
    #: Empty: adopt every build service.
    image_prefix: str = ""
    #: The registry's API URL; its host is given the credentials too (the image's host is).
    registry_url: str = ""
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    #: The registry's token issuer: each build gets a login of its own from it.
    issuer: TokenIssuer | None = field(default=None, repr=False, compare=False)
    #: Every secret the process knows; log lines are scrubbed as they are read, and each
    #: build's own login joins it while the build runs.
    scrubber: Scrubber = field(default=DEFAULT_SCRUBBER, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Config, issuer: TokenIssuer | None = None) -> BuildSettings:
        """``issuer``: the process's one issuer (it remembers revocations); made from the
        config when not given."""
        builds = config.builds
        registry = config.registry
        return cls(
            issuer=issuer if issuer is not None else issuer_from_config(registry),
            builder_image=builds.build_image,
            push=registry.use_registry,
            memory_limit=builds.build_memory_limit,
            network=builds.build_network,
            appendix=builds.appendix,
            node_selector=dict(builds.build_node_selector),
            sticky=builds.sticky_builds,
            max_age=builds.build_max_age,
            cleanup_interval=builds.build_cleanup_interval,
            pending_timeout=builds.build_pending_timeout,
            concurrent_limit=builds.concurrent_build_limit,
            log_tail_lines=builds.log_tail_lines,
            keep_failed_for=builds.build_keep_failed_for,
            image_prefix=registry.image_prefix,
            engine_grace=builds.build_engine_grace,
            node_lost_grace=builds.build_node_lost_grace,
            registry_url=registry.registry_url,
            registry_username=registry.registry_username,
            registry_password=registry.registry_password,
        )

    @property
    def has_registry_credentials(self) -> bool:
        return self.registry_username is not None and self.registry_password is not None


def repo2docker_args(request: BuildRequest, settings: BuildSettings) -> list[str]:
    """The builder's argv. Every value is attached to its option with ``=`` and the URL comes
    after ``--``, so a ref or URL can never be read as an option."""
    args = [
        f"--ref={request.ref}",
        f"--image-name={request.image}",
        "--no-clean",
        "--no-run",
        "--json-logs",
        "--user-name=jovyan",
        "--user-id=1000",
    ]
    if settings.appendix:
        args.append(f"--appendix={settings.appendix}")
    if settings.memory_limit:
        args.append(f"--build-memory-limit={settings.memory_limit}")
    if settings.push:
        args.append("--push")
    args.extend(settings.extra_args)
    args += ["--", request.repo_url]
    return args


def build_labels(
    request: BuildRequest, *, status: BuildStatus, node: str, now: float
) -> dict[str, str]:
    return {
        KIND_LABEL: KIND_BUILD,
        "swarmbinder.provider": request.provider,
        "swarmbinder.spec": request.spec,
        "swarmbinder.repo-url": request.repo_url,
        "swarmbinder.ref": request.ref,
        "swarmbinder.build-slug": request.build_slug,
        "swarmbinder.image": request.image,
        "swarmbinder.status": status.value,
        "swarmbinder.node": node,
        "swarmbinder.created": f"{now:.3f}",
    }


def request_from_labels(labels: Mapping[str, str]) -> BuildRequest:
    return BuildRequest(
        provider=labels.get("swarmbinder.provider", ""),
        spec=labels.get("swarmbinder.spec", ""),
        repo_url=labels.get("swarmbinder.repo-url", ""),
        ref=labels.get("swarmbinder.ref", ""),
        build_slug=labels.get("swarmbinder.build-slug", ""),
        image=labels.get("swarmbinder.image", ""),
    )


def image_registry_host(image: str) -> str:
    """The registry an image name points at, as docker reads it (config.json's auths key)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB_AUTH_KEY


def url_registry_host(url: str) -> str:
    """``host:port`` of a registry API URL (or a bare ``host:port``)."""
    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0]
    return DOCKER_HUB_AUTH_KEY if host in ("docker.io", "registry-1.docker.io") else host


def docker_config_json(hosts: Sequence[str], username: str, password: str) -> bytes:
    """A Docker client config.json giving ``username:password`` for each registry host."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return json.dumps(
        {"auths": {host: {"auth": auth} for host in sorted(set(hosts))}}, sort_keys=True
    ).encode()


def registry_auth_secret_name(content: bytes) -> str:
    """A content-addressed secret name: the same credentials give the same name.

    Anyone who can list secrets sees the name, so it comes from a deliberately slow hash: a
    plain sha256 would let them test password guesses against it quickly.
    """
    digest = hashlib.scrypt(content, salt=b"swarmbinder-registry-auth", n=2**14, r=8, p=1, dklen=8)
    return REGISTRY_AUTH_PREFIX + digest.hex()


class _StopBuild(BuildFailed):
    """The build must end now and its service be removed (overdue, or never placed)."""


def to_sticky_node(node: NodeInfo) -> Node:
    # States this version does not know count as not schedulable.
    states = {s.value: s for s in NodeState}
    availabilities = {a.value: a for a in NodeAvailability}
    return Node(
        id=node.id,
        hostname=node.hostname,
        state=states.get(node.state, NodeState.UNKNOWN),
        availability=availabilities.get(node.availability, NodeAvailability.PAUSE),
        labels=node.labels,
    )


def as_log_event(line: str) -> BuildEvent:
    """repo2docker's line as a log event for watchers. Its own ``failed`` lines are shown as
    build log: BinderHub's clients close the stream at the first ``failed``, and the one that
    ends a build must be ours, which carries the reason and the status code."""
    event = parse_repo2docker_line(line)
    if event.phase is Phase.FAILED:
        return BuildEvent.log(Phase.BUILDING, event.message)
    return event


def announces_push_of(event: BuildEvent, image: str) -> bool:
    """Is this repo2docker's last line of a build it pushed: ``Successfully pushed <image>``?

    repo2docker logs it once the registry has the image, and with ``--no-run`` does nothing
    after it. Output of the repository's own build steps cannot forge it: repo2docker logs those
    as the message of a ``building`` line, never as a line of its own.
    """
    return event.phase is Phase.PUSHING and event.message.strip() == f"Successfully pushed {image}"


class _Pushed(enum.Enum):
    """What :meth:`BuildManager._wait_terminal_or_pushed` returns when the log announced the
    push before Swarm reported the builder's end."""

    PUSHED = "pushed"


def failure_reason(lines: Sequence[str], task: TaskState | None) -> str:
    """Why a build failed, in words: repo2docker's own error, else the task's, else its code."""
    for line in lines:
        event = parse_repo2docker_line(line)
        if event.phase is Phase.FAILED and event.message.strip():
            return event.message.strip()
    if task is not None and task.error:
        return f"the build task failed: {task.error}"
    if task is not None and task.exit_code:
        tail = [ln for ln in lines if ln.strip()][-3:]
        detail = " | ".join(parse_repo2docker_line(ln).message.strip() for ln in tail)
        return f"repo2docker exited with code {task.exit_code}" + (f": {detail}" if detail else "")
    return "the build ended without a result"


class Build:
    """One build as this process sees it: a service, its watcher, and the events fan-out."""

    def __init__(
        self, request: BuildRequest, status: BuildStatus, *, tail_size: int, created: float
    ) -> None:
        self.request = request
        self.status = status
        self.created = created
        self.started: float | None = created if status is BuildStatus.RUNNING else None
        self.finished: float | None = None
        self.node = ""
        self.reason = ""
        #: Picked up from Swarm rather than created by this process (its log is replayed).
        self.adopted = False
        #: The engine stopped answering while it ran: remove its service as soon as it answers.
        self.lost = False
        #: Its own registry login (with a token issuer), revoked when it ends; after a
        #: restart only its user name is known (a label), which is all revoking needs.
        self.credential: BuildCredential | None = None
        self.login_username = ""
        #: Called as it ends, before any watcher hears of it.
        self.on_end: Callable[[Build], None] | None = None
        self.fanout: Fanout[BuildEvent] = Fanout(tail_size=max(tail_size, 1) + 8)
        self.done = asyncio.Event()

    @property
    def name(self) -> str:
        return self.request.service_name

    @property
    def image(self) -> str:
        return self.request.image

    def finish(self, status: BuildStatus, final: BuildEvent, reason: str = "") -> None:
        if self.done.is_set():
            return
        self.status = status
        self.reason = reason
        self.finished = time.time()
        if self.on_end is not None:
            self.on_end(self)
        self.fanout.finish(final)
        self.done.set()

    async def events(self) -> AsyncIterator[BuildEvent]:
        """The log tail, then live events, ending with ``built`` or ``failed``."""
        async with self.fanout.subscribe() as subscription:
            async for event in subscription:
                yield event


class BuildManager:
    """Starts, shares, queues, watches and cleans up builds. Owns every task it creates."""

    def __init__(
        self,
        swarm: SwarmClient,
        settings: BuildSettings,
        *,
        on_log_lines: Callable[[str, Sequence[str]], object] | None = None,
        on_finished: Callable[[Build], object] | None = None,
        on_started: Callable[[Build], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_started`` is called (synchronously, so it must not block) when a build is
        created, adopted from Swarm or moved from the queue to a node; ``on_log_lines`` with
        each batch of log lines as read; ``on_finished`` once a build has ended. A callback
        that raises is logged and never fails the build."""
        self._swarm = swarm
        self._settings = settings
        self._builds: dict[str, Build] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._queue: list[str] = []
        self._lock = asyncio.Lock()
        self._housekeeper: asyncio.Task[None] | None = None
        self._on_log_lines = on_log_lines
        self._on_finished = on_finished
        self._on_started = on_started
        self._clock = clock
        self._secret_names: dict[bytes, str] = {}
        self._closed = False
        self._build_label_in_use = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up builds from Swarm (after a restart), then start housekeeping."""
        await self.recover()
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="build-housekeeping")

    async def close(self) -> None:
        """Stop watching. Builds keep running in Swarm; a new manager picks them up."""
        self._closed = True
        tasks = [t for t in [self._housekeeper, *self._watchers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()

    async def recover(self) -> list[Build]:
        services = await self._swarm.list_services({KIND_LABEL: KIND_BUILD})
        recovered = []
        async with self._lock:
            for service in sorted(services, key=lambda s: s.labels.get("swarmbinder.created", "")):
                if service.name not in self._builds and self._is_ours(service):
                    recovered.append(self._adopt_locked(service))
            await self._promote_queued_locked()
        return recovered

    def _is_ours(self, service: ServiceInfo) -> bool:
        image = service.labels.get("swarmbinder.image", "")
        return image.startswith(self._settings.image_prefix)

    def _adopt_locked(self, service: ServiceInfo) -> Build:
        """Watch a build service this process did not create (a restart, another replica)."""
        labels = service.labels
        status = BuildStatus(labels.get("swarmbinder.status", "running"))
        build = Build(
            request_from_labels(labels),
            status,
            tail_size=self._settings.log_tail_lines,
            created=float(labels.get("swarmbinder.created", "0") or 0),
        )
        build.node = labels.get("swarmbinder.node", "")
        build.adopted = True
        build.login_username = labels.get(LOGIN_LABEL, "")
        build.on_end = self._revoke_login
        self._builds[service.name] = build
        self._notify_started(build)
        if status is BuildStatus.QUEUED and service.name not in self._queue:
            self._queue.append(service.name)
            build.fanout.publish(self._waiting_event(service.name))
        # A re-attached watcher replays the last log_tail_lines, as BinderHub does on attach.
        self._start_watcher(build, log_tail=self._settings.log_tail_lines)
        return build

    # -- requests ---------------------------------------------------------------------------

    def get(self, name: str) -> Build | None:
        return self._builds.get(name)

    @property
    def builds(self) -> list[Build]:
        return list(self._builds.values())

    def queue_position(self, name: str) -> int | None:
        return self._queue.index(name) + 1 if name in self._queue else None

    async def request(self, request: BuildRequest) -> Build:
        """The build for this request: the running or queued one, or a new one."""
        if self._closed:
            raise SwarmbinderError("the build manager is shut down")
        name = request.service_name
        async with self._lock:
            build = self._builds.get(name)
            if build is not None and build.status is BuildStatus.FAILED:
                # A new request retries a failed build, as BinderHub does. The old service
                # goes first; if the engine cannot remove it, the request fails and the build
                # stays known, so housekeeping still removes it later.
                await self._remove_service(name)
                await self._forget_locked(name, remove_service=False)
                build = None
            if build is not None:
                return build
            existing = await self._swarm.inspect_service(name)
            if existing is not None:
                # Started by another swarmbinder replica or before a restart.
                await self.recover_locked_one(existing.name)
                found = self._builds.get(name)
                if found is not None and found.status is not BuildStatus.FAILED:
                    return found
                await self._forget_locked(name, remove_service=True)
            return await self._create_locked(request)

    async def recover_locked_one(self, name: str) -> None:
        service = await self._swarm.inspect_service(name)
        if service is None:
            return
        build = self._adopt_locked(service)
        # A task that already failed must not be joined: the caller retries instead.
        tasks = await self._swarm.tasks(name)
        if tasks and tasks[-1].terminal and not tasks[-1].succeeded:
            build.status = BuildStatus.FAILED

    async def cancel(self, name: str, reason: str = "cancelled by an administrator") -> bool:
        async with self._lock:
            build = self._builds.get(name)
            if build is None:
                return await self._remove_service(name)
            build.finish(
                BuildStatus.CANCELLED, BuildEvent.failed(f"Build cancelled: {reason}\n"), reason
            )
            await self._forget_locked(name, remove_service=True)
            await self._promote_queued_locked()
            return True

    # -- internals --------------------------------------------------------------------------

    def _running_count(self) -> int:
        return sum(1 for b in self._builds.values() if b.status is BuildStatus.RUNNING)

    async def _create_locked(self, request: BuildRequest) -> Build:
        now = self._clock()
        queued = (
            self._settings.concurrent_limit > 0
            and self._running_count() >= self._settings.concurrent_limit
        )
        node = "" if queued else await self._choose_node(request)
        status = BuildStatus.QUEUED if queued else BuildStatus.RUNNING
        # A queued build gets its own login when it leaves the queue, so the login's lifetime
        # (build_max_age) counts from when it runs.
        secret, credential = await self._registry_login(request, own_login=not queued)
        spec = self._job_spec(
            request, status=status, node=node, now=now, secret=secret, login=credential
        )
        build = Build(request, status, tail_size=self._settings.log_tail_lines, created=now)
        build.node = node
        build.credential = credential
        build.login_username = credential.username if credential is not None else ""
        build.on_end = self._revoke_login
        try:
            await self._swarm.create_job(spec)
        except ServiceNameConflict:
            await self._discard_login(secret, credential)
            # Another replica created it between our inspect and create: join it.
            await self.recover_locked_one(request.service_name)
            return self._builds[request.service_name]
        except BaseException:
            # No half-made build: the login made for a service that does not exist goes too.
            await self._discard_login(secret, credential)
            raise
        self._builds[spec.name] = build
        if queued:
            self._queue.append(spec.name)
            build.fanout.publish(self._waiting_event(spec.name))
        self._notify_started(build)
        self._start_watcher(build, log_tail="all")
        return build

    def _registry_hosts(self, request: BuildRequest) -> list[str]:
        hosts = [image_registry_host(request.image)]
        if self._settings.registry_url:
            hosts.append(url_registry_host(self._settings.registry_url))
        return hosts

    async def _registry_login(
        self, request: BuildRequest, *, own_login: bool
    ) -> tuple[SecretMount | None, BuildCredential | None]:
        """The secret the builder pushes with: with a token issuer a login of the build's own
        (none yet unless ``own_login``), else the configured credentials; none to push
        without credentials."""
        settings = self._settings
        if not settings.push:
            return None, None
        if settings.issuer is not None:
            return await self._build_login(request) if own_login else (None, None)
        return await self._registry_secret(request), None

    async def _build_login(self, request: BuildRequest) -> tuple[SecretMount, BuildCredential]:
        """A new login that may push and pull only this build's image repository, until
        build_max_age from now, in a Swarm secret of its own."""
        assert self._settings.issuer is not None
        credential = self._settings.issuer.mint_build_credential(
            image_repository(request.image), valid_for=self._settings.max_age
        )
        self._settings.scrubber.add(credential.password)
        content = docker_config_json(
            self._registry_hosts(request), credential.username, credential.password
        )
        # The content holds a random nonce: a plain digest names it without telling anything.
        name = BUILD_AUTH_PREFIX + hashlib.sha256(content).hexdigest()[:32]
        labels = {KIND_LABEL: KIND_BUILD_AUTH, BUILD_OF_LABEL: request.service_name}
        try:
            info = await self._swarm.ensure_secret(name, content, labels)
        except SwarmbinderError as exc:
            self._settings.issuer.revoke(credential.username)
            self._settings.scrubber.discard(credential.password)
            raise BuildFailed(
                f"could not give the build its registry login: {exc}",
                user_message="Could not start the build: its registry login could not be "
                "stored in the swarm. Try again later.",
            ) from exc
        return SecretMount(info.id, info.name, f"{BUILDER_DOCKER_CONFIG}/config.json"), credential

    async def _discard_login(
        self, secret: SecretMount | None, credential: BuildCredential | None
    ) -> None:
        if credential is None or secret is None:
            return
        if self._settings.issuer is not None:
            self._settings.issuer.revoke(credential.username)
        self._settings.scrubber.discard(credential.password)
        with contextlib.suppress(SwarmbinderError):
            await self._swarm.remove_secret(secret.secret_id)

    def _revoke_login(self, build: Build) -> None:
        if build.login_username and self._settings.issuer is not None:
            self._settings.issuer.revoke(build.login_username)
        if build.credential is not None:
            # Revoked, it opens nothing; the scrubber's set stays the size of what is live.
            self._settings.scrubber.discard(build.credential.password)

    async def _remove_build_logins(self, service_name: str) -> None:
        """Remove the build logins of a removed build service; one a task still holds is left
        for :meth:`_sweep_build_logins`."""
        if self._settings.issuer is None:
            return
        labels = {KIND_LABEL: KIND_BUILD_AUTH, BUILD_OF_LABEL: service_name}
        for secret in await self._swarm.list_secrets(labels):
            try:
                await self._swarm.remove_secret(secret.id)
            except SwarmRequestFailed as exc:
                log.info("build login %s not removed yet: %s", secret.name, exc)

    async def _sweep_build_logins(self) -> list[str]:
        """Remove build logins whose build service is gone (removed while a task held the
        secret, or by another process). Young ones are spared: their service may be in the
        making by another replica."""
        if self._settings.issuer is None:
            return []
        logins = await self._swarm.list_secrets({KIND_LABEL: KIND_BUILD_AUTH})
        if not logins:
            return []
        services = {s.name for s in await self._swarm.list_services({KIND_LABEL: KIND_BUILD})}
        removed = []
        for secret in logins:
            owner = secret.labels.get(BUILD_OF_LABEL, "")
            if owner in services or owner in self._builds or secret.age(self._clock()) < 60:
                continue
            with contextlib.suppress(SwarmbinderError):
                if await self._swarm.remove_secret(secret.id):
                    removed.append(secret.name)
        return removed

    async def _registry_secret(self, request: BuildRequest) -> SecretMount | None:
        """The Swarm secret holding the builder's registry credentials, made on first use."""
        settings = self._settings
        if not settings.has_registry_credentials:
            return None
        assert settings.registry_username is not None and settings.registry_password is not None
        hosts = self._registry_hosts(request)
        content = docker_config_json(hosts, settings.registry_username, settings.registry_password)
        name = self._secret_names.get(content)
        if name is None:
            name = await asyncio.to_thread(registry_auth_secret_name, content)
            self._secret_names[content] = name
        info = await self._swarm.ensure_secret(name, content, {KIND_LABEL: KIND_REGISTRY_AUTH})
        return SecretMount(info.id, info.name, f"{BUILDER_DOCKER_CONFIG}/config.json")

    async def _remove_service(self, name: str) -> bool:
        # The builder image carries docker-py, which the reaper of job containers left on
        # other nodes needs.
        removed = await self._swarm.remove_service(name, reaper_image=self._settings.builder_image)
        await self._remove_build_logins(name)
        return removed

    def _notify_started(self, build: Build) -> None:
        if self._on_started is None:
            return
        try:
            self._on_started(build)
        except Exception:
            log.exception("the on_started callback failed for build %s", build.name)

    def _job_spec(
        self,
        request: BuildRequest,
        *,
        status: BuildStatus,
        node: str,
        now: float,
        secret: SecretMount | None = None,
        login: BuildCredential | None = None,
    ) -> JobSpec:
        constraints = [f"{k}=={v}" for k, v in self._settings.node_selector.items()]
        if self._build_label_in_use:
            key, value = parse_label(BUILD_NODE_LABEL)
            constraints.append(f"node.labels.{key}=={value}")
        if status is BuildStatus.QUEUED:
            constraints.append(QUEUED_CONSTRAINT)
        elif node:
            constraints.append(f"node.hostname=={node}")
        return JobSpec(
            name=request.service_name,
            image=self._settings.builder_image,
            args=repo2docker_args(request, self._settings),
            labels=build_labels(request, status=status, node=node, now=now)
            | ({LOGIN_LABEL: login.username} if login is not None else {}),
            mounts=[BindMount(DOCKER_SOCKET, DOCKER_SOCKET)],
            constraints=constraints,
            networks=[self._settings.network] if self._settings.network else [],
            memory_limit=self._settings.memory_limit or None,
            secrets=[secret] if secret is not None else [],
            env={"DOCKER_CONFIG": BUILDER_DOCKER_CONFIG} if secret is not None else {},
        )

    async def _choose_node(self, request: BuildRequest) -> str:
        """The sticky node for the repo: rendezvous rank over ready, active nodes."""
        if not self._settings.sticky:
            return ""
        nodes = [to_sticky_node(n) for n in await self._swarm.nodes()]
        # While any node carries the build label, builds are pinned to labelled nodes even
        # when none of them can take one now: the build then waits (and fails after
        # build_pending_timeout) rather than landing on a node the operator kept free.
        self._build_label_in_use = any(n.has_label(BUILD_NODE_LABEL) for n in nodes)
        required = {
            k.removeprefix("node.labels."): v
            for k, v in self._settings.node_selector.items()
            if k.startswith("node.labels.")
        }
        ranked = rank_nodes(request.repo_url, nodes, required_labels=required)
        return ranked[0].hostname if ranked else ""

    async def _promote_queued_locked(self) -> None:
        """Start queued builds, oldest first, while there are free slots."""
        limit = self._settings.concurrent_limit
        while self._queue and (limit == 0 or self._running_count() < limit):
            name = self._queue.pop(0)
            build = self._builds.get(name)
            if build is None or build.status is not BuildStatus.QUEUED:
                continue
            node = await self._choose_node(build.request)
            try:
                secret, credential = await self._registry_login(build.request, own_login=True)
            except SwarmbinderError as exc:
                build.finish(
                    BuildStatus.FAILED, BuildEvent.failed(f"{exc.user_message}\n"), str(exc)
                )
                continue
            spec = self._job_spec(
                build.request,
                status=BuildStatus.RUNNING,
                node=node,
                now=build.created,
                secret=secret,
                login=credential,
            )
            try:
                await self._swarm.update_job(
                    name,
                    constraints=spec.constraints,
                    labels=spec.labels,
                    secrets=spec.secrets if credential is not None else None,
                    env=spec.env if credential is not None else None,
                )
                if credential is not None:
                    build.credential = credential
                    build.login_username = credential.username
            except SwarmbinderError as exc:
                await self._discard_login(secret, credential)
                build.finish(
                    BuildStatus.FAILED,
                    BuildEvent.failed(f"Could not start the build: {exc}\n"),
                    str(exc),
                )
                continue
            build.status = BuildStatus.RUNNING
            build.node = node
            build.started = self._clock()
            self._notify_started(build)
            build.fanout.publish(BuildEvent.waiting(None, "Build slot free, starting the build.\n"))
        for name in self._queue:
            build = self._builds.get(name)
            if build is not None:
                build.fanout.publish(self._waiting_event(name))

    def _waiting_event(self, name: str) -> BuildEvent:
        position = self.queue_position(name)
        return BuildEvent.waiting(
            position,
            f"Waiting for a build slot: position {position} in the queue "
            f"({self._settings.concurrent_limit} builds run at once).\n",
        )

    async def _forget_locked(self, name: str, *, remove_service: bool) -> None:
        watcher = self._watchers.pop(name, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._builds.pop(name, None)
        if name in self._queue:
            self._queue.remove(name)
        if remove_service:
            with contextlib.suppress(SwarmbinderError):
                await self._remove_service(name)

    def _start_watcher(self, build: Build, *, log_tail: int | str) -> None:
        self._watchers[build.name] = asyncio.create_task(
            self._watch(build, log_tail), name=f"watch-{build.name}"
        )

    async def _watch(self, build: Build, log_tail: int | str) -> None:
        """Follow one build's log and task until it is terminal, then publish the result."""
        lines: list[str] = []
        pushed = asyncio.Event()
        reader = asyncio.create_task(
            self._read_logs(build, log_tail, lines, pushed), name=f"logs-{build.name}"
        )
        try:
            task = await self._wait_terminal_or_pushed(build, pushed)
            if not isinstance(task, _Pushed):
                # The log stream never ends by itself; give it a moment for the last lines.
                await self._drain(reader, lines)
            await self._conclude(build, task, lines)
        except asyncio.CancelledError:
            raise
        except _StopBuild as exc:
            reason = str(exc)
            build.finish(BuildStatus.FAILED, BuildEvent.failed(f"Build failed: {reason}\n"), reason)
            async with self._lock:
                self._watchers.pop(build.name, None)
                # Stop it: the builder container goes with the service, and the daemon drops
                # the image build whose client went away.
                try:
                    await self._remove_service(build.name)
                except SwarmbinderError as remove_error:
                    log.warning("could not remove build %s: %s", build.name, remove_error)
                    build.lost = True  # housekeeping tries again
                else:
                    await self._forget_locked(build.name, remove_service=False)
                await self._promote_queued_locked()
        except SwarmUnavailable as exc:
            # Only reached after engine_grace: the engine is gone, not blinking.
            build.lost = True
            build.finish(
                BuildStatus.FAILED,
                BuildEvent.failed(
                    f"Build failed: the Docker engine stopped answering while the build ran "
                    f"({exc}). Try again later.\n",
                    503,
                ),
                f"the Docker engine stopped answering: {exc}",
            )
        except Exception as exc:  # a watcher must never die silently
            log.exception("watching build %s failed", build.name)
            build.finish(
                BuildStatus.FAILED,
                BuildEvent.failed(f"Watching the build failed: {exc}\n"),
                str(exc),
            )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, SwarmbinderError):
                await reader
            if self._on_finished is not None and build.done.is_set():
                try:
                    result = self._on_finished(build)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("the on_finished callback failed for build %s", build.name)

    async def _wait_terminal_or_pushed(
        self, build: Build, pushed: asyncio.Event
    ) -> TaskState | None | _Pushed:
        """The task's terminal state, or ``_Pushed.PUSHED`` as soon as the log says the image is
        in the registry: Swarm reports the builder's exit 0.3-0.5 s later (its own report,
        then our poll), which was most of a cached build's overhead over a raw repo2docker."""
        terminal = asyncio.create_task(self._wait_terminal(build), name=f"task-{build.name}")
        announced = asyncio.create_task(pushed.wait(), name=f"pushed-{build.name}")
        try:
            await asyncio.wait((terminal, announced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (terminal, announced):
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
        if terminal.done() and not terminal.cancelled():
            return terminal.result()  # its end, or its error, wins over a line seen meanwhile
        return _Pushed.PUSHED

    async def _read_logs(
        self, build: Build, tail: int | str, lines: list[str], pushed: asyncio.Event
    ) -> None:
        """Publish the service's log lines; follow it again if the engine drops the stream.

        After a reconnect, a log followed from its start is read from the start again and the
        lines already seen are skipped; a log followed from a tail (an adopted build) goes on
        with new lines only, so lines written while the engine was away may be missing.
        """
        batch: list[str] = []
        skip = 0
        try:
            while True:
                stream = self._swarm.follow_logs(build.name, tail=tail)
                try:
                    async for raw in stream:
                        if skip:
                            skip -= 1
                            continue
                        # The one place a repository's words enter: scrubbed here, they are
                        # clean in every event, stored line and failure reason after.
                        line = self._settings.scrubber.scrub(raw)
                        lines.append(line)
                        batch.append(line)
                        event = as_log_event(line)
                        build.fanout.publish(event)
                        if announces_push_of(event, build.image):
                            pushed.set()
                        if len(batch) >= 50:
                            self._log_lines(build.name, batch)
                            batch = []
                except SwarmUnavailable as exc:
                    log.info("log stream of %s dropped: %s", build.name, exc)
                finally:
                    await stream.aclose()
                self._log_lines(build.name, batch)
                batch = []
                await asyncio.sleep(max(self._settings.poll_interval, 0.5))
                if tail == "all":
                    skip = len(lines)
                else:
                    tail = 0
        finally:
            self._log_lines(build.name, batch)

    def _log_lines(self, name: str, batch: list[str]) -> None:
        if self._on_log_lines is None or not batch:
            return
        try:
            self._on_log_lines(name, batch)
        except Exception:
            log.exception("the on_log_lines callback failed for build %s", name)

    async def _drain(self, reader: asyncio.Task[None], lines: list[str]) -> None:
        """Wait until the log has been quiet for :data:`LOG_DRAIN_QUIET` seconds.

        By the time Swarm reports the task terminal its last lines are normally delivered
        already; the window only catches stragglers. Every build waits it once, so it is kept
        short (a failed build's reason is read again in full if a line is missing).
        """
        seen = -1
        while seen != len(lines) and not reader.done():
            seen = len(lines)
            await asyncio.sleep(LOG_DRAIN_QUIET)

    async def _wait_terminal(self, build: Build) -> TaskState | None:
        pending_since: float | None = None
        unanswered_since: float | None = None
        nodes_checked = 0.0
        node_down_since: float | None = None
        while True:
            if build.status is BuildStatus.QUEUED:
                await asyncio.sleep(self._settings.poll_interval * 4)
                continue
            now = self._clock()
            if build.started and now - build.started > self._settings.max_age:
                raise _StopBuild(
                    f"the build timed out: it ran longer than build_max_age "
                    f"({self._settings.max_age:g} s) and was stopped"
                )
            try:
                tasks = await self._swarm.tasks(build.name)
                gone = not tasks and await self._swarm.inspect_service(build.name) is None
            except SwarmUnavailable:
                unanswered_since = unanswered_since or now
                if now - unanswered_since >= self._settings.engine_grace:
                    raise
                await asyncio.sleep(self._settings.poll_interval)
                continue
            unanswered_since = None
            if gone:
                log.warning("build service %s disappeared before its task ended", build.name)
                return None
            current = tasks[-1] if tasks else None
            if (
                current is not None
                and current.state is TaskStateName.SHUTDOWN
                and current.desired_state in ("shutdown", "remove")
            ):
                # The task of an iteration that an update superseded (a queued build just
                # promoted) until Swarm creates the new one: not this build's end.
                current = None
            if current is not None and current.terminal:
                return current
            waiting = current is None or current.state in (
                TaskStateName.NEW,
                TaskStateName.PENDING,
                TaskStateName.ALLOCATED,
            )
            if waiting:
                pending_since = pending_since or now
                if now - pending_since > self._settings.pending_timeout:
                    raise _StopBuild(
                        f"no node accepted the build within {self._settings.pending_timeout:g} s "
                        "(build_pending_timeout): the nodes it may run on are down, drained or "
                        "paused"
                        + (f" (Swarm: {current.message or current.error})" if current else "")
                    )
            else:
                pending_since = None
                if current is not None and now - nodes_checked >= NODE_CHECK_INTERVAL:
                    # Swarm keeps the task of a dead node "running" for good: only the node's
                    # own state tells that the build is gone.
                    nodes_checked = now
                    lost = await self._lost_node(current.node_id)
                    if not lost:
                        node_down_since = None
                    elif node_down_since is None:
                        node_down_since = now
                        log.warning("build %s: its node is %s; waiting", build.name, lost)
                    elif now - node_down_since >= self._settings.node_lost_grace:
                        raise _StopBuild(
                            f"node lost: {lost}, which ran the build, is no longer part of "
                            "the swarm; the next request builds on another node"
                        )
            await asyncio.sleep(self._settings.poll_interval)

    async def _lost_node(self, node_id: str) -> str:
        """A description of the node if it is down or gone, else ``""``."""
        if not node_id:
            return ""
        nodes = {n.id: n for n in await self._swarm.nodes()}
        node = nodes.get(node_id)
        if node is None:
            return f"node {node_id[:12]}"
        if node.state in (NodeState.DOWN, NodeState.DISCONNECTED, NodeState.UNKNOWN):
            return f"{node.hostname or node_id[:12]} ({node.state})"
        return ""

    async def _conclude(
        self, build: Build, task: TaskState | None | _Pushed, lines: list[str]
    ) -> None:
        # Pushed: the builder exits on its own right after; the next cleanup removes its
        # finished service like any other.
        if isinstance(task, _Pushed) or (task is not None and task.succeeded):
            build.finish(
                BuildStatus.BUILT, BuildEvent.built(build.image, "Built image, launching...\n")
            )
        else:
            if (
                task is not None
                and task.exit_code is not None
                and not any(parse_repo2docker_line(ln).phase is Phase.FAILED for ln in lines)
            ):
                with contextlib.suppress(SwarmbinderError, TimeoutError):
                    lines = await self._swarm.read_logs(build.name, max_seconds=5)
            reason = self._settings.scrubber.scrub(
                failure_reason(lines, task) if task is not None else "the build service was removed"
            )
            build.finish(BuildStatus.FAILED, BuildEvent.failed(f"Build failed: {reason}\n"), reason)
        async with self._lock:
            self._watchers.pop(build.name, None)
            await self._promote_queued_locked()

    async def _housekeeping(self) -> None:
        """Remove finished build services; overdue ones were stopped by their watchers."""
        while True:
            await asyncio.sleep(self._settings.cleanup_interval)
            try:
                await self.cleanup()
            except SwarmbinderError as exc:
                log.warning("build cleanup failed: %s", exc)

    async def cleanup(self) -> list[str]:
        """Remove the services of finished builds: built ones at once, failed ones after
        ``keep_failed_for`` (so ``docker service logs`` still shows why), lost ones as soon as
        the engine answers. A build whose service could not be removed is kept for the next
        round, so an engine that is away never makes us forget a service."""
        now = self._clock()
        async with self._lock:
            due = []
            for name, build in self._builds.items():
                if build.finished is None:
                    continue
                keep = (
                    self._settings.keep_failed_for
                    if build.status is BuildStatus.FAILED and not build.lost
                    else 0
                )
                if now - build.finished >= keep:
                    due.append(name)
            # Concurrently: each removal waits for its job's containers to settle (about a
            # second), and the lock that new requests wait for is held meanwhile.
            results = await asyncio.gather(*(self._remove_finished(name) for name in due))
            removed = [name for name, ok in zip(due, results, strict=True) if ok]
            for name in removed:
                await self._forget_locked(name, remove_service=False)
            if removed:
                await self._promote_queued_locked()
            await self._sweep_build_logins()
        return removed

    async def _remove_finished(self, name: str) -> bool:
        try:
            await self._remove_service(name)
        except SwarmbinderError as exc:
            log.warning("could not remove finished build %s yet: %s", name, exc)
            return False
        return True

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "name": b.name,
                "repo_url": b.request.repo_url,
                "ref": b.request.ref,
                "image": b.image,
                "status": b.status.value,
                "node": b.node,
                "queue_position": self.queue_position(b.name),
                "created": b.created,
                "finished": b.finished,
                "reason": b.reason,
            }
            for b in self._builds.values()
        ]
