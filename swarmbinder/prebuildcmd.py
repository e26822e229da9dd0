"""``swarmbinder prebuild SPEC... | --file FILE``: the specs, then a prebuild run here (over one
of :mod:`swarmbinder.prebuild.backends`) or as a job on the swarm, shown as it goes.

With ``--as-job`` the run happens in a job (:mod:`swarmbinder.prebuild.jobs`) and this command
follows it: the job's JSON lines are turned back into the same display as a run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .buildjob import connect_swarm
from .config import Config
from .errors import SpecError, SwarmbinderError
from .prebuild.backends import ServiceBackend, SwarmBackend
from .prebuild.jobs import JobTarget, follow_job, remove_old_jobs, start_job
from .prebuild.run import Item, Report, run_prebuild
from .prebuilddisplay import Display, make_display
from .swarm import SwarmClient

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
    async with _shown(display):
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
async def _shown(display: Display, interval: float = 0.25) -> AsyncIterator[None]:
    """Show the display while the block runs, redrawn every ``interval`` seconds (elapsed
    times move on their own), and give the terminal back however the block ends."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            display.refresh()

    display.start()
    task = asyncio.create_task(tick(), name="prebuild-display")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        display.stop()


async def _main_job(options: Options, out: TextIO) -> int:
    config = options.config
    if options.url:
        target = JobTarget(url=options.url, token=options.token)
    else:
        target = JobTarget(config=config)
    network = options.job_network or (config.builds.build_network if config else "host")
    async with connect_swarm(config) if config is not None else SwarmClient.connect() as swarm:
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

        async with _shown(display):
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
