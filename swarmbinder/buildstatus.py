"""A build's status as it goes (:class:`BuildStatus`) and how it went (:class:`BuildOutcome`).

Two words, two meanings. The status is where a build is in its life; it is on the build's
service as a label, in the store's build records, in the admin API (``phase``) and in the
console. The outcome is what a request that waited for a build saw at the end, in BinderHub's
words, as the ``status`` label of ``binderhub_build_*`` metrics. Every value is read by
something outside this process (a Swarm label, a database row, a dashboard), so none changes.
"""

from __future__ import annotations

import enum


class BuildStatus(enum.StrEnum):
    """Where a build is: queued, running, then built, failed or cancelled."""

    #: Waiting for a build slot (``concurrent_build_limit``).
    QUEUED = "queued"
    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"
    #: Stopped by an administrator.
    CANCELLED = "cancelled"


class BuildOutcome(enum.StrEnum):
    """How a build ended for the request that waited for it, as BinderHub's metrics count it."""

    SUCCESS = "success"
    #: It failed, or the request stopped waiting (the client went away, an error).
    FAILURE = "failure"
