"""The stack file and ``swarmbinder up``/``down`` without deploying anything: options, the
inputs label that makes ``up`` idempotent, config checks, and one-line failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from swarmbinder import stackctl
from swarmbinder.stackctl import StackInputError, StackOptions

IMAGES = {
    name: f"sha256:{n}" + "0" * 63
    for n, name in enumerate(["swarmbinder", "hub", "registry", "builder"], 1)
}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (StackOptions(name="Binder"), "stack name 'Binder'"),
        (StackOptions(name="a" * 31), "stack name"),
        (StackOptions(name="1st"), "stack name"),
        (StackOptions(port=0), "port 0 is not a TCP port"),
        (StackOptions(hub_port=70000), "hub port 70000 is not a TCP port"),
        (StackOptions(port=8000, hub_port=8000), "the stack's ports must differ"),
        (StackOptions(base="floppy"), "unknown base 'floppy'"),
    ],
)
def test_bad_options_are_refused(options: StackOptions, problem: str) -> None:
    with pytest.raises(StackInputError, match=problem.replace("(", r"\(")):
        options.check()


def test_names_follow_the_stack_name() -> None:
    options = StackOptions(name="lab", registry_port=5001, port=9000)
    options.check()
    assert options.hub_id == "lab_hub"
    assert options.network == "lab-net"
    assert options.image_prefix == "127.0.0.1:5001/binder-"
    assert options.url == "http://127.0.0.1:9000/"


def test_inputs_label_names_what_changed(tmp_path: Path) -> None:
    config = tmp_path / "binder.yaml"
    shutil.copy(stackctl.DEFAULT_BINDER_CONFIG, config)
    options = StackOptions(name="lab", config_file=config)
    first = stackctl.stack_variables(options, IMAGES)
    assert stackctl.stack_variables(options, IMAGES) == first
    assert (
        stackctl.changed_inputs(
            first["SWARMBINDER_STACK_INPUTS"], first["SWARMBINDER_STACK_INPUTS"]
        )
        == []
    )

    config.write_text(config.read_text() + "pod_quota: 3\n")
    edited = stackctl.stack_variables(options, IMAGES)
    assert edited["SWARMBINDER_BINDER_CONFIG_VERSION"] != first["SWARMBINDER_BINDER_CONFIG_VERSION"]
    assert stackctl.changed_inputs(
        first["SWARMBINDER_STACK_INPUTS"], edited["SWARMBINDER_STACK_INPUTS"]
    ) == ["binder-config"]

    rebuilt = stackctl.stack_variables(options, {**IMAGES, "hub": "sha256:" + "f" * 64})
    assert rebuilt["SWARMBINDER_HUB_IMAGE_ID"] == "f" * 12
    assert stackctl.changed_inputs(
        edited["SWARMBINDER_STACK_INPUTS"], rebuilt["SWARMBINDER_STACK_INPUTS"]
    ) == ["hub-image"]

    moved = stackctl.stack_variables(
        StackOptions(name="lab", config_file=config, port=9999),
        {**IMAGES, "hub": "sha256:" + "f" * 64},
    )
    assert stackctl.changed_inputs(
        rebuilt["SWARMBINDER_STACK_INPUTS"], moved["SWARMBINDER_STACK_INPUTS"]
    ) == ["settings"]
    assert stackctl.changed_inputs(None, moved["SWARMBINDER_STACK_INPUTS"])[0] == "settings"


def test_the_shipped_config_passes_and_a_typo_does_not(tmp_path: Path) -> None:
    environment = stackctl.binder_environment(StackOptions())
    stackctl.check_binder_config(stackctl.DEFAULT_BINDER_CONFIG, environment)

    typo = tmp_path / "binder.yaml"
    typo.write_text("pod_qouta: 3\n")
    with pytest.raises(StackInputError, match="pod_qouta.*did you mean 'pod_quota'"):
        stackctl.check_binder_config(typo, environment)
    typo.write_text("pod_quota: [\n")
    with pytest.raises(StackInputError, match="not valid YAML"):
        stackctl.check_binder_config(typo, environment)
    with pytest.raises(StackInputError, match="cannot read the config file"):
        stackctl.check_binder_config(tmp_path / "missing.yaml", environment)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    """docker-stack.yml as ``docker stack config`` interpolates it for a stack called lab."""
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed")
    variables = StackOptions(name="lab", registry_port=5001).variables()
    proc = subprocess.run(
        ["docker", "stack", "config", "-c", str(stackctl.STACK_FILE)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **variables, "SWARMBINDER_HUB_CONFIG_VERSION": "7"},
        cwd=stackctl.STACK_FILE.parent,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = yaml.safe_load(proc.stdout)
    return data


def test_stack_file_has_the_services_and_their_safety_nets(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert set(services) == set(stackctl.SERVICES)
    for name, service in services.items():
        deploy = service["deploy"]
        assert service["healthcheck"]["test"], name
        assert deploy["update_config"]["failure_action"] == "rollback", name
        assert deploy["endpoint_mode"] == "dnsrr", name
        assert deploy["resources"]["limits"]["memory"], name
        assert deploy["placement"]["constraints"] == ["node.role == manager"], name
        assert service["networks"] == {"binder": None}, name
        for port in service.get("ports", []):
            assert port["mode"] == "host", name
    published = {n: s["ports"][0]["published"] for n, s in services.items() if "ports" in s}
    assert published == {"binder": 8585, "proxy": 8000, "registry": 5001}


def test_stack_file_names_derive_from_the_stack(rendered: dict[str, Any]) -> None:
    assert rendered["networks"]["binder"] == {
        "name": "lab-net",
        "driver": "overlay",
        "attachable": True,
    }
    secrets = rendered["secrets"]
    assert sorted(s["name"] for s in secrets.values()) == sorted(
        f"lab-{name}" for name in stackctl.SECRETS
    )
    assert all(s["external"] for s in secrets.values())
    assert rendered["configs"]["hub_config"]["name"] == "lab-hub-config-7"
    binder = rendered["services"]["binder"]["environment"]
    assert binder["SWARMBINDER_HUB_ID"] == "lab_hub"
    assert binder["SWARMBINDER_IMAGE_PREFIX"] == "127.0.0.1:5001/binder-"
    hub = rendered["services"]["hub"]["environment"]
    assert hub["SWARMBINDER_HUB_ID"] == "lab_hub"
    assert hub["SWARMBINDER_HUB_IMAGE_PREFIX"] == binder["SWARMBINDER_IMAGE_PREFIX"]
    assert hub["SWARMBINDER_HUB_NETWORK"] == "lab-net"
    # What the binder's environment sets is what up checks the config file against.
    expected = stackctl.binder_environment(StackOptions(name="lab", registry_port=5001))
    assert {k: binder[k] for k in expected} == expected


def test_binder_config_secrets_are_the_ones_mounted(rendered: dict[str, Any]) -> None:
    config = yaml.safe_load(stackctl.DEFAULT_BINDER_CONFIG.read_text())
    files = {v.removeprefix("/run/secrets/") for k, v in config.items() if k.endswith("_file")}
    assert files == set(rendered["services"]["binder"]["secrets"][i]["source"] for i in range(4))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["up", "--stack", "My Binder"], "stack name 'My Binder'"),
        (["up", "--port", "8000"], "the stack's ports must differ"),
        (["up", "--config", "/nonexistent/binder.yaml"], "cannot read the config file"),
        (["down", "--stack", "x_y"], "stack name 'x_y'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("swarmbinder: error: ") and line in proc.stderr


def test_an_engine_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    up = run_cli("up", "--quiet", env={"DOCKER_HOST": host})
    assert up.returncode == 1
    assert up.stderr.strip() == (
        f"swarmbinder: error: the Docker engine at DOCKER_HOST={host} does not answer"
    )
    down = run_cli("down", env={"DOCKER_HOST": host})
    assert down.returncode == 1
    assert down.stderr.strip() == f"swarmbinder: error: the Docker engine at {host} does not answer"
