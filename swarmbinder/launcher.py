"""Launching users' servers through JupyterHub (the hub runs SwarmSpawner).

:class:`Launcher` is BinderHub's launch, made to fail fast on Swarm; it talks to the hub
through :class:`~swarmbinder.hubclient.HubClient`::

    check the image's manifest in the registry     (a missing tag would make Swarm retry)
    create a temporary user                         (unless a logged-in user launches)
    POST /users/{name}/servers/{server}             image, token, repo and binder_* fields,
                                                    and the node that holds the image
    follow /progress, forwarding its messages       while watching the server's Swarm tasks
    ready: the server's URL and token

The hub notices a server whose container cannot start only when it polls, and a task Swarm
rejects (say, for an image it cannot pull) keeps the spawn pending until the hub's start
timeout. So the launcher watches the user-server service's tasks itself and ends the launch as
soon as one fails. Whatever stops a launch short of ``ready`` (a 4xx, a failed task, the launch
timeout, the caller walking away) stops the server, deletes the temporary user and removes the
service: nothing is left for the culler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, Protocol, TypedDict, Unpack
from urllib.parse import quote

from . import naming
from .errors import LaunchFailed, SwarmbinderError, SwarmRequestFailed
from .events import BuildEvent
from .hubclient import HubClient, HubRequestFailed, HubUnavailable
from .launchslots import LaunchSlots
from .registry import RegistryClient
from .swarm import SwarmClient, TaskState, TaskStateName

log = logging.getLogger(__name__)

#: Task states that mean the server's container will not come up (restarts are off).
FAILED_TASK_STATES = frozenset(
    {TaskStateName.FAILED, TaskStateName.REJECTED, TaskStateName.COMPLETE}
)


#: The spawn option naming the node Binder prefers (the hub's spawner spells it the same, and
#: honours it only in a spawn made with Binder's own token).
PREFER_NODE_OPTION = "prefer_node"


class NodePreference(Protocol):
    """Names the node a server of an image should start on (:mod:`swarmbinder.placement`)."""

    async def preferred_node(self, image: str) -> str | None: ...


class ServerConflict(LaunchFailed, status=409):
    """The logged-in user may not start another server now (BinderHub's 409s)."""


class NoRoomForServerName(LaunchFailed, status=400):
    """The user's name leaves no room for a named server within Swarm's 63 characters."""


class ServerRequest(TypedDict):
    """What a launch says of the server besides its image: BinderHub's ``binder_*`` fields for
    the spawner and the ``ready`` event, and whose server it is (default: a temporary user's)."""

    repo_url: str
    provider_spec: str
    ref_url: str
    binder_request: str
    binder_persistent_request: str
    binder_launch_host: str
    binder_client_ip: NotRequired[str]
    username: NotRequired[str | None]
    server_name: NotRequired[str]


class _Ready:
    """The hub says the server is up."""


@dataclass(frozen=True)
class _Failed:
    error: SwarmbinderError


_Item = BuildEvent | _Ready | _Failed


#: How the hub's server launcher (``sh``: command not found) exits when the image has none.
NO_JUPYTER_EXIT_CODE = 127


def task_failure(tasks: Sequence[TaskState]) -> str | None:
    """Why the server's container will not come up, if a task says so."""
    for task in reversed(tasks):
        if task.state not in FAILED_TASK_STATES:
            continue
        if task.exit_code == NO_JUPYTER_EXIT_CODE:
            # the hub's server launcher found no Jupyter server to run in the image (Swarm
            # also sets the task's error to "non-zero exit (127)": this says more)
            return (
                "the server's container could not start: the image has no Jupyter server "
                "(it needs jupyterlab or notebook)"
            )
        if task.error:
            return f"the server's container could not start: {task.error}"
        if task.exit_code is not None:
            return f"the server exited with code {task.exit_code} before it was ready"
        return f"the server's task ended ({task.state.value}) before it was ready"
    return None


def _queued_message(ahead: int, running: int) -> str:
    starting = "1 server is" if running == 1 else f"{running} servers are"
    place = "you are next" if ahead == 0 else f"{ahead} ahead of you"
    return f"Waiting to start: {starting} starting, {place}...\n"


class Launcher:
    """Starts Jupyter servers for built images; one instance serves every launch.

    ``hub_url`` is the hub as browsers reach it (the ``url`` in ``ready`` starts with it);
    ``registry`` None skips the manifest check (``use_registry: false``). ``server_prefix`` is
    SwarmSpawner's ``prefix`` (the hub's ``SWARMBINDER_HUB_SERVER_PREFIX``).

    A launch for a logged-in user (``username``) never creates or deletes that user. With
    ``allow_named_servers`` it starts a new named server (a unique name from the repo), refused
    once the user has ``named_server_limit_per_user`` of them; without, the user's default
    server, refused while it runs. Either way a failed launch removes only that server.
    """

    def __init__(
        self,
        hub: HubClient,
        swarm: SwarmClient,
        *,
        hub_url: str,
        registry: RegistryClient | None,
        launch_timeout: float = 600,
        server_prefix: str = naming.SPAWNER_PREFIX,
        task_poll_interval: float = 0.5,
        allow_named_servers: bool = False,
        named_server_limit_per_user: int = 0,
        slots: LaunchSlots | None = None,
        placement: NodePreference | None = None,
    ) -> None:
        self._hub = hub
        self._swarm = swarm
        self._hub_url = hub_url if hub_url.endswith("/") else hub_url + "/"
        self._registry = registry
        self._launch_timeout = launch_timeout
        self._prefix = server_prefix
        self._poll = task_poll_interval
        self._cleanups: set[asyncio.Task[None]] = set()
        self._named_servers = allow_named_servers
        self._named_limit = named_server_limit_per_user
        self.slots = slots or LaunchSlots(0)
        self._placement = placement

    async def aclose(self) -> None:
        """Wait for cleanups still running (of launches whose caller was cancelled)."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def launch(
        self, image: str, **request: Unpack[ServerRequest]
    ) -> AsyncGenerator[BuildEvent, None]:
        """``launching`` events with the hub's progress messages, then ``ready``.

        Raises LaunchFailed (or another SwarmbinderError, e.g. RegistryError) when the server
        cannot be started; by then nothing of the launch is left in the hub or the swarm.
        """
        await self._check_image(image)
        repo_url = request["repo_url"]
        username = request.get("username")
        server_name = request.get("server_name", "")
        temporary = username is None
        if username is None:
            user = naming.temporary_name(
                repo_url, budget=naming.temporary_name_budget(prefix=self._prefix)
            )
        else:
            user = username
            server_name = server_name or await self._server_for(user, repo_url)
        service = naming.spawner_service_name(user, server_name, self._prefix)
        token = secrets.token_urlsafe(24)
        # what both the spawner and the ready event carry, in BinderHub's names
        binder = {
            "binder_ref_url": request["ref_url"],
            "binder_launch_host": request["binder_launch_host"],
            "binder_request": request["binder_request"],
            "binder_persistent_request": request["binder_persistent_request"],
            "binder_client_ip": request.get("binder_client_ip", ""),
        }
        options = {
            "image": image,
            "token": token,
            "repo_url": repo_url,
            "provider_spec": request["provider_spec"],
            **binder,
        }
        started = False
        ready = False
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        workers: list[asyncio.Task[None]] = []
        holding_slot = False
        try:
            async with contextlib.aclosing(self.slots.take()) as turns:
                async for ahead in turns:
                    yield BuildEvent.launching(_queued_message(ahead, self.slots.running))
            holding_slot = bool(self.slots.limit)
            # Chosen once the launch may start (the nodes' load is the one it starts into),
            # while the hub makes the user.
            preference = asyncio.create_task(self._preferred_node(image))
            try:
                if temporary:
                    await self._hub.create_user(user)
                started = True
                node = await preference
            finally:
                preference.cancel()
            if node:
                options[PREFER_NODE_OPTION] = node
            log.info("starting server %r of %s with %s", server_name, user, image)
            workers = [
                asyncio.create_task(self._spawn(user, server_name, options, queue)),
                asyncio.create_task(self._watch_tasks(service, queue)),
            ]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._launch_timeout
            while True:
                try:
                    # No yield inside the timeout: it must cancel only our own wait.
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
                except TimeoutError:
                    raise LaunchFailed(
                        f"server for {user} not ready within {self._launch_timeout:.0f} s",
                        user_message=(
                            f"Launch timed out: the server did not start within "
                            f"{self._launch_timeout:.0f} seconds."
                        ),
                    ) from None
                if isinstance(item, _Failed):
                    raise item.error
                if isinstance(item, _Ready):
                    break
                yield item
            url = self._server_url(user, server_name)
            ready = True
            if holding_slot:  # the server is up: the next launch may start
                holding_slot = False
                self.slots.give_back()
            yield BuildEvent.ready(url=url, token=token, image=image, repo_url=repo_url, **binder)
        finally:
            if holding_slot:
                self.slots.give_back()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if started and not ready:
                await self._clean_up_shielded(user, server_name, service, temporary)

    # -- steps -------------------------------------------------------------------------

    async def _preferred_node(self, image: str) -> str | None:
        return None if self._placement is None else await self._placement.preferred_node(image)

    async def _check_image(self, image: str) -> None:
        if self._registry is None:
            return
        repository, tag = naming.split_image_name(image)
        if not await self._registry.manifest_exists(repository, tag):
            raise LaunchFailed(
                f"image {image} is not in the registry",
                user_message=f"Launch failed: the image {image} is not in the registry. "
                "Rebuild it and try again.",
            )

    async def _server_for(self, user: str, repo_url: str) -> str:
        """The server a logged-in user's launch starts: a fresh named one, or the default."""
        if not self._named_servers:
            known = await self._hub.get_user(user)
            if known is not None and "" in known.servers:
                raise ServerConflict(
                    f"{user} already has a running default server",
                    user_message=f"User {user} already has a running server.",
                )
            return ""
        if self._named_limit:
            known = await self._hub.get_user(user)
            named = [name for name in (known.servers if known else {}) if name]
            if len(named) >= self._named_limit:
                raise ServerConflict(
                    f"{user} has {len(named)} named servers (limit {self._named_limit})",
                    user_message=(
                        f"User {user} already has the maximum of {self._named_limit} named "
                        "servers. One must be deleted before a new server can be created."
                    ),
                )
        budget = naming.temporary_name_budget(user, prefix=self._prefix)
        try:
            return naming.temporary_name(repo_url, budget=budget)
        except ValueError:
            raise NoRoomForServerName(
                f"user name {user!r} leaves {budget} characters for a server name",
                user_message=(
                    f"Launch failed: the user name {user} is too long for a named server."
                ),
            ) from None

    def _server_url(self, user: str, server_name: str) -> str:
        url = f"{self._hub_url}user/{quote(user, safe='')}/"
        if server_name:
            url += f"{quote(server_name, safe='')}/"
        return url

    async def _spawn(
        self, user: str, server_name: str, options: Mapping[str, Any], queue: asyncio.Queue[_Item]
    ) -> None:
        """POST the start, then relay the hub's progress; the last item is ready or failed."""
        try:
            if not await self._hub.start_server(user, server_name, options):
                async for event in self._hub.progress(user, server_name):
                    if event.get("failed"):
                        message = str(event.get("message") or "the server failed to start")
                        raise LaunchFailed(
                            f"spawn of {user}/{server_name} failed: {message}",
                            user_message=f"Launch failed: {message}",
                        )
                    if event.get("ready"):
                        break
                    if event.get("message"):
                        queue.put_nowait(BuildEvent.launching(str(event["message"])))
                else:
                    raise LaunchFailed(
                        f"progress of {user}/{server_name} ended before ready",
                        user_message="Launch failed: the hub stopped reporting progress.",
                    )
            queue.put_nowait(_Ready())
        except SwarmbinderError as exc:
            queue.put_nowait(_Failed(await self._clearer_failure(exc, user, server_name)))
        except Exception:
            log.exception("unexpected error while starting a server for %s", user)
            queue.put_nowait(
                _Failed(LaunchFailed("unexpected error", user_message="Launch failed."))
            )

    async def _clearer_failure(
        self, error: SwarmbinderError, user: str, server_name: str
    ) -> SwarmbinderError:
        """The hub reports a dead container as a dump of task status; Swarm says it plainly."""
        if isinstance(error, HubUnavailable) or (
            isinstance(error, HubRequestFailed) and error.status < 500
        ):
            return error
        service = naming.spawner_service_name(user, server_name, self._prefix)
        try:
            reason = task_failure(await self._tasks(service))
        except SwarmbinderError:
            reason = None
        if reason is None:
            return error
        return LaunchFailed(f"{error.message} ({reason})", user_message=f"Launch failed: {reason}")

    async def _tasks(self, service: str) -> list[TaskState]:
        try:
            return await self._swarm.tasks(service)
        except SwarmRequestFailed as exc:
            if exc.status == 404:  # not created yet, or already removed
                return []
            raise

    async def _watch_tasks(self, service: str, queue: asyncio.Queue[_Item]) -> None:
        """Report a failed task of the server at once: the hub would notice it much later."""
        while True:
            try:
                reason = task_failure(await self._tasks(service))
            except SwarmbinderError as exc:
                log.info("cannot watch %s: %s", service, exc)
                reason = None
            if reason is not None:
                queue.put_nowait(
                    _Failed(
                        LaunchFailed(
                            f"service {service}: {reason}", user_message=f"Launch failed: {reason}"
                        )
                    )
                )
                return
            await asyncio.sleep(self._poll)

    # -- cleanup -----------------------------------------------------------------------

    async def _clean_up_shielded(
        self, user: str, server_name: str, service: str, temporary: bool
    ) -> None:
        """Run the cleanup to its end even if our caller is cancelled meanwhile."""
        task = asyncio.create_task(self._clean_up(user, server_name, service, temporary))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def _clean_up(self, user: str, server_name: str, service: str, temporary: bool) -> None:
        """Stop the server, delete a temporary user, and make sure the service is gone."""
        try:
            await self._hub.stop_server(user, server_name, remove=bool(server_name))
        except SwarmbinderError as exc:
            log.warning("stopping %s/%s after a failed launch: %s", user, server_name, exc)
        if temporary:
            await self._hub.delete_user_once_stopped(user)
        try:
            await self._swarm.remove_service(service, settle_seconds=3)
        except SwarmbinderError as exc:
            # the reaper removes it later
            log.warning("removing %s after a failed launch: %s", service, exc)
