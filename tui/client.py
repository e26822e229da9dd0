"""The admin console's data client: swarmbinder's admin API over HTTP, and nothing else.

No Textual here, and nothing from the service: the console talks to the service the way any
script would. :class:`AdminClient` does one request per call and :meth:`AdminClient.events`
follows the live stream once; :func:`follow` keeps it followed, reconnecting with backoff, and
says what it is doing as :class:`Connection` states in between the events, so the console can
show them.

Errors::

    AdminClientError      any failure; ``str()`` is a message for the screen
    ├── Unauthorized      401/403: no or wrong token (retrying will not help)
    ├── Unreachable       no connection, a timeout, or a stream that went silent
    └── RequestFailed     the service answered 4xx/5xx with a message (e.g. a bad CIDR)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

Json = dict[str, Any]

#: The service sends a keepalive every 15 s; this long without a byte means the link is dead.
STREAM_SILENCE_TIMEOUT = 45.0
#: Seconds between reconnection attempts, the last one repeated.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1, 2, 5, 10)


class AdminClientError(Exception):
    """A request to the admin API failed; the message is fit for the screen."""


class Unauthorized(AdminClientError):
    def __init__(self, status: int, message: str) -> None:
        what = "no admin token was sent" if status == 401 else "the admin token is wrong"
        super().__init__(f"Not allowed ({status}): {what}. {message}".strip())
        self.status = status


class Unreachable(AdminClientError):
    pass


class RequestFailed(AdminClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message or f"the service answered {status}")
        self.status = status


class AdminAPI(Protocol):
    """What the console needs; :class:`AdminClient` talks HTTP, tests pass a fake."""

    url: str

    def events(self) -> AsyncIterator[Json]: ...

    async def build(self, build_id: str, tail: int | None = None) -> Json: ...

    async def cancel_build(self, build_id: str) -> Json: ...

    async def stop_server(self, user: str, server_name: str = "") -> Json: ...

    async def remove_prebuild(self, name: str) -> Json: ...

    async def add_ban(self, kind: str, pattern: str, reason: str) -> Json: ...

    async def remove_ban(self, ban_id: int) -> Json: ...

    async def set_repo_quota(self, pattern: str, quota: int, expires_in: float | None) -> Json: ...

    async def clear_repo_quota(self, pattern: str) -> Json: ...

    async def set_pod_quota(self, quota: int, expires_in: float | None) -> Json: ...

    async def clear_pod_quota(self) -> Json: ...

    async def close(self) -> None: ...


def default_actor() -> str:
    """Who the audit log names for this console's changes: ``user@host``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "console"
    return f"{user}@{socket.gethostname()}"


class AdminClient:
    """The admin API at ``url`` (the service's base URL, e.g. ``https://binder.example.org/``)."""

    def __init__(self, url: str, token: str, *, actor: str | None = None) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._api = self.url + "api/admin/"
        self._headers = {
            "Authorization": f"Bearer {token}",
            "X-Swarmbinder-Actor": actor or default_actor(),
        }
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, body: Json | None = None) -> Json:
        try:
            async with self._client().request(
                method, self._api + path, json=body, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise Unreachable(f"Cannot reach {self.url}: {error or type(error).__name__}") from None
        message = _message(raw)
        if status in (401, 403):
            raise Unauthorized(status, message)
        if status >= 400:
            raise RequestFailed(status, message)
        try:
            data = json.loads(raw)
        except ValueError:
            raise Unreachable(f"{self.url} did not answer with JSON: is it swarmbinder?") from None
        return data if isinstance(data, dict) else {"items": data}

    async def get(self, path: str) -> Json:
        return await self._request("GET", path)

    async def build(self, build_id: str, tail: int | None = None) -> Json:
        query = "" if tail is None else f"?tail={tail}"
        return await self._request("GET", f"builds/{quote(build_id, safe='')}{query}")

    async def cancel_build(self, build_id: str) -> Json:
        return await self._request("DELETE", f"builds/{quote(build_id, safe='')}")

    async def stop_server(self, user: str, server_name: str = "") -> Json:
        query = f"?server_name={quote(server_name, safe='')}" if server_name else ""
        return await self._request("DELETE", f"servers/{quote(user, safe='')}{query}")

    async def remove_prebuild(self, name: str) -> Json:
        return await self._request("DELETE", f"prebuilds/{quote(name, safe='')}")

    async def add_ban(self, kind: str, pattern: str, reason: str) -> Json:
        return await self._request(
            "POST", "bans", {"kind": kind, "pattern": pattern, "reason": reason}
        )

    async def remove_ban(self, ban_id: int) -> Json:
        return await self._request("DELETE", f"bans/{ban_id}")

    async def set_repo_quota(self, pattern: str, quota: int, expires_in: float | None) -> Json:
        body: Json = {"pattern": pattern, "quota": quota}
        if expires_in:
            body["expires_in"] = expires_in
        return await self._request("POST", "quotas", body)

    async def clear_repo_quota(self, pattern: str) -> Json:
        return await self._request("DELETE", f"quotas?pattern={quote(pattern, safe='')}")

    async def set_pod_quota(self, quota: int, expires_in: float | None) -> Json:
        body: Json = {"quota": quota}
        if expires_in:
            body["expires_in"] = expires_in
        return await self._request("PUT", "quotas/pod", body)

    async def clear_pod_quota(self) -> Json:
        return await self._request("DELETE", "quotas/pod")

    async def events(self) -> AsyncIterator[Json]:
        """The live stream, once: a ``snapshot`` event, then live events, until it ends."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        try:
            async with self._client().get(
                self._api + "events", headers={"Accept": "text/event-stream"}, timeout=timeout
            ) as response:
                if response.status >= 400:
                    message = _message(await response.read())
                    if response.status in (401, 403):
                        raise Unauthorized(response.status, message)
                    raise RequestFailed(response.status, message)
                decoder = _SSEDecoder()
                while True:
                    try:
                        async with asyncio.timeout(STREAM_SILENCE_TIMEOUT):
                            chunk = await response.content.readany()
                    except TimeoutError:
                        raise Unreachable(
                            f"{self.url} went silent for {STREAM_SILENCE_TIMEOUT:g} s"
                        ) from None
                    if not chunk:
                        return
                    for event in decoder.feed(chunk):
                        yield event
        except (aiohttp.ClientError, OSError) as error:
            raise Unreachable(f"Cannot reach {self.url}: {error or type(error).__name__}") from None


def _message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return ""


class _SSEDecoder:
    """``data:`` lines to JSON objects; comments (keepalives) and other fields are skipped."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Json]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events: list[Json] = []
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")
            )
            if data:
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return events


ConnectionStateName = Literal["connecting", "connected", "reconnecting", "unauthorized"]


@dataclass(frozen=True)
class Connection:
    """Where :func:`follow` stands; ``detail`` says why (the last error) when not connected."""

    state: ConnectionStateName
    detail: str = ""
    attempt: int = 0
    retry_in: float = 0.0


async def follow(
    client: AdminAPI, *, retry_delays: Sequence[float] = RETRY_DELAYS
) -> AsyncIterator[Json | Connection]:
    """Follow the live stream for good: events, with a :class:`Connection` at every change.

    Every (re)connection starts with a fresh ``snapshot`` event, so nothing needs replaying. A
    wrong token ends the iteration after an ``unauthorized`` state: retrying cannot fix it.
    """
    attempt = 0
    yield Connection("connecting")
    while True:
        try:
            async for event in client.events():
                if event.get("type") == "snapshot":
                    attempt = 0
                    yield Connection("connected")
                yield event
            problem = "the service closed the stream"
        except Unauthorized as error:
            yield Connection("unauthorized", str(error))
            return
        except AdminClientError as error:
            problem = str(error)
        attempt += 1
        delay = retry_delays[min(attempt, len(retry_delays)) - 1]
        yield Connection("reconnecting", problem, attempt, delay)
        await asyncio.sleep(delay)
