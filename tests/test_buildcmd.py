"""`swarmbinder build`: the real CLI against the test ground."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from typing import Any

import pytest
from app_support import ground_outbound


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def git_path(url: str, ref: str) -> str:
    return f"git/{urllib.parse.quote(url, safe='')}/{ref}"


def ground_env(ground: dict[str, Any], prefix: str) -> dict[str, str]:
    return {
        "SWARMBINDER_IMAGE_PREFIX": f"{ground['registry']}/{prefix}",
        "SWARMBINDER_REGISTRY_URL": ground["registry_url"],
        "SWARMBINDER_BUILD_IMAGE": ground["images"]["builder"],
        "SWARMBINDER_STICKY_BUILDS": "true",
        "SWARMBINDER_ALLOWED_OUTBOUND_NETWORKS": json.dumps(ground_outbound(ground)),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gh/", 'Launch path must be "provider/spec"'),
        ("nope/x/y", "No provider found for prefix 'nope'"),
        ("git/ftp%3A%2F%2Fexample.org%2Fr.git/main", "ftp"),
        ("gh/org/repo/-bad", "-bad"),
    ],
)
def test_bad_specs_are_one_line_and_exit_2(spec: str, message: str) -> None:
    proc = run_cli("build", "--dry-run", spec, env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarmbinder: error:") and message in lines[0]


def test_dry_run_with_a_full_sha_needs_no_network_and_no_engine() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    proc = run_cli(
        "build",
        "--dry-run",
        "--json",
        git_path("https://example.org/a/b.git", sha),
        env={"DOCKER_HOST": "tcp://127.0.0.1:9", "SWARMBINDER_IMAGE_PREFIX": "reg.example/binder-"},
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["resolved_ref"] == sha
    assert plan["repo_url"] == "https://example.org/a/b.git"
    assert plan["image"].startswith("reg.example/binder-") and plan["image"].endswith(f":{sha}")
    assert (
        plan["build_service"].startswith("swarmbinder-build-") and len(plan["build_service"]) <= 63
    )
    assert plan["node"] is None  # no engine answers


@pytest.mark.swarm
def test_build_json_ends_with_the_image_in_the_registry(testground: dict[str, Any]) -> None:
    repo = testground["repos"]["binder-dockerfile"]
    prefix = f"clitest-{uuid.uuid4().hex[:8]}-"
    env = ground_env(testground, prefix)

    plan = json.loads(
        run_cli("build", "--dry-run", "--json", git_path(repo["url"], "main"), env=env).stdout
    )
    assert plan["resolved_ref"] == repo["head"]
    assert plan["node"] == testground["node_hostname"]

    proc = run_cli("build", "--json", git_path(repo["url"], "main"), env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["phase"] == "built"
    assert events[-1]["imageName"] == plan["image"]
    assert {"fetching", "building", "pushing"} <= {e["phase"] for e in events}
    # The finished service is gone.
    services = subprocess.run(
        ["docker", "service", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert plan["build_service"] not in services

    again = run_cli("build", "--json", git_path(repo["url"], repo["head"]), env=env)
    assert again.returncode == 0
    assert [json.loads(line)["phase"] for line in again.stdout.splitlines()] == ["built"]


@pytest.mark.swarm
def test_failing_build_exits_1_with_the_reason(testground: dict[str, Any]) -> None:
    repo = testground["repos"]["binder-failing"]
    prefix = f"clitest-{uuid.uuid4().hex[:8]}-"
    env = ground_env(testground, prefix)
    try:
        proc = run_cli("build", git_path(repo["url"], "main"), env=env)
        assert proc.returncode == 1
        assert "[failed] Build failed:" in proc.stdout and "non-zero code: 3" in proc.stdout
        # The failed build's service is kept so its log can be read with docker.
        assert prefix in " ".join(build_service_images())
    finally:
        remove_build_services(prefix)


def build_service_images() -> list[str]:
    ids = subprocess.run(
        ["docker", "service", "ls", "-q", "--filter", "label=swarmbinder.kind=build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    proc = subprocess.run(
        [
            "docker",
            "service",
            "inspect",
            "--format",
            '{{.Spec.Name}} {{index .Spec.Labels "swarmbinder.image"}}',
            *ids,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def remove_build_services(prefix: str) -> None:
    for line in build_service_images():
        name, _, image = line.partition(" ")
        if prefix in image:
            subprocess.run(["docker", "service", "rm", name], capture_output=True, check=False)
            # Job containers outlive their service; remove them as the product does.
            subprocess.run(
                [
                    "sh",
                    "-c",
                    "docker ps -aq --filter label=com.docker.swarm.service.name=$0 "
                    "| xargs -r docker rm -f",
                    name,
                ],
                capture_output=True,
                check=False,
            )
