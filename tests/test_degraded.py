"""Degraded mode: the engine, the registry or the hub does not answer, then comes back.

Each test puts a forwarding proxy, switched off, between the real app and one real dependency
of the test ground, and starts the app. With the dependency gone the app must serve its pages,
badges, /versions and /metrics, say in /health (503) what is down, and answer /build with a
``failed`` event naming it. Then the proxy is switched on, and the same app, without a restart,
must report healthy and launch a server (or build, for the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from app_support import ground_endpoints
from test_build_api import read_events, spec_for, stop_server

from swarmbinder.app import create_app
from swarmbinder.config import load_config

pytestmark = pytest.mark.swarm

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

#: How long the app may take to notice that a dependency came back (health is cached 5 s,
#: the build manager retries every 5 s).
RECOVERY_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Forwarder:
    """A TCP listener on 127.0.0.1 that forwards each connection to a target; ``off`` closes
    the listener and cuts every open connection, so the target looks gone (connection
    refused), and ``on`` listens again on the same port."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def on(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def off(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await self._connect()
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for w in pair:
                w.transport.abort()
            self._writers -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def to_unix(path: str) -> Connect:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(path)

    return connect


def to_tcp(url: str) -> Connect:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port)

    return connect


@pytest.fixture
def app_config(testground: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "image_prefix": f"{testground['image_prefix']}degr{run}-",
        **ground_endpoints(testground, tmp_path),
        "launch_timeout": 60,
    }


@contextlib.asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(load_config(env={}, overrides=config))
    started = time.monotonic()
    async with TestClient(TestServer(app)) as client:
        # Starting must not wait for what is down.
        assert time.monotonic() - started < 5
        yield client


async def assert_degraded(binder: TestClient[Any, Any], down: str) -> None:
    """Pages, badges, /versions and /metrics answer; /health is 503 naming ``down``."""
    for path in ("/", "/about", "/badge.svg", "/api/repoproviders"):
        resp = await binder.get(path, headers={"Accept": "text/html"})
        assert resp.status == 200, path
    versions = await binder.get("/versions")
    assert versions.status == 200 and "binderhub" in await versions.json()
    metrics = await binder.get("/metrics")
    assert metrics.status == 200 and "binderhub_inprogress_builds" in await metrics.text()

    health = await binder.get("/health")
    assert health.status == 503
    report = await health.json()
    failing = {c["service"]: c for c in report["checks"] if not c["ok"]}
    assert down in failing, report
    assert failing[down]["error"], report
    # Only what is down is reported down (capacity is shown, never failing).
    assert set(failing) <= {down, "Build capacity"}, report


async def wait_healthy(binder: TestClient[Any, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        resp = await binder.get("/health")
        report: dict[str, Any] = await resp.json()
        if resp.status == 200:
            return report
        assert time.monotonic() < deadline, f"not healthy again: {report}"
        await asyncio.sleep(1)


async def launch_and_stop(
    binder: TestClient[Any, Any], testground: dict[str, Any], path: str
) -> list[dict[str, Any]]:
    events = await read_events(binder, path)
    assert events[-1]["phase"] == "ready", events[-3:]
    await stop_server(testground, events[-1])
    return events


async def test_engine_down_then_back(
    app_config: dict[str, Any], testground: dict[str, Any]
) -> None:
    socket_path = urlsplit(testground["docker_host"]).path
    proxy = Forwarder(to_unix(socket_path))
    config = {**app_config, "docker_host": f"tcp://127.0.0.1:{proxy.port}"}
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    try:
        async with serving(config) as binder:
            await assert_degraded(binder, "Swarm manager")
            started = time.monotonic()
            events = await read_events(binder, path)
            assert time.monotonic() - started < 5
            assert events[-1]["phase"] == "failed", events
            assert events[-1]["status_code"] == 503
            assert events[-1]["message"] == (
                "The Docker Swarm manager is not answering right now.\n"
            )
            metrics = await (await binder.get("/metrics")).text()
            assert "binderhub_inprogress_builds 0.0" in metrics

            await proxy.on()
            await wait_healthy(binder)
            # The build manager picked the engine up by itself: this builds and launches.
            events = await launch_and_stop(binder, testground, path)
            assert "building" in [e["phase"] for e in events]
    finally:
        await proxy.off()


async def test_registry_down_then_back(
    app_config: dict[str, Any], testground: dict[str, Any]
) -> None:
    proxy = Forwarder(to_tcp(testground["registry_url"]))
    # The app reaches the registry through the proxy; images keep the registry's own name,
    # which the nodes push to and pull from directly.
    config = {**app_config, "registry_url": f"http://127.0.0.1:{proxy.port}"}
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    try:
        async with serving(config) as binder:
            await assert_degraded(binder, "Docker registry")
            events = await read_events(binder, path)
            assert [e["phase"] for e in events] == ["failed"], events
            assert events[0]["status_code"] == 503
            assert events[0]["message"] == "The image registry is not available right now.\n"

            await proxy.on()
            await wait_healthy(binder)
            await launch_and_stop(binder, testground, path)
            # And the registry is really used again: the second launch finds the image.
            again = await launch_and_stop(binder, testground, path)
            assert again[0]["phase"] == "built", again[:2]
    finally:
        await proxy.off()


async def test_hub_down_then_back(app_config: dict[str, Any], testground: dict[str, Any]) -> None:
    proxy = Forwarder(to_tcp(testground["hub_url"]))
    # Browsers still go to the real hub_url; only the app's API calls cross the proxy.
    config = {**app_config, "hub_url_local": f"http://127.0.0.1:{proxy.port}/"}
    path = f"/build/{spec_for(testground, 'binder-dockerfile')}"
    try:
        async with serving(config) as binder:
            await assert_degraded(binder, "JupyterHub API")
            events = await read_events(binder, path)
            phases = [e["phase"] for e in events]
            # The image is built (the hub is not needed for that), the launch then fails.
            assert "built" in phases and phases[-1] == "failed", events[-3:]
            assert events[-1]["status_code"] == 503
            assert events[-1]["message"] == (
                "The JupyterHub that runs servers is not answering right now. Try again soon.\n"
            )
            metrics = await (await binder.get("/metrics")).text()
            assert "binderhub_inprogress_launches 0.0" in metrics

            await proxy.on()
            await wait_healthy(binder)
            again = await launch_and_stop(binder, testground, path)
            assert again[0]["phase"] == "built", again[:2]
            assert again[-1]["url"].startswith(testground["hub_url"])
    finally:
        await proxy.off()
