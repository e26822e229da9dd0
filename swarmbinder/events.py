"""Build and launch progress events, and BinderHub's EventSource wire format.

``/build/<provider>/<spec>`` answers with a ``text/event-stream`` whose every event is one
``data:`` line holding a JSON object with a ``phase`` and a ``message``. That payload is a
public API: the published ``@jupyterhub/binderhub-client`` and BinderHub's loading page read it,
so the phase names, the message texts BinderHub sends and the extra fields (``imageName`` on
``built``; ``url``, ``token`` and the ``binder_*`` keys on ``ready``; ``status_code`` on
``failed``) are kept exactly. Messages are written to a terminal as they are, so a message that
is a whole line ends with ``"\\n"``; repo2docker's Docker build output arrives in fragments (a
``Step 1/3 : ...`` event followed by a ``"\\n"`` event) and is passed through untouched.

A stream from a fresh build reads::

    waiting, fetching..., building..., pushing..., built, launching..., ready

and one from a cached image starts at ``built``. It ends at ``ready`` or ``failed``; between
events a ``:keepalive`` comment keeps proxies from closing an idle connection.

An event's message and fields are scrubbed of the process's known secrets
(:data:`~swarmbinder.scrub.DEFAULT_SCRUBBER`) when the event is made. One event goes to every
watcher of a build, so that is once per event however many watch; and whatever is taken from
an event later (a failure reason, a stored line, the wire frame) is already clean.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .scrub import DEFAULT_SCRUBBER

T = TypeVar("T")

__all__ = [
    "KEEPALIVE_FRAME",
    "KEEPALIVE_INTERVAL",
    "MSG_BUILT",
    "MSG_DONE_BUILT",
    "MSG_DONE_FOUND",
    "MSG_FOUND_BUILT",
    "MSG_LAUNCHING",
    "MSG_WAITING",
    "SSE_HEADERS",
    "TERMINAL_BUILD_PHASES",
    "BuildEvent",
    "Phase",
    "SSEDecoder",
    "closing",
    "ending",
    "parse_repo2docker_line",
    "parse_sse",
    "sse_frame",
]


class Phase(enum.StrEnum):
    """The ``phase`` of an event, as binderhub-client knows them."""

    WAITING = "waiting"
    FETCHING = "fetching"
    BUILDING = "building"
    PUSHING = "pushing"
    BUILT = "built"
    LAUNCHING = "launching"
    READY = "ready"
    FAILED = "failed"
    UNKNOWN = "unknown"


#: A build is over once one of these has been seen.
TERMINAL_BUILD_PHASES: frozenset[Phase] = frozenset({Phase.BUILT, Phase.FAILED})

# BinderHub's own texts (binderhub/builder.py), kept so logs and tests read the same.
MSG_WAITING = "Waiting for build to start...\n"
MSG_BUILT = "Built image, launching...\n"
MSG_FOUND_BUILT = "Found built image, launching...\n"
MSG_LAUNCHING = "Launching server...\n"
#: ``ready`` texts in build-only mode, where nothing is launched.
MSG_DONE_BUILT = "Done! Image built\n"
MSG_DONE_FOUND = "Done! Found built image\n"

#: Sent between events so proxies do not drop an idle stream; a ``:`` line is a comment.
KEEPALIVE_FRAME = b":keepalive\n\n"
#: Seconds of silence before a keepalive frame. Common proxy idle timeouts are 30 s or more.
KEEPALIVE_INTERVAL = 20
#: Headers of every event-stream response (``/build``, its refusals, the admin API's events).
SSE_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        # nginx and friends buffer responses unless told not to; an event stream must not wait.
        "X-Accel-Buffering": "no",
    }
)

_RESERVED = frozenset({"phase", "message"})

# Phases a build log may claim. A log line can never announce built, launching or ready: only
# the build manager and the launcher decide those, so a repository cannot fake a launch.
_LOG_PHASES: Mapping[str, Phase] = {
    "fetching": Phase.FETCHING,
    "building": Phase.BUILDING,
    "pushing": Phase.PUSHING,
    "failed": Phase.FAILED,
    "failure": Phase.FAILED,
}


def _line(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


@dataclass(frozen=True)
class BuildEvent:
    """One event of a build or launch stream.

    ``fields`` are the payload keys besides ``phase`` and ``message``, in wire order. They are
    copied into a read-only mapping, so an event can be shared between watchers safely. The
    message and the fields' strings are scrubbed of known secrets.
    """

    phase: Phase
    message: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        clash = _RESERVED.intersection(self.fields)
        if clash:
            raise ValueError(f"fields may not set {sorted(clash)}")
        object.__setattr__(self, "message", DEFAULT_SCRUBBER.scrub(self.message))
        fields = DEFAULT_SCRUBBER.scrub_obj(dict(self.fields))
        object.__setattr__(self, "fields", MappingProxyType(fields))

    def to_wire(self) -> dict[str, Any]:
        """The JSON object BinderHub sends for this event."""
        return {"phase": self.phase.value, "message": self.message, **self.fields}

    @functools.cached_property
    def sse_frame(self) -> bytes:
        """This event as an EventSource frame (see :func:`sse_frame`), encoded once: a build's
        log line goes to every watcher, and encoding it per watcher was a measurable share of
        a thousand watchers' time. (Events are immutable, so the frame never goes stale.)"""
        body = json.dumps(self.to_wire(), separators=(",", ":"), allow_nan=False)
        return b"data: " + body.encode("ascii") + b"\n\n"

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any]) -> BuildEvent:
        """Read a payload back (a client's view); an unknown or missing phase is ``unknown``."""
        raw_phase = payload.get("phase")
        try:
            phase = Phase(str(raw_phase).lower()) if raw_phase is not None else Phase.UNKNOWN
        except ValueError:
            phase = Phase.UNKNOWN
        message = payload.get("message")
        extra = {k: v for k, v in payload.items() if k not in _RESERVED}
        return cls(phase, message if isinstance(message, str) else "", extra)

    @classmethod
    def log(cls, phase: Phase, text: str) -> BuildEvent:
        """One whole line of log text; a missing trailing newline is added."""
        return cls(phase, _line(text))

    @classmethod
    def waiting(cls, position: int | None = None, message: str = MSG_WAITING) -> BuildEvent:
        """Waiting for the build to start; ``position`` is the 1-based place in the build queue.

        The position also travels as a ``position`` field, which BinderHub's clients ignore.
        """
        fields = {} if position is None else {"position": position}
        return cls(Phase.WAITING, _line(message), fields)

    @classmethod
    def built(cls, image_name: str, message: str = MSG_BUILT) -> BuildEvent:
        """The image exists; pass :data:`MSG_FOUND_BUILT` when it was found, not built."""
        return cls(Phase.BUILT, _line(message), {"imageName": image_name})

    @classmethod
    def image_ready(cls, image_name: str, message: str = MSG_DONE_BUILT) -> BuildEvent:
        """The last event in build-only mode: ``ready`` with the image and no server."""
        return cls(Phase.READY, _line(message), {"imageName": image_name})

    @classmethod
    def failed(cls, message: str, status_code: int | None = 500) -> BuildEvent:
        """The build or launch failed; the stream ends here. ``None`` omits ``status_code``."""
        fields = {} if status_code is None else {"status_code": status_code}
        return cls(Phase.FAILED, _line(message), fields)

    @classmethod
    def launching(cls, message: str = MSG_LAUNCHING) -> BuildEvent:
        return cls(Phase.LAUNCHING, _line(message))

    @classmethod
    def ready(
        cls,
        url: str,
        token: str,
        image: str,
        repo_url: str,
        binder_ref_url: str,
        binder_launch_host: str,
        binder_request: str,
        binder_persistent_request: str,
        binder_client_ip: str = "",
        message: str | None = None,
    ) -> BuildEvent:
        """The server runs at ``url``; fields in the order BinderHub's launcher sends them."""
        fields = {
            "image": image,
            "repo_url": repo_url,
            "token": token,
            "binder_ref_url": binder_ref_url,
            "binder_launch_host": binder_launch_host,
            "binder_request": binder_request,
            "binder_persistent_request": binder_persistent_request,
            "binder_client_ip": binder_client_ip,
            "url": url,
        }
        text = f"server running at {url}\n" if message is None else _line(message)
        return cls(Phase.READY, text, fields)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a browser's JSON.parse would reject the whole event.
    raise ValueError(f"not JSON: {name}")


def parse_repo2docker_line(line: str | bytes) -> BuildEvent:
    """Turn one line of ``repo2docker --json-logs`` output into an event. Never raises.

    repo2docker logs ``{"message": ..., "phase": "fetching" | "building" | "pushing" |
    "failed"}``, sometimes with no phase, and while pushing with a ``progress`` map of layer
    states, which is kept. Other keys (``layers``, ``exc_info``, ``taskName``) are dropped. A
    raw Docker build line (``stream`` or ``error``) is read the way repo2docker would read it.
    A line that is not a JSON object, or claims any other phase, becomes ``unknown``. Failure
    messages end with a newline, as BinderHub's do.
    """
    try:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.rstrip("\r\n")
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            return BuildEvent(Phase.UNKNOWN, text + "\n")
        return _from_log_object(obj)
    except Exception:  # a log line must never take the build watcher down
        return BuildEvent(Phase.UNKNOWN, "(unreadable build log line)\n")


def _from_log_object(obj: dict[str, Any]) -> BuildEvent:
    raw_message: object = obj.get("message", obj.get("stream"))
    raw_phase: object = obj.get("phase")
    if raw_message is None and obj.get("error") is not None:
        raw_message, raw_phase = obj["error"], "failed"
    if raw_message is None:
        message = ""
    elif isinstance(raw_message, str):
        message = raw_message
    else:
        message = json.dumps(raw_message, allow_nan=False)
    phase = _LOG_PHASES.get(str(raw_phase).lower(), Phase.UNKNOWN)
    if phase is Phase.FAILED:
        return BuildEvent(Phase.FAILED, _line(message))
    progress = obj.get("progress")
    if phase is Phase.PUSHING and isinstance(progress, dict) and _serialisable(progress):
        return BuildEvent(phase, message, {"progress": progress})
    return BuildEvent(phase, message)


def _serialisable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def sse_frame(event: BuildEvent) -> bytes:
    """One EventSource frame: ``data: <compact JSON>`` and a blank line.

    ``json.dumps`` escapes newlines and non-ASCII, so the JSON stays on one line of ASCII.
    """
    return event.sse_frame


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Incremental ``text/event-stream`` reader that returns each event's JSON ``data``.

    Follows the EventSource rules that matter here: lines end with CRLF, CR or LF; ``:`` lines
    are comments; several ``data`` lines join with newlines; a blank line ends an event; an
    event without data is not delivered. Other fields (``event``, ``id``, ``retry``) are read
    and ignored, as BinderHub sends none.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the events they complete. Raises ``ValueError`` on non-JSON data."""
        self._buffer += chunk
        events: list[dict[str, Any]] = []
        pos = 0
        for match in _LINE_END.finditer(self._buffer):
            # a CR at the very end may be the first half of a CRLF still in transit
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break
            self._line(self._buffer[pos : match.start()].decode("utf-8", "replace"), events)
            pos = match.end()
        self._buffer = self._buffer[pos:]
        return events

    def close(self) -> list[dict[str, Any]]:
        """End of stream: a held-back CR ends its line; an unterminated event is dropped."""
        events: list[dict[str, Any]] = []
        if self._buffer.endswith(b"\r"):
            self._line(self._buffer[:-1].decode("utf-8", "replace"), events)
        self._buffer = b""
        self._data = []
        return events

    def _line(self, line: str, events: list[dict[str, Any]]) -> None:
        if not line:
            if self._data:
                payload = json.loads("\n".join(self._data))
                self._data = []
                if not isinstance(payload, dict):
                    raise ValueError(f"event data is not a JSON object: {payload!r}")
                events.append(payload)
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))


def parse_sse(stream: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a whole recorded stream; an unterminated last event is dropped."""
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


@asynccontextmanager
async def closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``contextlib.aclosing`` for any async iterator: generators get ``aclose``d at once."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def ending(
    events: AsyncIterator[BuildEvent], success: Collection[Phase]
) -> BuildEvent | None:
    """For a reader that waits only for the end (a warm pool's build or launch): the first
    event in a ``success`` phase or ``failed``, None if the stream stops without one. The
    stream is closed either way, so a launch or watch nobody reads on is let go at once."""
    async with closing(events) as stream:
        async for event in stream:
            if event.phase in success or event.phase is Phase.FAILED:
                return event
    return None
