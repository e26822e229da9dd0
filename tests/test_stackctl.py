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
from swarmbinder.stackctl import Console, StackInputError, StackOptions

#: Two real ed25519 public keys (generated once for these tests; their private halves are gone).
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMNYQXn/XxAKeL39ZECstcMu7qa7RrGleUFwX+QAGEA alice"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB/1YO64N3k8w1SyKvAu3pgWMX4rcXGqOJ59r3+LcHem bob"
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
        (StackOptions(ssh_console_keys=Path("k"), ssh_port=0), "ssh port 0 is not a TCP port"),
        (StackOptions(ssh_console_keys=Path("k"), port=2222), "the stack's ports must differ"),
        (StackOptions(ssh_port=5000), "the stack's ports must differ"),
        (
            StackOptions(no_ssh_console=True, ssh_port=2300),
            "--no-ssh-console removes the SSH console: drop --ssh-port",
        ),
        (
            StackOptions(no_ssh_console=True, ssh_console_keys=Path("k")),
            "drop --ssh-console",
        ),
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
        constraints = deploy["placement"]["constraints"]
        # The services with a volume run where the stack's state is: the node labelled for it.
        pinned = ["node.labels.swarmbinder.state.lab == true"] if service.get("volumes") else []
        assert constraints == ["node.role == manager", *pinned], name
        assert "binder" in service["networks"], name
        for port in service.get("ports", []):
            assert port["mode"] == "host", name
    published = {n: s["ports"][0]["published"] for n, s in services.items() if "ports" in s}
    assert published == {"binder": 8585, "proxy": 8000, "registry": 5001}
    assert {n for n, s in services.items() if s.get("volumes")} == {"binder", "hub", "registry"}


def test_stack_file_names_derive_from_the_stack(rendered: dict[str, Any]) -> None:
    assert rendered["networks"]["binder"] == {
        "name": "lab-net",
        "driver": "overlay",
        "attachable": True,
    }
    assert rendered["networks"]["users"] == {
        "name": "lab-users",
        "driver": "overlay",
        "attachable": True,
    }
    secrets = rendered["secrets"]
    assert sorted(s["name"] for s in secrets.values()) == sorted(
        f"lab-{name}" for name in (*stackctl.SECRETS, *stackctl.TOKEN_PAIR)
    )
    assert all(s["external"] for s in secrets.values())
    assert rendered["configs"]["hub_config"]["name"] == "lab-hub-config-7"
    binder = rendered["services"]["binder"]["environment"]
    assert binder["SWARMBINDER_HUB_ID"] == "lab_hub"
    assert binder["SWARMBINDER_IMAGE_PREFIX"] == "127.0.0.1:5001/binder-"
    hub = rendered["services"]["hub"]["environment"]
    assert hub["SWARMBINDER_HUB_ID"] == "lab_hub"
    assert hub["SWARMBINDER_HUB_IMAGE_PREFIX"] == binder["SWARMBINDER_IMAGE_PREFIX"]
    assert hub["SWARMBINDER_HUB_NETWORK"] == "lab-users"
    # What the binder's environment sets is what up checks the config file against.
    expected = stackctl.binder_environment(StackOptions(name="lab", registry_port=5001))
    assert {k: binder[k] for k in expected} == expected


def test_binder_config_secrets_are_the_ones_mounted(rendered: dict[str, Any]) -> None:
    config = yaml.safe_load(stackctl.DEFAULT_BINDER_CONFIG.read_text())
    files = {v.removeprefix("/run/secrets/") for k, v in config.items() if k.endswith("_file")}
    mounted = {s["source"] for s in rendered["services"]["binder"]["secrets"]}
    assert files == mounted


def test_user_servers_share_a_network_with_the_hub_and_proxy_only(
    rendered: dict[str, Any],
) -> None:
    on_users = {n for n, s in rendered["services"].items() if "users" in s["networks"]}
    assert on_users == {"hub", "proxy"}


def test_registry_trusts_binder_as_its_token_issuer(rendered: dict[str, Any]) -> None:
    """Token auth: only Binder holds the signing key; the registry has the certificate; the
    hub's login is the pull-only one; no service but Binder gets the operator's password."""
    services = rendered["services"]
    registry = services["registry"]
    assert registry["environment"]["REGISTRY_AUTH"] == "token"
    assert registry["environment"]["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"] == (
        "/run/secrets/registry_token_certificate"
    )
    assert {s["source"] for s in registry["secrets"]} == {"registry_token_certificate"}
    holders = {
        name
        for name, service in services.items()
        for secret in service.get("secrets", [])
        if secret["source"] in ("registry_token_key", "registry_password")
    }
    assert holders == {"binder"}
    hub = services["hub"]["environment"]
    assert hub["SWARMBINDER_HUB_REGISTRY_USER"] == stackctl.PULL_USER
    assert hub["SWARMBINDER_HUB_REGISTRY_PASSWORD_FILE"] == "/run/secrets/registry_pull_password"
    assert services["binder"]["environment"]["SWARMBINDER_REGISTRY_PULL_USERNAME"] == (
        stackctl.PULL_USER
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["up", "--stack", "My Binder"], "stack name 'My Binder'"),
        (["up", "--port", "8000"], "the stack's ports must differ"),
        (["up", "--config", "/nonexistent/binder.yaml"], "cannot read the config file"),
        (["down", "--stack", "x_y"], "stack name 'x_y'"),
        (["secrets", "--stack", "x_y"], "stack name 'x_y'"),
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


@pytest.mark.swarm
def test_secrets_makes_what_the_stack_file_needs_once(
    testground: dict[str, Any], rendered: dict[str, Any]
) -> None:
    """`swarmbinder secrets` (a cluster deployed by hand) makes every secret the stack file
    names, and a second run changes nothing."""
    stack = f"sbtest-secrets-{os.getpid()}"
    # The stack file's, and PostgreSQL mode's (stack/postgres.yml), which `secrets` makes too.
    wanted = sorted(
        [spec["name"].replace("lab-", f"{stack}-", 1) for spec in rendered["secrets"].values()]
        + [f"{stack}-{name}" for name in stackctl.POSTGRES_SECRETS]
    )
    try:
        first = run_cli("secrets", "--stack", stack)
        assert first.returncode == 0, first.stderr
        assert (
            sorted(
                line.removeprefix("created secret ") for line in first.stdout.split("\n") if line
            )
            == wanted
        )
        listed = subprocess.run(
            ["docker", "secret", "ls", "--format", "{{.Name}}", "--filter", f"name={stack}-"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        assert sorted(listed) == wanted
        again = run_cli("secrets", "--stack", stack)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"nothing to create: every secret of stack {stack} exists"
    finally:
        made = subprocess.run(
            ["docker", "secret", "ls", "-q", "--filter", f"name={stack}-"],
            capture_output=True, text=True, check=False, timeout=30,
        ).stdout.split()  # fmt: skip
        for secret in made:
            subprocess.run(["docker", "secret", "rm", secret], capture_output=True, check=False)


# --- the SSH console --------------------------------------------------------------------------


def test_console_keys_file_is_checked_before_anything(tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    with pytest.raises(
        StackInputError, match="--ssh-console: cannot read the authorized keys file .*: No such"
    ):
        stackctl.read_console_keys(keys)
    keys.write_text("# operators\n\nnot a key\nssh-ed25519 AAAAnotbase64!! x\n")
    with pytest.raises(StackInputError, match="--ssh-console: no public keys in .*authorized_keys"):
        stackctl.read_console_keys(keys)
    keys.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StackInputError, match="is not text"):
        stackctl.read_console_keys(keys)
    # Comments, options and one stray line among valid keys: accepted as the console does.
    text = f'# operators\n{KEY_A}\nfrom="10.0.0.0/8",no-pty {KEY_B}\ngarbage\n'
    keys.write_text(text)
    assert stackctl.read_console_keys(keys) == text


def test_console_plan_from_the_file_the_running_one_or_none() -> None:
    with_file = StackOptions(name="lab", ssh_console_keys=Path("k"))
    first = stackctl.plan_console(with_file, KEY_A, None)
    assert first is not None and first.port == 2222 and first.keys == KEY_A
    assert first.keys_secret("lab") == f"lab-console-authorized-keys-{first.keys_version}"
    assert stackctl.plan_console(with_file, KEY_A, None) == first
    changed = stackctl.plan_console(with_file, KEY_B, first)
    assert changed is not None and changed.keys_version != first.keys_version
    # Secret names stay within Swarm's 64 characters for the longest stack name.
    assert len(first.keys_secret("s" * 30)) <= 64

    running = Console(first.keys_version, 2300)
    assert stackctl.plan_console(with_file, KEY_A, running) == Console(
        first.keys_version, 2300, KEY_A
    )
    assert stackctl.plan_console(StackOptions(name="lab"), None, running) == running
    moved = StackOptions(name="lab", ssh_port=2400)
    assert stackctl.plan_console(moved, None, running) == Console(first.keys_version, 2400)
    assert (
        stackctl.plan_console(StackOptions(name="lab", no_ssh_console=True), None, running) is None
    )
    assert stackctl.plan_console(StackOptions(name="lab"), None, None) is None
    with pytest.raises(StackInputError, match="--ssh-port: stack lab runs no SSH console"):
        stackctl.plan_console(moved, None, None)


def test_console_inputs_change_only_with_the_console(tmp_path: Path) -> None:
    config = tmp_path / "binder.yaml"
    shutil.copy(stackctl.DEFAULT_BINDER_CONFIG, config)
    options = StackOptions(name="lab", config_file=config)
    plain = stackctl.stack_variables(options, IMAGES)
    assert "ssh" not in plain["SWARMBINDER_STACK_INPUTS"]
    assert "SWARMBINDER_SSH_PORT" not in plain

    console = Console("0123abcd", 2222, KEY_A)
    added = stackctl.stack_variables(options, IMAGES, console)
    assert added["SWARMBINDER_CONSOLE_KEYS_VERSION"] == "0123abcd"
    assert added["SWARMBINDER_SSH_PORT"] == "2222"
    before, after = plain["SWARMBINDER_STACK_INPUTS"], added["SWARMBINDER_STACK_INPUTS"]
    assert stackctl.changed_inputs(before, after) == [
        "ssh-console-file",
        "ssh-console-keys",
        "ssh-port",
    ]
    # A kept console (read back from the service, without the file) is the same input.
    kept = stackctl.stack_variables(options, IMAGES, Console("0123abcd", 2222))
    assert stackctl.changed_inputs(after, kept["SWARMBINDER_STACK_INPUTS"]) == []
    new_keys = stackctl.stack_variables(options, IMAGES, Console("4567ef01", 2222, KEY_B))
    assert stackctl.changed_inputs(after, new_keys["SWARMBINDER_STACK_INPUTS"]) == [
        "ssh-console-keys"
    ]
    moved = stackctl.stack_variables(options, IMAGES, Console("0123abcd", 2300))
    assert stackctl.changed_inputs(after, moved["SWARMBINDER_STACK_INPUTS"]) == ["ssh-port"]
    # Removing the console is a change too, though the wanted label names no console part.
    assert stackctl.changed_inputs(after, before) == [
        "ssh-console-file",
        "ssh-console-keys",
        "ssh-port",
    ]


def test_a_running_console_is_read_from_its_service_spec() -> None:
    spec: dict[str, Any] = {
        "TaskTemplate": {
            "ContainerSpec": {
                "Secrets": [
                    {"SecretName": "lab-admin-token", "File": {"Name": "admin_token"}},
                    {"SecretName": "lab-console-authorized-keys-0123abcd"},
                    {"SecretName": "lab-console-host-key"},
                ]
            }
        },
        "EndpointSpec": {"Ports": [{"TargetPort": 2222, "PublishedPort": 2300}]},
    }
    assert stackctl.console_from_spec("lab", spec) == Console("0123abcd", 2300)
    # Another stack's keys are not this stack's console.
    assert stackctl.console_from_spec("other", spec) is None


def test_merged_stack_file_takes_the_console_variables(tmp_path: Path) -> None:
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed")
    options = StackOptions(name="lab", registry_port=5001)
    console = Console("0123abcd", 2300, KEY_A)
    variables = stackctl.stack_variables(options, IMAGES, console)
    proc = subprocess.run(
        ["docker", "stack", "config", "-c", str(stackctl.STACK_FILE)]
        + ["-c", str(stackctl.CONSOLE_FILE)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **variables},
        cwd=stackctl.STACK_FILE.parent,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(proc.stdout)
    assert set(merged["services"]) == {*stackctl.SERVICES, stackctl.CONSOLE_SERVICE}
    assert merged["services"]["console"]["ports"][0]["published"] == 2300
    assert merged["secrets"]["console_authorized_keys"]["name"] == console.keys_secret("lab")
    assert merged["secrets"]["console_host_key"]["name"] == "lab-console-host-key"
    label = merged["services"]["binder"]["deploy"]["labels"]["swarmbinder.stack-inputs"]
    assert label == variables["SWARMBINDER_STACK_INPUTS"] and "ssh-console-keys=0123abcd" in label


def test_console_options_bad_input_is_one_line(tmp_path: Path) -> None:
    no_keys = tmp_path / "authorized_keys"
    no_keys.write_text("# nobody yet\n")
    good = tmp_path / "operators.pub"
    good.write_text(KEY_A + "\n")
    cases = [
        (
            ["up", "--ssh-console", str(tmp_path / "missing")],
            "cannot read the authorized keys file",
        ),
        (
            ["up", "--ssh-console", str(no_keys)],
            f"no public keys in the authorized keys file {no_keys}",
        ),
        (["up", "--ssh-console", str(good), "--ssh-port", "8585"], "ports must differ"),
        (["up", "--no-ssh-console", "--ssh-port", "2300"], "drop --ssh-port"),
        (["up", "--ssh-console", str(good), "--no-ssh-console"], "not allowed with argument"),
    ]
    for args, line in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert line in proc.stderr, proc.stderr
    # The environment variable stands for the flag.
    proc = run_cli("up", env={"SWARMBINDER_SSH_CONSOLE_KEYS": str(no_keys)})
    assert proc.returncode == 2 and "no public keys in the authorized keys file" in proc.stderr


def test_every_service_of_every_stack_file_rotates_its_logs() -> None:
    """json-file with max-size/max-file on each service of the stack and its fragments, and
    the same limits handed to the hub (user servers)."""
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed")
    files = [stackctl.STACK_FILE] + [
        stackctl.STACK_FILE.parent / "stack" / name
        for name in ("postgres.yml", "front.yml", "ssh-console.yml")
    ]
    variables = StackOptions(name="lab").variables()
    variables |= {"SWARMBINDER_LOG_MAX_SIZE": "5m", "SWARMBINDER_LOG_MAX_FILE": "4"}
    variables["SWARMBINDER_TRUSTED_PROXIES"] = "10.9.0.0/24"
    proc = subprocess.run(
        ["docker", "stack", "config"] + [arg for f in files for arg in ("-c", str(f))],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **variables},
        cwd=stackctl.STACK_FILE.parent,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"binder", "hub", "proxy", "registry", "postgres", "front"} <= set(services)
    for name, service in services.items():
        assert service["logging"] == {
            "driver": "json-file",
            "options": {"max-size": "5m", "max-file": "4"},
        }, name
    assert services["hub"]["environment"]["SWARMBINDER_HUB_LOG_MAX_SIZE"] == "5m"
    assert services["hub"]["environment"]["SWARMBINDER_HUB_LOG_MAX_FILE"] == "4"
