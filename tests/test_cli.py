"""The ``swarmbinder`` command as a user runs it, and the application ``serve`` runs.

CLI tests start the real entry point in a subprocess (``python -m swarmbinder``) and check what
a user sees: exit code, stdout, and the one line on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pytest_aiohttp import AiohttpClient

from swarmbinder import __version__
from swarmbinder.app import create_app
from swarmbinder.cli import COMMANDS, main
from swarmbinder.config import Config, load_config
from swarmbinder.keys import CONFIG

HERE = Path(__file__).parent
EXAMPLE = HERE / "config" / "test.yaml"
TYPO = HERE / "config" / "typo.yaml"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without SWARMBINDER_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    env.update(extra)
    return env


def swarmbinder(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=60,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command; no traceback, nothing on stdout."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_console_script_is_cli_main() -> None:
    (script,) = entry_points(group="console_scripts", name="swarmbinder")
    assert script.load() is main


# --- help and usage ------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    proc = swarmbinder("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: swarmbinder")
    for name in ("serve", "check-config", "show-config", "version"):
        assert name in COMMANDS
    for name in COMMANDS:
        assert f"\n    {name}" in proc.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    proc = swarmbinder(name, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: swarmbinder {name} [-h]")
    assert COMMANDS[name].description.split()[0] in proc.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ((), "swarmbinder: error: the following arguments are required: COMMAND"),
        (("frobnicate",), "swarmbinder: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (("serve", "--port", "http"), "swarmbinder serve: error: argument --port: invalid int"),
        (("check-config",), "swarmbinder check-config: error: the following arguments"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: tuple[str, ...], line: str) -> None:
    assert one_error_line(swarmbinder(*args)).startswith(line)


def test_version() -> None:
    proc = swarmbinder("version")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        f"swarmbinder {__version__}",
        f"Python {sys.version.split()[0]}",
        f"aiohttp {aiohttp.__version__}",
    ]


# --- check-config and show-config ----------------------------------------------------------


def test_check_config_ok() -> None:
    proc = swarmbinder("check-config", str(EXAMPLE))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"ok: {EXAMPLE}\n", "")


def test_check_config_names_a_misspelt_key() -> None:
    assert one_error_line(swarmbinder("check-config", str(TYPO))) == (
        "swarmbinder: error: config option 'pod_qouta': unknown option (did you mean 'pod_quota'?)"
    )


def test_check_config_on_a_missing_file(tmp_path: Path) -> None:
    line = one_error_line(swarmbinder("check-config", str(tmp_path / "absent.yaml")))
    assert line.startswith("swarmbinder: error: config option 'config_file': ")
    assert line.endswith("absent.yaml' does not exist")


def test_check_config_checks_the_file_alone() -> None:
    proc = swarmbinder("check-config", str(EXAMPLE), env=clean_env(SWARMBINDER_PORT="eighty"))
    assert proc.returncode == 0


def test_show_config_masks_secrets_and_applies_the_environment() -> None:
    env = clean_env(
        SWARMBINDER_REGISTRY_USERNAME="builder",
        SWARMBINDER_REGISTRY_PASSWORD="hunter2",
        SWARMBINDER_POD_QUOTA="3",
    )
    proc = swarmbinder("show-config", "--config", str(EXAMPLE), env=env)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["pod_quota"] == 3
    assert shown["registry_username"] == "builder"
    assert shown["hub_url"] == "https://hub.example.org/"
    for secret in ("hub_api_token", "registry_password", "build_token_secret"):
        assert shown[secret] == "***"
    assert shown["github"]["access_token"] == "***"
    assert shown["admin_token"] is None
    for value in ("hunter2", "0123456789abcdef", "gh-token", "5c1d8e2fa7b04a6c"):
        assert value not in proc.stdout


def test_show_config_json_uses_swarmbinder_config_variable() -> None:
    proc = swarmbinder("show-config", "--json", env=clean_env(SWARMBINDER_CONFIG=str(EXAMPLE)))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["hub_api_token"] == "***"
    assert shown["concurrent_build_limit"] == 4


def test_show_config_with_a_bad_variable() -> None:
    line = one_error_line(swarmbinder("show-config", env=clean_env(SWARMBINDER_POD_QOUTA="3")))
    assert line.startswith("swarmbinder: error: config option 'pod_qouta': unknown option")


# --- serve ---------------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_on_a_taken_port(taken_port: int) -> None:
    proc = swarmbinder("serve", "--host", "127.0.0.1", "--port", str(taken_port))
    assert one_error_line(proc) == (
        f"swarmbinder: error: port {taken_port} on 127.0.0.1 is already in use"
    )


def test_serve_with_a_bad_config() -> None:
    line = one_error_line(swarmbinder("serve", "--config", str(TYPO), "--port", str(free_port())))
    assert "config option 'pod_qouta'" in line


def test_serve_rejects_a_bad_port_flag() -> None:
    line = one_error_line(swarmbinder("serve", "--port", "70000"))
    assert line == "swarmbinder: error: config option 'port': must be 65535 or less, got 70000"


def get_json(url: str, deadline: float, proc: subprocess.Popen[str]) -> Any:
    """GET ``url`` once the server answers, failing early if the server exited."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}: {proc.communicate()[1]}")
            if time.monotonic() > deadline:
                pytest.fail(f"nothing answered at {url}")
            time.sleep(0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_serves_versions_then_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"base_url: /binder\nbuild_image: example.org/r2d:1\nstore_path: {tmp_path / 's.db'}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmbinder", "serve", "--config", str(config)]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        body = get_json(f"http://127.0.0.1:{port}/binder/versions", time.monotonic() + 30, proc)
        assert body["builder"] == "example.org/r2d:1"
        assert body["binderhub"] == f"swarmbinder {__version__}"
        proc.send_signal(stop_signal)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"serving on http://127.0.0.1:{port}/binder/" in stderr


# --- the application serve runs ------------------------------------------------------------


async def test_versions_like_binderhub(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    config = load_config(EXAMPLE, env={}, overrides={"store_path": str(tmp_path / "s.db")})
    client = await aiohttp_client(create_app(config))
    response = await client.get("/binder/versions")
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert await response.json() == {
        "builder_info": {"build_image": "quay.io/jupyterhub/repo2docker:2024.07.0"},
        "builder": "quay.io/jupyterhub/repo2docker:2024.07.0",
        "binderhub": f"swarmbinder {__version__}",
    }


async def test_health_names_what_is_down(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    closed = free_port()
    overrides = {
        "store_path": str(tmp_path / "s.db"),
        "image_prefix": f"127.0.0.1:{closed}/binder-",
        "registry_url": f"http://127.0.0.1:{closed}",
    }
    client = await aiohttp_client(create_app(load_config(None, env={}, overrides=overrides)))
    response = await client.get("/health")
    assert response.status == 503
    body = await response.json()
    assert body["ok"] is False
    registry = next(c for c in body["checks"] if c["service"] == "Docker registry")
    assert registry["ok"] is False


async def test_routes_live_under_base_url(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    overrides = {"base_url": "x", "store_path": str(tmp_path / "s.db")}
    client = await aiohttp_client(create_app(load_config(None, env={}, overrides=overrides)))
    assert (await client.get("/x/versions")).status == 200
    assert (await client.get("/x/health")).status in (200, 503)
    assert (await client.get("/versions")).status == 404


def test_create_app_shares_the_config() -> None:
    config = Config()
    assert create_app(config)[CONFIG] is config
