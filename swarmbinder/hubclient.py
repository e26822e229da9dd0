"""JupyterHub's REST API, as the launcher and the admin console use it.

:class:`HubClient` gives typed answers (:class:`HubUser`, :class:`HubServer`), retries 5xx
answers and connection failures with :class:`Backoff`, never retries a 4xx, and turns every
failure into a :class:`~swarmbinder.errors.LaunchFailed` with a message a user can read:
:class:`HubRequestFailed` when the hub said no, :class:`HubUnavailable` when it did not answer.
It follows BinderHub's rules: a 409 on a retry means the first try got through, and a spawn's
``/progress`` stream is read until the hub says ``ready`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import aiohttp

from .errors import LaunchFailed, SwarmbinderError
from .events import SSEDecoder

log = logging.getLogger(__name__)

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
HUB_DOWN_MESSAGE = "The JupyterHub that runs servers is not answering right now. Try again soon."
HUB_REFUSED_MESSAGE = (
    "The JupyterHub that runs servers did not accept swarmbinder's credentials: it may be "
    "restarting or its database may be away. Try again soon."
)


class HubRequestFailed(LaunchFailed):
    """The hub answered a request with an error status.

    A 500 when the hub turned the request down (a 4xx about what was asked), but a 503 when the
    trouble is the hub's: a 5xx that outlasted the retries, or a 401/403 to swarmbinder's own
    service token, which JupyterHub also answers while its database is away (it cannot look
    the token up, and says "Missing or invalid credentials"). Either way nothing is wrong with
    the launch, and the same launch works once the hub is well.
    """

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        refused = status in (401, 403)
        if status >= 500:
            user_message = HUB_DOWN_MESSAGE
        elif refused:
            user_message = HUB_REFUSED_MESSAGE
        else:
            user_message = f"Launch failed: {detail}"
        super().__init__(
            f"{method} {path}: the hub answered {status}: {detail}", user_message=user_message
        )
        self.status = status
        self.detail = detail
        if status >= 500 or refused:
            self.status_code = 503


class HubUnavailable(LaunchFailed, status=503):
    """The hub did not answer (connection refused, reset, timed out), even after retries."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(
            f"{what}: the hub did not answer: {cause or type(cause).__name__}",
            user_message=HUB_DOWN_MESSAGE,
        )


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``attempts`` tries, sleeping ``start * factor**n`` (at most ``cap``)."""

    attempts: int = 4
    start: float = 0.25
    factor: float = 2.0
    cap: float = 2.0

    def delays(self) -> list[float]:
        """The sleeps between tries (one fewer than ``attempts``)."""
        return [min(self.cap, self.start * self.factor**n) for n in range(self.attempts - 1)]


@dataclass(frozen=True)
class HubServer:
    name: str
    ready: bool
    pending: str | None
    url: str


@dataclass(frozen=True)
class HubUser:
    name: str
    servers: Mapping[str, HubServer]

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> HubUser:
        servers = {
            str(key): HubServer(
                name=str(key),
                ready=bool(value.get("ready")),
                pending=value.get("pending") or None,
                url=str(value.get("url", "")),
            )
            for key, value in (raw.get("servers") or {}).items()
        }
        return cls(name=str(raw.get("name", "")), servers=servers)


def _detail(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    text = body.decode("utf-8", "replace").strip()
    return text[:200] or "(no details)"


class _RequestOptions(TypedDict, total=False):
    """What a request carries besides its method and path (:meth:`HubClient._once`)."""

    body: Any
    params: Mapping[str, str] | None
    accept: str


class HubClient:
    """JupyterHub's REST API at ``hub_api_url`` (``https://hub.example.org/hub/api``).

    ``session`` is shared and not closed here. ``token`` is a service token with the scopes
    the hub configuration gives the ``swarmbinder`` service.
    """

    def __init__(
        self,
        hub_api_url: str,
        token: str,
        session: aiohttp.ClientSession,
        *,
        backoff: Backoff = Backoff(),
        timeout: float = 30,
    ) -> None:
        self._api = hub_api_url.rstrip("/")
        self._headers = {"Authorization": f"token {token}"}
        self._session = session
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5))

    # -- transport ---------------------------------------------------------------------

    async def _once(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        accept: str = "application/json",
    ) -> tuple[int, Any]:
        """One request; 4xx/5xx raise HubRequestFailed, transport errors HubUnavailable."""
        try:
            async with self._session.request(
                method,
                self._api + path,
                json=body,
                params=params,
                headers={**self._headers, "Accept": accept},
                timeout=self._timeout,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HubUnavailable(f"{method} {path}", exc) from exc
        if status >= 400:
            raise HubRequestFailed(method, path, status, _detail(raw))
        try:
            return status, json.loads(raw) if raw else None
        except ValueError as exc:
            raise HubUnavailable(f"{method} {path}", ValueError("not JSON")) from exc

    async def _request(
        self, method: str, path: str, **options: Unpack[_RequestOptions]
    ) -> tuple[int, Any]:
        """:meth:`_once`, retrying 5xx and transport failures with backoff, never a 4xx."""
        delays = self._backoff.delays()
        for attempt in range(len(delays) + 1):
            try:
                return await self._once(method, path, **options)
            except HubRequestFailed as exc:
                if attempt and exc.status == 409:
                    # BinderHub's rule: a conflict on a retry means the first try got through
                    return exc.status, None
                if exc.status < 500 or attempt == len(delays):
                    raise
                log.info("hub answered %s to %s %s; retrying", exc.status, method, path)
            except HubUnavailable as exc:
                if attempt == len(delays):
                    raise
                log.info("hub did not answer %s %s (%s); retrying", method, path, exc)
            await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    # -- users -------------------------------------------------------------------------

    async def version(self) -> str:
        """The hub's version (``GET /hub/api/``): a cheap liveness check."""
        _, data = await self._request("GET", "/")
        return str((data or {}).get("version", ""))

    async def create_user(self, name: str) -> None:
        await self._request("POST", f"/users/{quote(name, safe='')}")

    async def get_user(self, name: str) -> HubUser | None:
        try:
            _, data = await self._request("GET", f"/users/{quote(name, safe='')}")
        except HubRequestFailed as exc:
            if exc.status == 404:
                return None
            raise
        return HubUser.from_api(data)

    async def list_users(self, *, state: str | None = None, page_size: int = 200) -> list[HubUser]:
        """Every user (``state="active"``: only those with a server running or starting)."""
        users: list[HubUser] = []
        offset = 0
        while True:
            params = {"offset": str(offset), "limit": str(page_size)}
            if state:
                params["state"] = state
            _, data = await self._request(
                "GET", "/users", params=params, accept=PAGINATION_MEDIA_TYPE
            )
            items = data.get("items", []) if isinstance(data, dict) else data or []
            users.extend(HubUser.from_api(item) for item in items)
            following = (
                (data.get("_pagination") or {}).get("next") if isinstance(data, dict) else None
            )
            if not following or not items:
                return users
            offset = int(following.get("offset", offset + len(items)))

    async def active_servers(self) -> set[tuple[str, str]]:
        """(user, server name) of every server the hub has running or starting."""
        return {
            (user.name, server)
            for user in await self.list_users(state="active")
            for server in user.servers
        }

    async def delete_user(self, name: str) -> bool:
        """Delete the user (stopping a running default server); False if there was none."""
        try:
            await self._request("DELETE", f"/users/{quote(name, safe='')}")
        except HubRequestFailed as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_user_once_stopped(self, name: str, *, patience: float = 10.0) -> bool:
        """Delete the user, asking again every 0.2 s for ``patience`` seconds while the hub
        still stops its server (it answers 400 then). True once deleted; a failure is logged
        and False (the reaper removes what is left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                await self.delete_user(name)
                return True
            except HubRequestFailed as exc:
                if exc.status != 400 or loop.time() > deadline:
                    log.warning("deleting user %s: %s", name, exc)
                    return False
            except SwarmbinderError as exc:
                log.warning("deleting user %s: %s", name, exc)
                return False
            await asyncio.sleep(0.2)

    async def create_token(
        self, name: str, *, scopes: list[str], note: str, expires_in: int | None = None
    ) -> str:
        """A new API token of user ``name`` holding only ``scopes`` (``POST /users/{name}/tokens``).

        Never retried: a retry after a lost answer would make a second token nobody knows.
        """
        body: dict[str, Any] = {"scopes": scopes, "note": note}
        if expires_in is not None:
            body["expires_in"] = expires_in
        _, data = await self._once("POST", f"/users/{quote(name, safe='')}/tokens", body=body)
        token = (data or {}).get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise HubUnavailable(f"POST /users/{name}/tokens", ValueError("no token in answer"))
        return token

    # -- servers -----------------------------------------------------------------------

    def _server_path(self, name: str, server_name: str) -> str:
        user = quote(name, safe="")
        if server_name:
            return f"/users/{user}/servers/{quote(server_name, safe='')}"
        return f"/users/{user}/server"

    async def start_server(self, name: str, server_name: str, options: Mapping[str, Any]) -> bool:
        """Ask the hub to start a server; True if it is ready already, False if pending.

        A 5xx may mean the spawn itself failed (the hub answers 500 then): the progress
        endpoint says so, and that failure is final. Any other 5xx is retried; a retry that
        finds the server running counts as success (the first try got through).
        """
        path = self._server_path(name, server_name)
        delays = self._backoff.delays()
        for attempt in range(len(delays) + 1):
            try:
                status, _ = await self._once("POST", path, body=dict(options))
                return status != 202
            except HubRequestFailed as exc:
                if exc.status < 500:
                    if attempt and exc.status == 400 and "already running" in exc.detail:
                        return True
                    raise
                failure = await self.spawn_failure(name, server_name)
                if failure is not None:
                    raise LaunchFailed(
                        f"spawn of {name}/{server_name} failed: {failure}",
                        user_message=f"Launch failed: {failure}",
                    ) from exc
                if attempt == len(delays):
                    raise
            except HubUnavailable:
                if attempt == len(delays):
                    raise
            await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def spawn_failure(self, name: str, server_name: str) -> str | None:
        """The message of a spawn that failed, if the hub's last spawn of it failed."""
        try:
            async with asyncio.timeout(3):
                async for event in self.progress(name, server_name):
                    if event.get("failed"):
                        return str(event.get("message") or "the server failed to start")
                    return None
        except (SwarmbinderError, TimeoutError):
            return None
        return None

    async def progress(self, name: str, server_name: str) -> AsyncIterator[dict[str, Any]]:
        """The spawn's progress events until the hub ends the stream (ready or failed)."""
        path = self._server_path(name, server_name) + "/progress"
        decoder = SSEDecoder()
        try:
            async with self._session.get(
                self._api + path,
                headers={**self._headers, "Accept": "text/event-stream"},
                # the stream lasts as long as the spawn; the launch timeout bounds it
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            ) as response:
                if response.status >= 400:
                    raise HubRequestFailed(
                        "GET", path, response.status, _detail(await response.read())
                    )
                async for chunk in response.content.iter_any():
                    for event in decoder.feed(chunk):
                        yield event
                for event in decoder.close():
                    yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise HubUnavailable(f"GET {path}", exc) from exc
        except ValueError as exc:
            raise HubUnavailable(f"GET {path}", exc) from exc

    async def stop_server(self, name: str, server_name: str = "", *, remove: bool = False) -> None:
        """Stop (a pending spawn is interrupted); ``remove`` also forgets a named server."""
        try:
            await self._request(
                "DELETE",
                self._server_path(name, server_name),
                body={"remove": True} if remove and server_name else None,
            )
        except HubRequestFailed as exc:
            if exc.status != 404:
                raise
