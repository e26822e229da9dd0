"""What a one-shot Swarm service is made of, as swarmbinder asks the engine for it: the job's
spec (image, command, labels, mounts, secrets, placement) and the log rotation every service
gets. Frozen records turned into the Engine API's JSON by ``to_api``; the engine adapter
(:mod:`swarmbinder.swarm`) sends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class VolumeMount:
    """A named volume of the node the task runs on (the registry's, for its garbage collection)."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class SecretMount:
    """A Swarm secret as a file in the container (``target`` may be an absolute path)."""

    secret_id: str
    secret_name: str
    target: str
    mode: int = 0o444


@dataclass(frozen=True)
class LogRotation:
    """Docker's json-file driver with rotation, for every service swarmbinder creates.

    Without it a build's (or a hostile repository's) endless output grows one file on the
    node's disk until the disk is full: the engine's default json-file driver never rotates.
    """

    max_bytes: int
    max_files: int

    def to_api(self) -> dict[str, Any]:
        return {
            "Name": "json-file",
            "Options": {"max-size": str(self.max_bytes), "max-file": str(self.max_files)},
        }


#: Rotation when nothing else is configured (the defaults of service_log_max_size and
#: service_log_max_files). Large, because a build's log is followed while it is written and
#: the engine's reader can lose lines when the file rotates under it (a 5 MB quoted line was
#: lost at 10 MB).
DEFAULT_LOG_ROTATION = LogRotation(max_bytes=64 * 1024 * 1024, max_files=3)


@dataclass(frozen=True)
class JobSpec:
    """A one-shot Swarm service: ``replicated-job`` mode, one completion, never restarted; with
    ``global_job``, ``global-job`` mode: one task on every node its constraints allow."""

    name: str
    image: str
    args: Sequence[str]
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[BindMount | VolumeMount] = ()
    constraints: Sequence[str] = ()
    networks: Sequence[str] = ()
    memory_limit: int | None = None
    #: Replace the image's entrypoint; None keeps it.
    command: Sequence[str] | None = None
    secrets: Sequence[SecretMount] = ()
    global_job: bool = False

    def to_api(self) -> dict[str, Any]:
        container: dict[str, Any] = {
            "Image": self.image,
            "Args": list(self.args),
            "Labels": dict(self.labels),
        }
        if self.command is not None:
            container["Command"] = list(self.command)
        if self.env:
            container["Env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.mounts:
            container["Mounts"] = [
                {
                    "Type": "volume" if isinstance(m, VolumeMount) else "bind",
                    "Source": m.source,
                    "Target": m.target,
                    "ReadOnly": m.read_only,
                }
                for m in self.mounts
            ]
        if self.secrets:
            container["Secrets"] = secrets_api(self.secrets)
        template: dict[str, Any] = {
            "ContainerSpec": container,
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        }
        if self.constraints:
            template["Placement"] = {"Constraints": list(self.constraints)}
        if self.memory_limit:
            template["Resources"] = {"Limits": {"MemoryBytes": int(self.memory_limit)}}
        if self.networks:
            template["Networks"] = [{"Target": n} for n in self.networks]
        return {
            "Name": self.name,
            "Labels": dict(self.labels),
            "TaskTemplate": template,
            "Mode": {"GlobalJob": {}}
            if self.global_job
            else {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
        }


def secrets_api(secrets: Sequence[SecretMount]) -> list[dict[str, Any]]:
    """The Engine API's ``ContainerSpec.Secrets`` for ``secrets``."""
    return [
        {
            "SecretID": s.secret_id,
            "SecretName": s.secret_name,
            "File": {"Name": s.target, "UID": "0", "GID": "0", "Mode": s.mode},
        }
        for s in secrets
    ]
