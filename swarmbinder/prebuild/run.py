"""One prebuild run: every spec's progress (:class:`Item`), the run's result (:class:`Report`)
and :func:`run_prebuild`, which resolves, checks and builds over a :class:`Backend`.

Every spec is resolved before anything is built: a spec that does not resolve is reported and
the others go on. Images already in the registry are skipped. The run succeeds only when every
image is in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import SwarmbinderError
from ..events import MSG_DONE_FOUND, BuildEvent, Phase

#: Specs resolved at once: resolution is API calls or ``git ls-remote``, cheap but not free.
RESOLVE_CONCURRENCY = 8


# --- progress --------------------------------------------------------------------------------


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


# --- the run ---------------------------------------------------------------------------------


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
