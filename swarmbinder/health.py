"""``/health``: are the services a launch needs answering?

BinderHub's shape: ``{"ok": bool, "checks": [{"service": name, "ok": bool, ...}, ...]}``, with
503 when ``ok`` is false. A check returns a bool, or a mapping with ``ok`` and whatever else is
worth showing (e.g. the build capacity in use); a mapping with ``"_ignore_failure": True`` is
shown but does not make the whole service unhealthy (BinderHub's soft pod quota).

The checks run concurrently, each under its own timeout, so one hung dependency costs the
timeout, not the sum of them, and is named as the one that timed out. A check that raises is
"not ok" with a short reason; the details go to the log. The overall result is cached for a few
seconds and concurrent callers share the run in flight (BinderHub's ``at_most_every``), so
``/health`` cannot be used to hammer the registry or the hub. A caller that goes away does not
cancel the run the others are waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from .errors import SwarmbinderError

log = logging.getLogger(__name__)

CheckResult = bool | Mapping[str, Any]
Check = Callable[[], Awaitable[CheckResult]]

DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    checks: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def status_code(self) -> int:
        return 200 if self.ok else 503

    @property
    def failing(self) -> list[str]:
        """The services that are not ok (including ignored ones), in check order."""
        return [str(c["service"]) for c in self.checks if not c.get("ok")]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [dict(c) for c in self.checks]}


class HealthChecker:
    def __init__(
        self,
        checks: Mapping[str, Check] | Iterable[tuple[str, Check]],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``checks`` maps a service name (as shown to whoever asks) to an async callable."""
        items = checks.items() if isinstance(checks, Mapping) else checks
        self._checks: tuple[tuple[str, Check], ...] = tuple(items)
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: HealthReport | None = None
        self._cached_at = 0.0
        self._inflight: asyncio.Task[HealthReport] | None = None

    async def check(self) -> HealthReport:
        """The current health, at most ``cache_seconds`` old."""
        if self._cached is not None and self._clock() - self._cached_at < self._cache_seconds:
            return self._cached
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._run(), name="health-check")
        # shield: one impatient caller must not cancel the run everyone else awaits.
        return await asyncio.shield(self._inflight)

    async def aclose(self) -> None:
        """Cancel a run in flight (at shutdown)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> HealthReport:
        try:
            results = await asyncio.gather(
                *(self._one(name, check) for name, check in self._checks)
            )
            overall = all(r["ok"] for r in results if not r.get("_ignore_failure", False))
            report = HealthReport(overall, tuple(results))
            if not overall:
                log.warning("unhealthy: %s", ", ".join(report.failing))
            self._cached, self._cached_at = report, self._clock()
            return report
        finally:
            self._inflight = None

    async def _one(self, name: str, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                result = await check()
        except TimeoutError:
            log.warning("health check %s timed out after %gs", name, self._timeout)
            return {"service": name, "ok": False, "error": f"timed out after {self._timeout:g}s"}
        except SwarmbinderError as e:
            log.warning("health check %s failed: %s", name, e)
            return {"service": name, "ok": False, "error": e.user_message}
        except Exception as e:
            # The exception's text may carry URLs or internals; the log has it, the public
            # answer only says what kind of failure it was.
            log.warning("health check %s failed", name, exc_info=True)
            return {"service": name, "ok": False, "error": type(e).__name__}
        finally:
            elapsed = time.perf_counter() - started
            log.log(
                logging.INFO if elapsed > 0.5 else logging.DEBUG,
                "health check %s took %.3fs",
                name,
                elapsed,
            )
        if isinstance(result, bool):
            return {"service": name, "ok": result}
        if not isinstance(result, Mapping) or not isinstance(result.get("ok"), bool):
            log.error("health check %s returned %r, not a bool or a mapping with ok", name, result)
            return {"service": name, "ok": False, "error": "bad check result"}
        return {"service": name, **result}


def capacity_result(used: int, capacity: int | None, **details: Any) -> dict[str, Any]:
    """A check result for a capacity (build slots, the pod quota): not ok when full, but shown
    without failing ``/health`` (BinderHub's ``_ignore_failure``): a busy service is not down.
    ``capacity=None`` means unlimited."""
    return {
        "ok": capacity is None or used < capacity,
        "used": used,
        "capacity": capacity,
        **details,
        "_ignore_failure": True,
    }
