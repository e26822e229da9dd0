"""One ``/build/<provider>/<spec>`` request as an async iterator of events.

The order is BinderHub's (``binderhub/builder.py``), so clients see the same conversation:

1. resolve the spec (parse, spec bans, ref resolution) — nothing touches Swarm before this;
2. look the image up in the registry;
3. found: ``built`` ("Found built image, launching...") then launch, or with ``build_only``
   ``ready`` ("Done! Found built image");
4. not found: check the launch quota (no point building what cannot be launched), ``waiting``,
   then join or start the build and relay its events until ``built`` or ``failed``;
5. launch: check the quota again (servers may have started meanwhile), ``launching``, the hub's
   progress as ``launching`` events, and ``ready`` with the server's URL and token. With a
   ``launch_budget`` that second check also claims a place under the quotas, held until the
   launch ends, so concurrent launches (through any replica) cannot all squeeze under a quota.

Every error becomes one ``failed`` event with a ``status_code`` and the error's user-facing
message, and the iterator ends right after it. The flow does not know about HTTP: the
``/build`` handler writes what it yields, and tests drive it with fakes.

A build's live log lines pass through the flow unchanged. A caller that can write one
synchronously (the handler, to its client's connection) gives :meth:`LaunchFlow.run` a
``direct`` sink, and while it waits for the next event those lines go to the sink straight from
the build's publisher, sparing each watcher a wake-up and a walk through this chain of
generators per line; everything else, and whatever the sink refuses, is yielded as usual, in
order.

Stopping iteration (the client went away) stops only this request: a build is owned by the
build manager and keeps running for every other watcher, while a launch nobody waits for is
cleaned up by the launcher when its iterator is closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol, Unpack

from .buildjob import BuildRequest
from .buildstatus import BuildOutcome
from .errors import SwarmbinderError
from .events import MSG_DONE_FOUND, MSG_FOUND_BUILT, BuildEvent, Phase, closing
from .launcher import ServerRequest
from .resolve import Resolved

log = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "Internal error while handling the launch; the admins have been told."


#: Takes one event synchronously (True) or refuses it (False); see :meth:`LaunchFlow.run`.
EventSink = Callable[[BuildEvent], bool]


class BuildHandle(Protocol):
    """What the flow needs of a build: its events (log tail, live events, then the end).

    With ``direct``, live events that come while the reader waits may go to it instead of
    through the iterator (:meth:`swarmbinder.buildwatch.Build.events`)."""

    def events(self, direct: EventSink | None = None) -> AsyncIterator[BuildEvent]: ...


class BuildStarter(Protocol):
    """Starts a build, or joins the running one for the same repo, ref and image."""

    async def request(self, request: BuildRequest) -> BuildHandle: ...


class ServerLauncher(Protocol):
    """Starts a Jupyter server for an image, yielding ``launching`` events, then ``ready``."""

    def launch(self, image: str, **request: Unpack[ServerRequest]) -> AsyncIterator[BuildEvent]: ...


class FlowObserver(Protocol):
    """Where the flow reports what happened: metrics, the launch event log.

    Each ``*_started`` returns a callable that must be called exactly once with the outcome
    (a :class:`~swarmbinder.buildstatus.BuildOutcome` for a build, ``"success"`` or
    ``"failure"`` for a launch); the flow calls it in a ``finally`` so in-progress gauges return
    to zero whatever happens, cancellation included.
    """

    def build_started(self, build: BuildRequest) -> Callable[[BuildOutcome], None]: ...

    def launch_started(self, build: BuildRequest) -> Callable[[str], None]: ...

    def launched(self, request: LaunchRequest, resolved: Resolved) -> None: ...


class _NoObserver:
    def build_started(self, build: BuildRequest) -> Callable[[BuildOutcome], None]:
        return _ignore

    def launch_started(self, build: BuildRequest) -> Callable[[str], None]:
        return _ignore

    def launched(self, request: LaunchRequest, resolved: Resolved) -> None:
        return None


def _ignore(status: str) -> None:
    return None


@dataclass(frozen=True)
class LaunchRequest:
    """One ``/build`` request, as the handler parsed it."""

    provider_prefix: str
    spec: str
    #: ``badge_base_url`` or ``{proto}://{host}{base_url}``: where this Binder is reached.
    launch_host: str
    build_only: bool = False
    #: The JupyterHub user when ``auth_enabled``; ``None`` launches as a temporary user.
    username: str | None = None
    #: A named server for that user (``auth_enabled`` with named servers), else ``""``.
    server_name: str = ""
    #: For the launch event: the Binder host, the request's Origin, whether a token came.
    origin: str = ""
    request_origin: str = ""
    have_build_token: bool = False
    #: The client's address as admission saw it (trusted proxies applied), for BinderHub's
    #: ``binder_client_ip``; never a header value taken as is.
    client_ip: str = ""

    @property
    def path(self) -> str:
        return f"{self.provider_prefix}/{self.spec}"


class LaunchFlow:
    """Resolve, find or build, and launch; shared by every ``/build`` request."""

    def __init__(
        self,
        *,
        resolve: Callable[[str], Awaitable[Resolved]],
        image_exists: Callable[[str], Awaitable[bool]],
        builds: BuildStarter,
        launcher: ServerLauncher | None,
        check_quota: Callable[[Resolved], Awaitable[None]],
        observer: FlowObserver | None = None,
        launch_budget: Callable[[Resolved], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        """``check_quota`` refuses a build whose launch would be refused; ``launch_budget``
        (when given, instead of ``check_quota`` before the launch) checks and holds a place
        under the quotas for as long as its block runs."""
        self._resolve = resolve
        self._image_exists = image_exists
        self._builds = builds
        self._launcher = launcher
        self._check_quota = check_quota
        self._launch_budget = launch_budget
        self._observer: FlowObserver = observer or _NoObserver()

    async def run(
        self, request: LaunchRequest, direct: EventSink | None = None
    ) -> AsyncGenerator[BuildEvent, None]:
        """The events for ``request``; the last one is ``ready`` or ``failed``.

        ``direct``, when given, may be handed a build's live log events instead, while the
        caller waits for the next one (see the module's doc); it never gets the first or last
        event of a build, nor any other."""
        try:
            # closing everywhere: an abandoned inner iterator must be closed now (its
            # ``finally`` resets gauges, unsubscribes, cleans up a launch), not whenever the
            # garbage collector gets to it.
            async with closing(self._run(request, direct)) as events:
                async for event in events:
                    yield event
        except SwarmbinderError as error:
            log.info("launch of %s failed: %s", request.path, error)
            yield BuildEvent.failed(error.user_message, error.status_code)
        except Exception:
            log.exception("unexpected error while launching %s", request.path)
            yield BuildEvent.failed(INTERNAL_ERROR_MESSAGE, 500)

    async def _run(
        self, request: LaunchRequest, direct: EventSink | None
    ) -> AsyncIterator[BuildEvent]:
        resolved = await self._resolve(request.path)
        if resolved.notice:
            yield BuildEvent.waiting(message=resolved.notice)
        image = resolved.build.image
        if await self._image_exists(image):
            if request.build_only:
                yield BuildEvent.image_ready(image, MSG_DONE_FOUND)
                return
            yield BuildEvent.built(image, MSG_FOUND_BUILT)
        else:
            if not request.build_only:
                # BinderHub refuses the build when the launch after it would be refused.
                await self._check_quota(resolved)
            built = False
            build = self._build(resolved.build, request.build_only, direct)
            async with closing(build) as events:
                async for event in events:
                    yield event
                    built = event.phase in (Phase.BUILT, Phase.READY)
                    if event.phase is Phase.FAILED:
                        return
            if not built:
                raise SwarmbinderError(
                    f"build of {image} ended without a result",
                    user_message="The build ended without a result. Please try again.",
                )
            if request.build_only:
                return
        async with closing(self._launch(request, resolved)) as events:
            async for event in events:
                if event.phase is Phase.READY:
                    self._observer.launched(request, resolved)
                yield event

    async def _build(
        self, build: BuildRequest, build_only: bool, direct: EventSink | None
    ) -> AsyncIterator[BuildEvent]:
        """The build's events, ending with ``built`` (``ready`` with ``build_only``) or
        ``failed``."""
        yield BuildEvent.waiting()
        finished = self._observer.build_started(build)
        outcome = BuildOutcome.FAILURE
        try:
            handle = await self._builds.request(build)
            async with closing(handle.events(direct)) as events:
                async for event in events:
                    if event.phase is Phase.BUILT:
                        outcome = BuildOutcome.SUCCESS
                        yield BuildEvent.image_ready(build.image) if build_only else event
                        return
                    yield event
                    if event.phase is Phase.FAILED:
                        return
        finally:
            finished(outcome)

    async def _launch(
        self, request: LaunchRequest, resolved: Resolved
    ) -> AsyncIterator[BuildEvent]:
        if self._launcher is None:
            raise SwarmbinderError(
                "no hub configured",
                user_message="This Binder has no JupyterHub to launch servers on.",
            )
        budget: AbstractAsyncContextManager[None]
        if self._launch_budget is not None:
            budget = self._launch_budget(resolved)
        else:
            await self._check_quota(resolved)
            budget = nullcontext()
        async with budget:
            held = self._launch_held(self._launcher, request, resolved)
            async with closing(held) as events:
                async for event in events:
                    yield event

    async def _launch_held(
        self, launcher: ServerLauncher, request: LaunchRequest, resolved: Resolved
    ) -> AsyncIterator[BuildEvent]:
        build = resolved.build
        finished = self._observer.launch_started(build)
        status = "failure"
        started = time.monotonic()
        try:
            yield BuildEvent.launching()
            launch = launcher.launch(
                build.image,
                **resolved.server_request(
                    request.path,
                    launch_host=request.launch_host,
                    client_ip=request.client_ip,
                    username=request.username,
                    server_name=request.server_name,
                ),
            )
            async with closing(launch) as events:
                async for event in events:
                    if event.phase is Phase.READY:
                        # Counted before the yield: the server runs even if nobody reads on.
                        status = "success"
                        elapsed = time.monotonic() - started
                        log.info("launched %s in %.1fs", build.repo_url, elapsed)
                    yield event
                    if event.phase in (Phase.READY, Phase.FAILED):
                        return
        finally:
            finished(status)
