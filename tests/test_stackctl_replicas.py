"""PostgreSQL mode of ``swarmbinder up`` without deploying anything: which store and replicas
an ``up`` plans, the merged stack files as ``docker stack config`` renders them, and one-line
refusals of bad ``--replicas``/``--store`` input."""

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
from swarmbinder.stackctl import StackInputError, StackOptions, Store
from swarmbinder.stackctl.replicas import stack_files, trusted_proxies

IMAGES = {
    name: f"sha256:{n}" + "0" * 63
    for n, name in enumerate(["swarmbinder", "hub", "registry", "builder", "postgres", "front"], 1)
}
FRONT_SUBNET = "10.0.9.0/24"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("replicas", "store", "deployed", "planned"),
    [
        (None, None, None, Store("sqlite", 1)),
        (3, None, None, Store("postgres", 3)),
        (1, "postgres", None, Store("postgres", 1)),
        (None, "postgres", None, Store("postgres", 1)),
        # A plain up keeps what runs, as it keeps the SSH console.
        (None, None, Store("postgres", 3), Store("postgres", 3)),
        (None, None, Store("sqlite", 1), Store("sqlite", 1)),
        (1, None, Store("postgres", 3), Store("postgres", 1)),
        (None, "postgres", Store("postgres", 2), Store("postgres", 2)),
        (2, None, Store("sqlite", 1), Store("postgres", 2)),
        (None, "sqlite", Store("postgres", 3), Store("sqlite", 1)),
    ],
)
def test_up_plans_the_store_asked_for_else_the_deployed_one(
    replicas: int | None, store: str | None, deployed: Store | None, planned: Store
) -> None:
    options = StackOptions(replicas=replicas, store=store)
    options.check()
    assert stackctl.plan_store(options, deployed) == planned


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (StackOptions(replicas=0), "--replicas 0: Binder runs 1 to 16 replicas"),
        (StackOptions(replicas=-2), "--replicas -2: Binder runs 1 to 16 replicas"),
        (StackOptions(replicas=17), "--replicas 17: Binder runs 1 to 16 replicas"),
        (StackOptions(replicas=2, store="sqlite"), "--replicas 2 needs --store postgres"),
        (StackOptions(store="mysql"), "unknown store 'mysql'"),
    ],
)
def test_bad_replica_options_are_refused(options: StackOptions, problem: str) -> None:
    with pytest.raises(StackInputError, match=problem.replace("(", r"\(")):
        options.check()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--replicas", "0"], "--replicas 0: Binder runs 1 to 16 replicas"),
        (["--replicas", "three"], "argument --replicas: invalid int value: 'three'"),
        (["--replicas", "1000"], "--replicas 1000: Binder runs 1 to 16 replicas"),
        (["--replicas", "3", "--store", "sqlite"], "--replicas 3 needs --store postgres"),
        (["--store", "mysql"], "argument --store: invalid choice: 'mysql'"),
    ],
)
def test_cli_refuses_bad_replicas_in_one_line_before_touching_docker(
    args: list[str], line: str
) -> None:
    proc = run_cli("up", "--stack", "nosuchstack", *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert line in proc.stderr
    assert proc.stdout == ""


def test_front_base_publishes_no_binder_port_and_names_files_absolutely() -> None:
    base = stackctl.front_base(stackctl.STACK_FILE.read_text())
    services: dict[str, Any] = base["services"]  # type: ignore[assignment]
    assert "ports" not in services["binder"]
    assert services["proxy"]["ports"] and services["registry"]["ports"]
    configs: dict[str, Any] = base["configs"]  # type: ignore[assignment]
    hub_config = configs["hub_config"]["file"]
    assert Path(hub_config).is_absolute() and Path(hub_config) == stackctl.options.HUB_CONFIG
    assert "/stack/config/binder.yaml}" in configs["binder_config"]["file"]
    assert "./" not in configs["binder_config"]["file"]


def test_trusted_proxies_keep_the_config_files_and_add_the_fronts(tmp_path: Path) -> None:
    config = tmp_path / "binder.yaml"
    config.write_text("trusted_proxies: [192.0.2.0/24]\n")
    assert trusted_proxies(config, FRONT_SUBNET) == f'["192.0.2.0/24", "{FRONT_SUBNET}"]'
    config.write_text("pod_quota: 3\n")
    assert trusted_proxies(config, FRONT_SUBNET) == f'["{FRONT_SUBNET}"]'


def test_the_shipped_config_passes_with_the_store_environment() -> None:
    environment = {
        **stackctl.binder_environment(StackOptions()),
        **stackctl.binder_store_environment(Store("postgres", 3)),
    }
    # The secret files exist only inside the service: up checks against stand-ins.
    stackctl.check_binder_config(stackctl.DEFAULT_BINDER_CONFIG, environment)
    assert stackctl.binder_store_environment(Store()) == {}


def variables(store: Store, options: StackOptions | None = None) -> dict[str, str]:
    options = options or StackOptions(name="lab", registry_port=5001)
    extra = stackctl.store_inputs(
        store, "node0id", FRONT_SUBNET, stackctl.DEFAULT_BINDER_CONFIG, IMAGES
    )
    return stackctl.stack_variables(options, IMAGES, None, extra)


def test_inputs_label_names_a_change_of_store_or_replicas() -> None:
    sqlite = variables(Store())["SWARMBINDER_STACK_INPUTS"]
    three = variables(Store("postgres", 3))["SWARMBINDER_STACK_INPUTS"]
    two = variables(Store("postgres", 2))["SWARMBINDER_STACK_INPUTS"]
    assert "store=" not in sqlite  # a stack that never had PostgreSQL keeps its label
    assert stackctl.changed_inputs(three, two) == ["store"]
    assert stackctl.changed_inputs(sqlite, three)[0] == "store"
    assert "store" in stackctl.changed_inputs(three, sqlite)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack ``up --replicas 3`` deploys, as ``docker stack config`` merges its files."""
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed")
    workdir = tmp_path_factory.mktemp("stack")
    files = stack_files(Store("postgres", 3), False, workdir)
    assert files[1:] == [stackctl.POSTGRES_FILE, stackctl.FRONT_FILE]
    proc = subprocess.run(
        ["docker", "stack", "config", *(a for f in files for a in ("-c", str(f)))],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **variables(Store("postgres", 3))},
        cwd="/",
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = yaml.safe_load(proc.stdout)
    return data


def test_replicas_share_postgres_and_one_published_port(merged: dict[str, Any]) -> None:
    services = merged["services"]
    assert set(services) == set(Store("postgres", 3).services)
    binder = services["binder"]
    assert binder["deploy"]["replicas"] == 3
    assert "ports" not in binder
    published = {n: s["ports"][0]["published"] for n, s in services.items() if "ports" in s}
    assert published == {"front": 8585, "proxy": 8000, "registry": 5001}
    assert all(p["mode"] == "host" for s in services.values() for p in s.get("ports", []))
    env = binder["environment"]
    expected = {
        **stackctl.binder_environment(StackOptions(name="lab", registry_port=5001)),
        **stackctl.binder_store_environment(Store("postgres", 3)),
    }
    assert {k: env[k] for k in expected} == expected
    assert env["SWARMBINDER_STORE_URL"] == stackctl.STORE_URL
    assert yaml.safe_load(env["SWARMBINDER_TRUSTED_PROXIES"]) == [FRONT_SUBNET]
    mounted = {s["source"] for s in binder["secrets"]}
    assert {"postgres_password", "cookie_secret"} <= mounted
    hub = services["hub"]["environment"]
    assert hub["SWARMBINDER_HUB_DB_URL"] == "postgresql+psycopg2://binder@postgres:5432/jupyterhub"
    assert hub["SWARMBINDER_HUB_DB_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_postgres_is_reached_by_binder_and_the_hub_only(merged: dict[str, Any]) -> None:
    services = merged["services"]
    postgres = services["postgres"]
    assert "ports" not in postgres
    assert set(postgres["networks"]) == {"db"}
    assert merged["networks"]["db"] == {"name": "lab-db", "driver": "overlay", "internal": True}
    on_db = {n for n, s in services.items() if "db" in s["networks"]}
    assert on_db == {"postgres", "binder", "hub"}
    on_users = {n for n, s in services.items() if "users" in s["networks"]}
    assert on_users == {"hub", "proxy"}
    on_front = {n for n, s in services.items() if "front" in s["networks"]}
    assert on_front == {"front", "binder"}
    assert merged["networks"]["front"] == {"name": "lab-front", "external": True}
    holders = {
        n
        for n, s in services.items()
        for x in s.get("secrets", [])
        if x["source"] == "postgres_password"
    }
    assert holders == {"postgres", "binder", "hub"}
    assert merged["secrets"]["postgres_password"] == {
        "name": "lab-postgres-password",
        "external": True,
    }
    # Its volume is one node's: the task never moves off the node labelled for the state.
    assert postgres["deploy"]["placement"]["constraints"] == [
        "node.labels.swarmbinder.state.lab == true"
    ]
    # Binder's state is in PostgreSQL: its replicas may run on every manager.
    assert services["binder"]["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert (
        "node.labels.swarmbinder.state.lab == true"
        in (services["hub"]["deploy"]["placement"]["constraints"])
    )
    assert postgres["deploy"]["update_config"]["order"] == "stop-first"
    assert postgres["volumes"][0]["source"] == "postgres-data"


def test_every_postgres_secret_is_made_and_purged() -> None:
    # Made by `swarmbinder secrets` and up alike, so a by-hand deploy finds them.
    names = {f"lab-{s}" for s in stackctl.POSTGRES_SECRETS}
    assert names == {"lab-postgres-password", "lab-cookie-secret"}
    text = stackctl.POSTGRES_FILE.read_text()
    assert all(f"-{s}\n" in text for s in stackctl.POSTGRES_SECRETS)
