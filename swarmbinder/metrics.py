"""Prometheus metrics and the launch event log.

BinderHub's metrics keep their exact names, types, labels and buckets (``binderhub/builder.py``)
so existing Grafana dashboards work unchanged. Note that prometheus_client exposes a Counter
named ``binderhub_build_count`` as ``binderhub_build_count_total``, exactly as BinderHub's does:

==================================  =========  ===========================  =====================
name                                type       labels                       buckets (seconds)
==================================  =========  ===========================  =====================
binderhub_build_time_seconds        histogram  status                       60 … 7200, +Inf
binderhub_launch_time_seconds       histogram  status, retries              2 … 600, +Inf
binderhub_build_count               counter    status, provider, repo
binderhub_launch_count              counter    status, provider, repo
binderhub_inprogress_builds         gauge
binderhub_inprogress_launches       gauge
==================================  =========  ===========================  =====================

``status`` is ``success``/``failure`` for builds; for launches also ``pod_quota`` and
``repo_quota`` (a refused launch, counted but not timed), and ``retries`` is the number of
retries of a successful launch or ``-1`` for a failed one, as in BinderHub. ``provider`` is the
provider's name (``GitHub``), ``repo`` the repository URL. BinderHub's ``repo`` has no bound on
its values; here at most ``repo_label_limit`` repositories have one of their own at a time (the
most recently counted, see :class:`RepoLabels`) and the others are counted under ``other``, so
a flood of distinct repositories cannot grow the series without bound. A limit of 0 (or
``repo_label=False``) sends ``""`` for every repository, keeping the label set.

swarmbinder's own metrics use the ``swarmbinder_`` namespace: the build queue, the running
builds and user servers, and the Swarm nodes by state and availability.

Every metric lives in the :class:`Metrics` object's own ``CollectorRegistry``, so tests and
several apps in one process never share counts. In-progress gauges are only changed through
:class:`Tracker`, which decrements exactly once whatever happens (success, failure, an exception,
cancellation), so they return to zero.

The launch event is one JSON line per successful launch with the fields of BinderHub's launch
schema (``binderhub.jupyter.org/launch`` version 6), written to the ``swarmbinder.events.launch``
logger and, if given a path, appended to a file by a background thread.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import logging.handlers
import queue
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .buildstatus import BuildOutcome
from .diskuse import latest_registry_size, node_disk
from .errors import QuotaExceeded

log = logging.getLogger(__name__)

# Builds and launches take very different times, hence BinderHub's two bucket sets.
BUILD_BUCKETS = (60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
LAUNCH_BUCKETS = (2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))

LAUNCH_SCHEMA = "binderhub.jupyter.org/launch"
LAUNCH_SCHEMA_VERSION = 6
LAUNCH_EVENT_LOGGER = "swarmbinder.events.launch"

#: BinderHub's provider names by URL prefix (the launch schema's ``provider`` enum).
PROVIDER_NAMES: Mapping[str, str] = {
    "gh": "GitHub",
    "gist": "Gist",
    "gl": "GitLab",
    "git": "Git",
    "zenodo": "Zenodo",
    "figshare": "Figshare",
    "hydroshare": "Hydroshare",
    "dataverse": "Dataverse",
    "ckan": "CKAN",
}


#: The ``repo`` label of the repositories beyond ``repo_label_limit``.
OTHER_REPOS = "other"
#: The default ``repo_label_limit`` (the option ``metrics_repo_label_limit``).
DEFAULT_REPO_LABEL_LIMIT = 1000


class RepoLabels:
    """Bounded values of the ``repo`` label: the ``limit`` repositories most recently counted
    have one each, the others share :data:`OTHER_REPOS`.

    While there is room a repository gets its own label at once. Once full, a repository is
    counted under ``other`` when first seen and remembered as a candidate (the last ``limit``
    candidates are remembered); counted again for the same ``kind`` (a second build, a second
    launch: one request counts a build and a launch) while remembered, it takes the label of
    the least recently counted repository, whose series ``on_evict`` removes (Prometheus sees
    them end; their past samples stay). So a repository in use keeps its label, and a flood of
    one-off repositories neither adds series nor pushes the used ones out.
    """

    def __init__(self, limit: int, on_evict: Callable[[str], None]) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self._limit = limit
        self._on_evict = on_evict
        self._labelled: OrderedDict[str, None] = OrderedDict()
        self._candidates: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def labelled(self) -> list[str]:
        """The repositories with a label of their own, least recently counted first."""
        return list(self._labelled)

    def label(self, repo: str, kind: str = "") -> str:
        """The label to count ``repo`` under now, in a count of ``kind``."""
        if repo in self._labelled:
            self._labelled.move_to_end(repo)
            return repo
        if len(self._labelled) < self._limit:
            self._labelled[repo] = None
            return repo
        candidate = (kind, repo)
        if candidate in self._candidates:
            del self._candidates[candidate]
            evicted, _ = self._labelled.popitem(last=False)
            self._on_evict(evicted)
            self._labelled[repo] = None
            return repo
        self._candidates[candidate] = None
        if len(self._candidates) > self._limit:
            self._candidates.popitem(last=False)
        return OTHER_REPOS


class LaunchStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    POD_QUOTA = "pod_quota"
    REPO_QUOTA = "repo_quota"


class Tracker:
    """One build or launch in progress: counted in its gauge until :meth:`finish`."""

    def __init__(
        self,
        gauge: Gauge,
        on_finish: Callable[[str, float, int], None],
        clock: Callable[[], float],
    ) -> None:
        self._gauge = gauge
        self._on_finish = on_finish
        self._clock = clock
        self._started = clock()
        self.status: str | None = None
        gauge.inc()

    @property
    def finished(self) -> bool:
        return self.status is not None

    def finish(self, status: str, *, retries: int = 0) -> None:
        """Record the outcome; later calls are ignored, so a ``finally`` can always call it."""
        if self.status is not None:
            return
        self.status = status
        self._gauge.dec()
        self._on_finish(status, self._clock() - self._started, retries)

    __call__ = finish


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        repo_label: bool = True,
        repo_label_limit: int = DEFAULT_REPO_LABEL_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        scrub: Callable[[str], str] = str,
    ) -> None:
        """``scrub`` cleans the ``repo`` label, the one label whose text a user chooses: a
        repository URL can carry credentials. ``repo_label_limit``: repositories with a
        ``repo`` label of their own at a time (:class:`RepoLabels`); 0 turns the label off."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._repo_labels = (
            RepoLabels(repo_label_limit, self._remove_repo)
            if repo_label and repo_label_limit > 0
            else None
        )
        #: Per labelled repository, the counters and (status, provider) it has series in.
        self._repo_series: dict[str, set[tuple[Counter, str, str]]] = {}
        self._scrub = scrub
        self._clock = clock
        r = self.registry
        self.build_time = Histogram(
            "binderhub_build_time_seconds",
            "Histogram of build times",
            ["status"],
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.launch_time = Histogram(
            "binderhub_launch_time_seconds",
            "Histogram of launch times",
            ["status", "retries"],
            buckets=LAUNCH_BUCKETS,
            registry=r,
        )
        self.build_count = Counter(
            "binderhub_build_count",
            "Counter of builds by repo",
            ["status", "provider", "repo"],
            registry=r,
        )
        self.launch_count = Counter(
            "binderhub_launch_count",
            "Counter of launches by repo",
            ["status", "provider", "repo"],
            registry=r,
        )

        def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, documentation, labels, registry=r)

        self.builds_inprogress = gauge(
            "binderhub_inprogress_builds", "Builds currently in progress"
        )
        self.launches_inprogress = gauge(
            "binderhub_inprogress_launches", "Launches currently in progress"
        )
        self.build_queue_length = gauge(
            "swarmbinder_build_queue_length", "Builds waiting for a free build slot"
        )
        self.builds_running = gauge(
            "swarmbinder_builds_running", "Build services currently running on the swarm"
        )
        self.user_servers_running = gauge(
            "swarmbinder_user_servers_running", "User servers currently running on the swarm"
        )
        self.launch_queue_length = gauge(
            "swarmbinder_launch_queue_length",
            "Launches waiting for a free launch slot (concurrent_launch_limit)",
        )
        self.launch_limit = gauge(
            "swarmbinder_concurrent_launch_limit",
            "User servers this replica starts at once; 0: no limit",
        )
        self.warm_pool_servers = gauge(
            "swarmbinder_warm_pool_servers",
            "Warm pool servers by pool (its warm_pools pattern) and state: size (wanted), "
            "waiting, starting, handed_out_last_hour",
            ["pool", "state"],
        )
        self.swarm_nodes = gauge(
            "swarmbinder_swarm_nodes",
            "Swarm nodes by state (ready, down, ...) and availability (active, pause, drain)",
            ["state", "availability"],
        )
        self.node_disk_used = gauge(
            "swarmbinder_node_disk_used_bytes",
            "Bytes in use on the filesystem of each node's Docker data root, as node "
            "housekeeping last measured it",
            ["node"],
        )
        self.node_disk_total = gauge(
            "swarmbinder_node_disk_total_bytes",
            "Size in bytes of the filesystem of each node's Docker data root",
            ["node"],
        )
        self.registry_size = gauge(
            "swarmbinder_registry_size_bytes",
            "Bytes the registry's storage held after its last garbage collection",
        )
        # Series for every outcome exist from the start, so "no failures" reads as 0 and a
        # rate() over them works before the first failure.
        for outcome in BuildOutcome:
            self.build_time.labels(status=outcome)
        self.launch_time.labels(status=LaunchStatus.SUCCESS, retries="0")
        self.launch_time.labels(status=LaunchStatus.FAILURE, retries="-1")

    def _count(self, counter: Counter, status: str, provider: str, repo: str) -> None:
        """One more in ``counter`` for ``repo``, under the label it has at this moment (a
        build counts towards keeping a build label, a launch or refusal a launch label)."""
        if self._repo_labels is None:
            counter.labels(status=status, provider=provider, repo="").inc()
            return
        kind = "build" if counter is self.build_count else "launch"
        label = self._repo_labels.label(self._scrub(repo), kind)
        counter.labels(status=status, provider=provider, repo=label).inc()
        if label != OTHER_REPOS:
            self._repo_series.setdefault(label, set()).add((counter, status, provider))

    def _remove_repo(self, repo: str) -> None:
        for counter, status, provider in self._repo_series.pop(repo, ()):
            counter.remove(status, provider, repo)

    def start_build(self, provider: str, repo: str) -> Tracker:
        """A build watched by one request; :meth:`Tracker.finish` with a
        :class:`~swarmbinder.buildstatus.BuildOutcome`."""

        def done(status: str, elapsed: float, retries: int) -> None:
            self.build_time.labels(status=status).observe(elapsed)
            self._count(self.build_count, status, provider, repo)

        return Tracker(self.builds_inprogress, done, self._clock)

    def start_launch(self, provider: str, repo: str) -> Tracker:
        """A launch; finish with a :class:`LaunchStatus` and, on success, the retries made."""

        def done(status: str, elapsed: float, retries: int) -> None:
            retries_label = str(retries) if status == LaunchStatus.SUCCESS else "-1"
            self.launch_time.labels(status=status, retries=retries_label).observe(elapsed)
            self._count(self.launch_count, status, provider, repo)

        return Tracker(self.launches_inprogress, done, self._clock)

    def track_build(self, provider: str, repo: str) -> AbstractContextManager[Tracker]:
        """``with`` form of :meth:`start_build`: success when the block ends normally without
        having finished the tracker, failure when anything (cancellation included) escapes."""
        start = partial(self.start_build, provider, repo)
        return _tracking(start, success=BuildOutcome.SUCCESS, failure=BuildOutcome.FAILURE)

    def track_launch(self, provider: str, repo: str) -> AbstractContextManager[Tracker]:
        start = partial(self.start_launch, provider, repo)
        return _tracking(start, success=LaunchStatus.SUCCESS, failure=LaunchStatus.FAILURE)

    def count_quota_refusal(self, provider: str, repo: str, scope: str) -> None:
        """A launch refused by a quota (``scope`` of :class:`~swarmbinder.errors.QuotaExceeded`),
        counted as BinderHub does: in ``binderhub_launch_count`` with the quota as status."""
        self._count(self.launch_count, scope, provider, repo)

    def watch_pools(self, status: Callable[[], Sequence[_PoolStatus]]) -> None:
        """Serve ``swarmbinder_warm_pool_servers`` from ``status`` (the pools' manager), read
        when /metrics is scraped."""
        for pattern in sorted({one.pattern for one in status()}):
            for state in POOL_STATES:

                def read(pattern: str = pattern, state: str = state) -> float:
                    return float(
                        sum(getattr(one, state) for one in status() if one.pattern == pattern)
                    )

                self.warm_pool_servers.labels(pool=pattern, state=state).set_function(read)

    def set_swarm_nodes(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the node counts: ``{(state, availability): n}``; combinations that are gone
        are dropped rather than left at their last value."""
        self.swarm_nodes.clear()
        for (state, availability), n in counts.items():
            self.swarm_nodes.labels(state=state, availability=availability).set(n)

    def set_disks(self, nodes: Mapping[str, Mapping[str, str]]) -> None:
        """Disk use from the nodes' labels, ``{hostname: labels}``; a node never measured (or
        gone) has no series, and the registry's size stays unset until first measured."""
        self.node_disk_used.clear()
        self.node_disk_total.clear()
        for hostname, labels in nodes.items():
            disk = node_disk(labels)
            if disk is not None:
                self.node_disk_used.labels(node=hostname).set(disk.used)
                self.node_disk_total.labels(node=hostname).set(disk.total)
        size = latest_registry_size(nodes.values())
        if size is not None:
            self.registry_size.set(size.size)


@contextmanager
def _tracking(start: Callable[[], Tracker], *, success: str, failure: str) -> Iterator[Tracker]:
    # started on entering the block, so the time counted is the block's
    tracker = start()
    try:
        yield tracker
    except BaseException:
        tracker.finish(failure)
        raise
    else:
        tracker.finish(success)


# -- the launch event ----------------------------------------------------------------------------


class LaunchFields(TypedDict):
    """What a launch event says of one launch (BinderHub's schema, less its capsule)."""

    provider: str
    spec: str
    ref: str
    build_token: bool
    origin: str
    request_origin: str


def launch_event(
    *, now: datetime.datetime | None = None, **fields: Unpack[LaunchFields]
) -> dict[str, Any]:
    """BinderHub's launch event: its capsule (timestamp, schema, version) and its fields."""
    now = now or datetime.datetime.now(tz=datetime.UTC)
    return {
        "timestamp": now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "schema": LAUNCH_SCHEMA,
        "version": LAUNCH_SCHEMA_VERSION,
        "provider": fields["provider"],
        "spec": fields["spec"],
        "ref": fields["ref"],
        "status": "success",
        "build_token": fields["build_token"],
        "origin": fields["origin"],
        "request_origin": fields["request_origin"],
    }


class LaunchEventLog:
    """Writes launch events as JSON lines to a logger, and optionally to a file.

    The file is opened in append mode and written by a :class:`~logging.handlers.QueueListener`
    thread, so a slow disk never holds up the event loop. Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        logger: logging.Logger | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger(LAUNCH_EVENT_LOGGER)
        self.logger.setLevel(logging.INFO)
        self._clock = clock
        self._queue_handler: logging.handlers.QueueHandler | None = None
        self._listener: logging.handlers.QueueListener | None = None
        if path is not None:
            file_handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
            file_handler.setFormatter(logging.Formatter("%(message)s"))
            events: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
            self._queue_handler = logging.handlers.QueueHandler(events)
            self._listener = logging.handlers.QueueListener(events, file_handler)
            self._listener.start()
            self.logger.addHandler(self._queue_handler)

    def emit(self, **fields: Unpack[LaunchFields]) -> dict[str, Any]:
        provider = fields["provider"]
        if provider not in PROVIDER_NAMES.values():
            # The schema would reject it; a dashboard keyed on provider should learn of it.
            log.warning("launch event with a provider outside the schema: %r", provider)
        event = launch_event(now=self._clock() if self._clock else None, **fields)
        self.logger.info(json.dumps(event, ensure_ascii=False))
        return event

    def close(self) -> None:
        """Flush and close the file (if any). Safe to call more than once."""
        if self._queue_handler is not None:
            self.logger.removeHandler(self._queue_handler)
            self._queue_handler = None
        if self._listener is not None:
            self._listener.stop()
            for handler in self._listener.handlers:
                handler.close()
            self._listener = None


# -- the launch flow's observer -------------------------------------------------------------------


class _Repo(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def repo_url(self) -> str: ...


#: What ``swarmbinder_warm_pool_servers`` counts, as PoolStatus names them.
POOL_STATES = ("size", "waiting", "starting", "handed_out_last_hour")


class _PoolStatus(Protocol):
    @property
    def pattern(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def starting(self) -> int: ...

    @property
    def handed_out_last_hour(self) -> int: ...


class _Build(_Repo, Protocol):
    @property
    def ref(self) -> str: ...

    @property
    def image(self) -> str: ...


class _Resolved(Protocol):
    @property
    def build(self) -> _Build: ...


class _Request(Protocol):
    @property
    def spec(self) -> str: ...

    @property
    def have_build_token(self) -> bool: ...

    @property
    def origin(self) -> str: ...

    @property
    def request_origin(self) -> str: ...


class MetricsObserver:
    """What :class:`~swarmbinder.launch_flow.LaunchFlow` reports, turned into metrics and
    launch events (its ``FlowObserver``)."""

    def __init__(
        self,
        metrics: Metrics,
        events: LaunchEventLog | None = None,
        *,
        provider_names: Mapping[str, str] = PROVIDER_NAMES,
    ) -> None:
        self.metrics = metrics
        self.events = events
        self._names = provider_names
        self._launch_listeners: list[Callable[[str], None]] = []

    def listen_launched(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(image)`` for each launch that reaches ``ready``."""
        self._launch_listeners.append(listener)

    def provider_name(self, prefix: str) -> str:
        return self._names.get(prefix, prefix)

    def build_started(self, build: _Build) -> Callable[[str], None]:
        return self.metrics.start_build(self.provider_name(build.provider), build.repo_url).finish

    def launch_started(self, build: _Build) -> Callable[[str], None]:
        return self.metrics.start_launch(self.provider_name(build.provider), build.repo_url).finish

    def quota_refused(self, build: _Repo, refusal: QuotaExceeded) -> None:
        """Count a launch refused by a quota (``Quotas.gate``'s ``on_refused``)."""
        name = self.provider_name(build.provider)
        self.metrics.count_quota_refusal(name, build.repo_url, refusal.scope)

    def launched(self, request: _Request, resolved: _Resolved) -> None:
        for listener in self._launch_listeners:
            listener(resolved.build.image)
        if self.events is None:
            return
        self.events.emit(
            provider=self.provider_name(resolved.build.provider),
            spec=request.spec,
            ref=resolved.build.ref,
            build_token=request.have_build_token,
            origin=request.origin,
            request_origin=request.request_origin,
        )
