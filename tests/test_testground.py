"""The test ground itself: what every later feature is tested against must really work."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from swarmbinder.jobspec import BindMount, JobSpec
from swarmbinder.swarm import SwarmClient, TaskStateName

pytestmark = pytest.mark.swarm

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_V2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def manifest_status(registry: str, name: str, tag: str) -> int:
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": DOCKER_V2_MANIFEST},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_up_again_rebuilds_nothing_and_prints_the_same_ground(testground: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "testground"), "up", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    again = json.loads(proc.stdout)
    assert again["rebuilt"] == []
    for key in (
        "registry",
        "git_base_url",
        "images",
        "repos",
        "node_id",
        "hub_url",
        "hub_api_token",
        "hub_network",
        "hub_service",
        "image_prefix",
    ):
        assert again[key] == testground[key]


def test_status_reports_everything_up(testground: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "testground"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    status = json.loads(proc.stdout)
    assert proc.returncode == 0, status
    assert status["swarm"] == "active" and status["registry"] and status["git_server"]
    assert status["hub"]


def test_the_hub_api_answers_the_ground_token_and_only_it(testground: dict[str, Any]) -> None:
    url = testground["hub_api_url"] + "/users"
    assert testground["hub_url"].startswith("http://127.0.0.1:")
    assert testground["image_prefix"].startswith(testground["registry"] + "/")
    request = urllib.request.Request(
        url, headers={"Authorization": f"token {testground['hub_api_token']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert isinstance(json.loads(response.read()), list)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403


def test_the_hub_service_is_on_the_overlay_by_name(testground: dict[str, Any]) -> None:
    inspect = subprocess.run(
        ["docker", "service", "inspect", testground["hub_service"]],
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(inspect.stdout)[0]["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert [p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]] == ["host"]
    network = subprocess.run(
        ["docker", "network", "inspect", testground["hub_network"]],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(network.stdout)[0]
    assert info["Driver"] == "overlay" and info["Attachable"] is True


def test_clone_a_test_repository_over_http(testground: dict[str, Any], tmp_path: Path) -> None:
    repo = testground["repos"]["binder-two-commits"]
    subprocess.run(["git", "clone", "-q", repo["url"], str(tmp_path / "clone")], check=True)
    head = subprocess.run(
        ["git", "-C", str(tmp_path / "clone"), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert head == repo["head"]
    assert len(repo["commits"]) == 2
    assert (tmp_path / "clone" / "hello.txt").read_text() == "second version\n"


def test_push_an_image_and_find_its_manifest(testground: dict[str, Any]) -> None:
    registry = testground["registry"]
    tag = uuid.uuid4().hex[:12]
    target = f"{registry}/swarmbinder-tests/pushcheck:{tag}"
    subprocess.run(["docker", "tag", testground["images"]["registry"], target], check=True)
    try:
        subprocess.run(["docker", "push", "-q", target], check=True, capture_output=True)
        assert manifest_status(registry, "swarmbinder-tests/pushcheck", tag) == 200
        assert manifest_status(registry, "swarmbinder-tests/pushcheck", "never-pushed") == 404
    finally:
        subprocess.run(["docker", "image", "rm", target], check=False, capture_output=True)


@pytest.fixture
async def swarm(testground: dict[str, Any]) -> AsyncIterator[SwarmClient]:
    client = SwarmClient.connect()
    yield client
    await client.close()


async def test_repo2docker_runs_as_a_one_shot_swarm_service_and_pushes(
    testground: dict[str, Any], swarm: SwarmClient
) -> None:
    repo = testground["repos"]["binder-dockerfile"]
    registry = testground["registry"]
    run = uuid.uuid4().hex[:10]
    image = f"{registry}/swarmbinder-tests/binder-dockerfile-{run}:{repo['head']}"
    name = f"sbtest-r2d-{run}"
    spec = JobSpec(
        name=name,
        image=testground["images"]["builder"],
        args=[
            f"--ref={repo['head']}",
            f"--image-name={image}",
            "--no-run",
            "--json-logs",
            "--user-name=jovyan",
            "--user-id=1000",
            "--push",
            repo["url"],
        ],
        labels={"swarmbinder.test-run": run},
        mounts=[BindMount("/var/run/docker.sock", "/var/run/docker.sock")],
        # The clone runs in this container and must reach the git server on 127.0.0.1.
        networks=["host"],
        constraints=[f"node.id=={testground['node_id']}"],
    )
    await swarm.create_job(spec)
    try:
        async with asyncio.timeout(240):
            task = await swarm.wait_job(name, poll_interval=0.5)
        lines = await swarm.read_logs(name)
        assert task.state is TaskStateName.COMPLETE, (task, lines[-10:])
        phases = {json.loads(line).get("phase") for line in lines if line.startswith("{")}
        assert {"fetching", "building", "pushing"} <= phases
    finally:
        await swarm.remove_service(name)
    pushed = f"swarmbinder-tests/binder-dockerfile-{run}"
    assert manifest_status(registry, pushed, repo["head"]) == 200


def run_testground(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "testground"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )


def test_engine_that_does_not_answer_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_testground(
        "up", env={"DOCKER_HOST": "tcp://127.0.0.1:9", "SWARMBINDER_TESTGROUND_DIR": str(tmp_path)}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "testground: error: the Docker engine at DOCKER_HOST=tcp://127.0.0.1:9 does not answer"
    ]


def test_taken_registry_port_is_one_line_and_keeps_the_running_registry(
    testground: dict[str, Any],
) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_testground(
            "up", "--quiet", env={"SWARMBINDER_TESTGROUND_REGISTRY_PORT": str(port)}
        )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"testground: error: port {port} on 127.0.0.1 is already in use; "
        "set SWARMBINDER_TESTGROUND_REGISTRY_PORT to a free port"
    ]
    assert proc.stdout == ""
    # The ground's registry was not touched.
    assert manifest_status(testground["registry"], "never/was", "pushed") == 404


def test_taken_hub_port_is_one_line_and_keeps_the_running_hub(
    testground: dict[str, Any],
) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_testground("up", "--quiet", env={"SWARMBINDER_TESTGROUND_HUB_PORT": str(port)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"testground: error: port {port} on 127.0.0.1 is already in use; "
        "set SWARMBINDER_TESTGROUND_HUB_PORT to a free port"
    ]
    assert proc.stdout == ""
    with urllib.request.urlopen(testground["hub_api_url"] + "/", timeout=10) as response:
        assert response.status == 200
