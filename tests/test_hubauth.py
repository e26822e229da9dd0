"""``auth_enabled`` for real: log in at a JupyterHub, launch named servers for that user.

The test ground's hub runs without login, and others' tests use it, so this module starts a
hub of its own for a few tens of seconds: the test ground's hub image and overlay network,
stack/hub/jupyterhub_config.py with auth on (JupyterHub's DummyAuthenticator with a password),
a Swarm config, a free host port, and a unique name that also labels its user servers. All of
it, user servers included, is removed when the module is done.

A browser is played by one aiohttp session with a cookie jar: it opens swarmbinder's loading
page, is sent to the hub's login form, logs in, comes back through /oauth_callback, and opens
/build.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_outbound

from swarmbinder import hostsetup as hs
from swarmbinder import naming
from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.errors import LaunchFailed
from swarmbinder.events import Phase, SSEDecoder
from swarmbinder.hubclient import HubClient
from swarmbinder.launcher import Launcher
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO_ROOT / "stack" / "hub" / "jupyterhub_config.py"
SSE = {"Accept": "text/event-stream"}
PASSWORD = secrets.token_urlsafe(12)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def docker(*args: str, stdin: str | None = None, check: bool = True) -> str:
    import subprocess

    proc = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc.stdout


def remove_user_servers(hub_id: str) -> None:
    names = docker(
        "service", "ls", "-q", "--filter", f"label=swarmbinder.hub={hub_id}", check=False
    ).split()
    if names:
        docker("service", "rm", *names, check=False)


@pytest.fixture(scope="module")
def auth_hub(testground: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A hub with logins, and the port swarmbinder must serve on (its OAuth redirect URI)."""
    name = f"swarmbinder-authtest-{uuid.uuid4().hex[:8]}"
    hub_port, app_port = free_port(), free_port()
    token = secrets.token_hex(24)
    config = HUB_CONFIG.read_text() + (
        "\n# this test's hub only: anyone logs in with the one password\n"
        f"c.DummyAuthenticator.password = {PASSWORD!r}\n"
        "c.Authenticator.allow_all = True\n"
    )
    env = {
        "SWARMBINDER_HUB_API_TOKEN": token,
        "SWARMBINDER_HUB_IMAGE_PREFIX": testground["image_prefix"],
        "SWARMBINDER_HUB_NETWORK": testground["hub_network"],
        "SWARMBINDER_HUB_CONNECT_HOST": name,
        # no volume: the hub's database lives and dies with this short-lived task
        "SWARMBINDER_HUB_DATA_DIR": "/tmp/hub-data",
        "SWARMBINDER_HUB_AUTH_ENABLED": "true",
        "SWARMBINDER_HUB_AUTHENTICATOR": "dummy",
        "SWARMBINDER_HUB_OAUTH_REDIRECT_URI": f"http://127.0.0.1:{app_port}/oauth_callback",
        "SWARMBINDER_HUB_MEM_LIMIT": "1G",
        "SWARMBINDER_HUB_START_TIMEOUT": "60",
        "SWARMBINDER_HUB_HTTP_TIMEOUT": "30",
    }
    docker("config", "create", "--label", "swarmbinder.test=hubauth", name, "-", stdin=config)
    try:
        args = [
            "service", "create", "--detach", "--name", name, "--no-resolve-image",
            "--label", "swarmbinder.test=hubauth",
            "--network", testground["hub_network"], "--endpoint-mode", "dnsrr",
            "--publish", f"mode=host,published={hub_port},target=8000",
            "--mount", "type=bind,src=/var/run/docker.sock,dst=/var/run/docker.sock",
            "--config", f"source={name},target=/srv/jupyterhub/jupyterhub_config.py",
            "--constraint", "node.role==manager",
        ]  # fmt: skip
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        docker(*args, testground["images"]["hub"])
        hub_url = f"http://127.0.0.1:{hub_port}/"
        if not hs.wait_http(f"{hub_url}hub/api/", 120):
            logs = docker("service", "logs", "--tail", "20", name, check=False)
            raise AssertionError(f"the test's hub did not come up:\n{logs}")
        yield {
            "name": name,
            "hub_url": hub_url,
            "hub_api_url": f"{hub_url}hub/api",
            "token": token,
            "app_port": app_port,
        }
    finally:
        remove_user_servers(name)
        docker("service", "rm", name, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a config in use by a task cannot be removed
            if "No such config" in docker("config", "rm", name, check=False) or not docker(
                "config", "ls", "-q", "--filter", f"name={name}", check=False
            ):
                break
            time.sleep(0.5)
        remove_user_servers(name)  # a spawn still under way when the hub went


@pytest.fixture
async def binder(
    auth_hub: dict[str, Any], testground: dict[str, Any], tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    config = load_config(
        env={},
        overrides={
            "auth_enabled": True,
            "allow_named_servers": True,
            "hub_url": auth_hub["hub_url"],
            "hub_api_token": auth_hub["token"],
            "hub_id": auth_hub["name"],
            "oauth_redirect_uri": f"http://127.0.0.1:{auth_hub['app_port']}/oauth_callback",
            "cookie_secret": secrets.token_hex(32),
            # images are shared with other tests: a warm run finds the image, no build
            "image_prefix": testground["image_prefix"],
            "registry_url": testground["registry_url"],
            "docker_host": testground["docker_host"],
            "build_image": testground["images"]["builder"],
            "store_path": str(tmp_path / "store.sqlite"),
            "launch_timeout": 60,
            "allowed_outbound_networks": ground_outbound(testground),
        },
    )
    server = TestServer(create_app(config), host="127.0.0.1", port=auth_hub["app_port"])
    async with TestClient(server) as client:
        yield client


def loading_path(testground: dict[str, Any]) -> str:
    info = testground["repos"]["binder-dockerfile"]
    return f"git/{quote(info['url'], safe='')}/{info['head']}"


async def log_in(client: TestClient[Any, Any], user: str, page: str) -> aiohttp.ClientResponse:
    """Open ``page`` without a login, log in at the hub's form, come back."""
    first = await client.get(page, allow_redirects=False)
    assert first.status == 302, await first.text()
    assert "/hub/api/oauth2/authorize?" in first.headers["Location"]
    # the browser follows: authorize -> the hub's login form (one cookie jar for both hosts)
    form_page = await client.session.get(first.headers["Location"])
    html = await form_page.text()
    assert form_page.status == 200 and "/hub/login" in str(form_page.url), html[:300]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', html)
    assert xsrf is not None, html[:300]
    # log in; the hub sends the browser to authorize, then to our /oauth_callback, then on
    return await client.session.post(
        form_page.url,
        data={"username": user, "password": PASSWORD, "_xsrf": xsrf.group(1)},
    )


async def read_events(session: aiohttp.ClientSession, url: str) -> tuple[int, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    async with session.get(url, headers=SSE, timeout=aiohttp.ClientTimeout(total=240)) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in ("ready", "failed"):
                break
        return resp.status, events


async def hub_user(auth_hub: dict[str, Any], user: str) -> dict[str, Any]:
    headers = {"Authorization": f"token {auth_hub['token']}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{auth_hub['hub_api_url']}/users/{user}", headers=headers) as r:
            assert r.status == 200, await r.text()
            data: dict[str, Any] = await r.json()
    return data


async def test_a_logged_in_user_launches_named_servers_of_its_own(
    binder: TestClient[Any, Any], auth_hub: dict[str, Any], testground: dict[str, Any]
) -> None:
    spec = loading_path(testground)
    user = f"alice-{uuid.uuid4().hex[:6]}"
    page = await log_in(binder, user, f"/v2/{spec}")
    assert page.status == 200
    # login form -> authorize -> our callback -> the page we set out for
    visited = [str(r.url).split("?")[0] for r in page.history]
    assert visited[-2:] == [
        f"{auth_hub['hub_url']}hub/api/oauth2/authorize",
        f"http://127.0.0.1:{auth_hub['app_port']}/oauth_callback",
    ]
    # (the client re-escapes ':' in the path, so compare unescaped)
    assert unquote(str(page.url)).endswith(unquote(f"/v2/{spec}"))
    assert "text/html" in page.headers["Content-Type"]

    build_url = f"{binder.make_url('/build/')}{spec}"
    readies = []
    for _ in range(2):
        status, events = await read_events(binder.session, build_url)
        assert status == 200 and events[-1]["phase"] == "ready", events[-3:]
        readies.append(events[-1])

    names = []
    for ready in readies:
        # /user/<the logged-in user>/<a named server>/: no temporary user
        prefix = f"{auth_hub['hub_url']}user/{user}/"
        assert ready["url"].startswith(prefix), ready["url"]
        server = ready["url"].removeprefix(prefix).strip("/")
        assert server.startswith("binder-dockerfile-"), server
        names.append(server)
        service = naming.spawner_service_name(user, server)
        assert len(service) <= naming.MAX_SERVICE_NAME_LENGTH
        assert docker("service", "inspect", "--format", "{{.Spec.Name}}", service).strip()
        async with aiohttp.ClientSession() as fresh:  # the token alone lets one in
            async with fresh.get(
                ready["url"] + "api/status", headers={"Authorization": f"token {ready['token']}"}
            ) as resp:
                assert resp.status == 200 and "started" in await resp.json()
    assert names[0] != names[1]
    assert set(names) <= set((await hub_user(auth_hub, user))["servers"])


async def test_build_without_a_login_is_refused(
    binder: TestClient[Any, Any], testground: dict[str, Any]
) -> None:
    url = f"{binder.make_url('/build/')}{loading_path(testground)}"
    async with aiohttp.ClientSession() as stranger:
        status, events = await read_events(stranger, url)
    assert status == 403
    assert [e["phase"] for e in events] == ["failed"] and events[0]["status_code"] == 403
    assert "not logged in" in events[0]["message"]


async def test_a_failed_launch_removes_only_its_named_server(
    auth_hub: dict[str, Any], launchable_image: str, image_without_jupyter: str
) -> None:
    user = f"bob-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session, SwarmClient.connect() as swarm:
        hub = HubClient(auth_hub["hub_api_url"], auth_hub["token"], session)
        await hub.create_user(user)  # as a login would have
        launcher = Launcher(
            hub,
            swarm,
            hub_url=auth_hub["hub_url"],
            registry=None,
            launch_timeout=60,
            allow_named_servers=True,
        )

        async def launch(image: str) -> list[Any]:
            return [
                event
                async for event in launcher.launch(
                    image,
                    repo_url="http://127.0.0.1:8480/binder-dockerfile.git",
                    provider_spec="git/x/main",
                    ref_url="http://127.0.0.1:8480/binder-dockerfile.git",
                    binder_request="v2/git/x/main",
                    binder_persistent_request="v2/git/x/abc",
                    binder_launch_host="http://binder.test/",
                    username=user,
                )
            ]

        kept = (await launch(launchable_image))[-1]
        assert kept.phase is Phase.READY
        kept_server = kept.fields["url"].rstrip("/").rsplit("/", 1)[-1]

        with pytest.raises(LaunchFailed):
            await launch(image_without_jupyter)
        await launcher.aclose()

        model = await hub_user(auth_hub, user)
        assert set(model["servers"]) == {kept_server}  # the user and its other server stay
        services = await swarm.list_services({"swarmbinder.hub": auth_hub["name"]})
        ours = {s.name for s in services if s.name.startswith(naming.spawner_service_name(user))}
        assert ours == {naming.spawner_service_name(user, kept_server)}
