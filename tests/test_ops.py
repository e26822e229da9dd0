"""/versions, /health, /metrics and API CORS, through aiohttp's test client."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from swarmbinder.config import Config
from swarmbinder.cors import cors_applies
from swarmbinder.handlers import ops
from swarmbinder.health import CheckResult, HealthChecker
from swarmbinder.keys import CONFIG, HEALTH, METRICS
from swarmbinder.metrics import Metrics


def make_app(
    health: HealthChecker | None = None,
    metrics: Metrics | None = None,
    cors_allow_origin: str = "",
) -> web.Application:
    app = web.Application(middlewares=[ops.cors_preflight(cors_allow_origin)])
    app[CONFIG] = Config()
    if health is not None:
        app[HEALTH] = health
    app[METRICS] = metrics or Metrics()
    app.on_response_prepare.append(ops.cors_signal(cors_allow_origin))
    app.router.add_get("/versions", ops.versions)
    app.router.add_get("/health", ops.health)
    app.router.add_get("/metrics", ops.metrics)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"phase": "waiting"}\n\n')
        return response

    async def api(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/build/{provider}/{spec:.+}", stream)
    app.router.add_get("/api/repoproviders", api)
    app.router.add_get("/api/admin/bans", api)
    return app


async def test_health_ok(aiohttp_client: AiohttpClient) -> None:
    async def fine() -> CheckResult:
        return True

    client = await aiohttp_client(make_app(HealthChecker({"JupyterHub API": fine})))
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "checks": [{"service": "JupyterHub API", "ok": True}],
    }


async def test_health_503_names_what_is_down(aiohttp_client: AiohttpClient) -> None:
    async def fine() -> CheckResult:
        return True

    async def hung() -> CheckResult:
        await asyncio.Event().wait()
        return True

    async def broken() -> CheckResult:
        raise ConnectionRefusedError("no engine")

    checker = HealthChecker(
        {"Docker registry": fine, "JupyterHub API": hung, "Swarm manager": broken}, timeout=0.05
    )
    client = await aiohttp_client(make_app(checker))
    response = await client.get("/health")
    assert response.status == 503
    body = await response.json()
    assert body["ok"] is False
    down = {c["service"]: c.get("error") for c in body["checks"] if not c["ok"]}
    assert down == {
        "JupyterHub API": "timed out after 0.05s",
        "Swarm manager": "ConnectionRefusedError",
    }
    head = await client.head("/health")
    assert head.status == 503


async def test_health_without_checks_answers(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/health")
    assert (response.status, await response.json()) == (200, {"ok": True, "checks": []})


async def test_metrics_in_prometheus_text_format(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    metrics.start_build("GitHub", "https://github.com/org/repo").finish("success")
    client = await aiohttp_client(make_app(metrics=metrics))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["binderhub_build_count"].type == "counter"
    assert families["binderhub_inprogress_builds"].samples[0].value == 0
    (sample,) = [s for s in families["binderhub_build_count"].samples if s.name.endswith("_total")]
    assert sample.labels == {
        "status": "success",
        "provider": "GitHub",
        "repo": "https://github.com/org/repo",
    }


async def test_metrics_openmetrics_when_asked(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_versions_unchanged(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(cors_allow_origin="https://example.org"))
    response = await client.get("/versions")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = await response.json()
    assert body["binderhub"].startswith("swarmbinder ")
    assert body["builder"] == body["builder_info"]["build_image"]


async def test_cors_on_the_build_stream_and_api(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(cors_allow_origin="https://example.org"))
    stream = await client.get("/build/gh/org/repo/HEAD")
    assert stream.headers["Access-Control-Allow-Origin"] == "https://example.org"
    assert stream.headers["Access-Control-Allow-Headers"] == "cache-control"
    assert (await stream.text()).startswith("data: ")
    api = await client.get("/api/repoproviders")
    assert api.headers["Access-Control-Allow-Origin"] == "https://example.org"
    preflight = await client.options(
        "/build/gh/org/repo/HEAD",
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://example.org"


async def test_no_cors_for_admin_or_pages_or_when_unset(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(cors_allow_origin="*"))
    admin = await client.get("/api/admin/bans")
    assert "Access-Control-Allow-Origin" not in admin.headers
    preflight = await client.options("/api/admin/bans")
    assert preflight.status == 405
    health = await client.get("/health")
    assert "Access-Control-Allow-Origin" not in health.headers

    unset = await aiohttp_client(make_app())
    stream = await unset.get("/build/gh/org/repo/HEAD")
    assert "Access-Control-Allow-Origin" not in stream.headers
    assert stream.headers["Access-Control-Allow-Headers"] == "cache-control"


def test_cors_paths_under_a_base_url() -> None:
    assert cors_applies("/binder/build/gh/org/repo/HEAD", "/binder/")
    assert cors_applies("/binder/api/repoproviders", "/binder/")
    assert not cors_applies("/build/gh/org/repo/HEAD", "/binder/")
    assert not cors_applies("/binder/api/admin/quotas", "/binder/")
    assert not cors_applies("/binder/v2/gh/org/repo/HEAD", "/binder/")


def test_a_multi_line_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="single line"):
        ops.cors_signal("https://a.example\r\nSet-Cookie: x=1")
