"""``swarmbinder up --replicas 3`` for real: three Binder tasks behind the front, a PostgreSQL
task the replicas and the hub share, a launch through the published port, then ``down``.

One deployment for the whole file (it takes a minute or two on two cores), next to the test
ground on the same engine, under a name and ports of its own, from the test ground's images.
Each replica is reached in its own container on its own 127.0.0.1 (``docker exec``), never by
an overlay address.

Then what the replicas must hold together (issue 16): a ban set through one replica refuses
the next request at every replica, a quota of 1 and a rate limit of 10 an hour hold across
them, a PostgreSQL outage is a 503 that ends every stream and passes by itself, and a restart
of every replica loses no ban, quota or audit entry. The rate limit counts per client address:
each check speaks from loopback addresses of its own (``replica_requests``), and the host's
requests through the front share one address, whatever X-Forwarded-For they send.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest
from replica_requests import POLL, last_event, request_in, running_in, stream_in
from test_stack_e2e import (  # the single-replica e2e test's helpers and git server
    deployed_stack,
    docker,
    read_events,
    swarmbinder,
)

pytestmark = pytest.mark.swarm

REPLICAS = 3
PSQL = ["psql", "-h", "/run/postgresql", "-U", "binder", "-At"]
#: Banned in the stack's config: refused at resolution, after admission counted the request.
BANNED = "^banned/.*"
BANNED_BUILD = "/build/gh/banned/repo/HEAD"
BANNED_MESSAGE = "is not allowed to launch"
DATABASE_AWAY = "database is not answering"
#: A repository on a closed loopback port, banned through the admin API by the ban test:
#: without the ban it is refused at once by the outbound check (with another message), so
#: nothing is fetched or built.
EVIL = f"evil-{uuid.uuid4().hex[:6]}"
EVIL_BUILD = f"/build/git/{quote(f'http://127.0.0.1:9/org/{EVIL}.git', safe='')}/HEAD"


def containers(stack: str, service: str) -> list[str]:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_{service}"
    ).split()


def in_replica(container: str, path: str) -> str:
    """GET a replica's own port from inside its container."""
    code = (
        "import urllib.request as u, sys; "
        f"sys.stdout.write(u.urlopen('http://127.0.0.1:8585{path}', timeout=10).read().decode())"
    )
    return docker("exec", container, "python3", "-c", code)


@pytest.fixture(scope="module")
def replicated(
    testground: dict[str, Any],
    git_for_containers: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    # The limits the replicas must hold together: BinderHub's 10 launches per client an hour
    # (the default, written out), and a ban in the config that refuses a spec cheaply, after
    # admission has counted the request.
    limits = f"rate_limit: 10\nrate_limit_period: 3600\nbanned_specs: ['{BANNED}']\n"
    with deployed_stack(
        "sbrep",
        tmp_path_factory.mktemp("replicas"),
        git_for_containers,
        *("--replicas", str(REPLICAS)),
        config_extra=limits,
    ) as made:
        yield made


def test_three_replicas_and_postgres_come_up(replicated: dict[str, Any]) -> None:
    stack, up = replicated["stack"], replicated["up"]
    assert up.stdout.strip() == f"Binder is running at http://127.0.0.1:{replicated['port']}/"
    assert f"{REPLICAS} Binder replica(s) on PostgreSQL" in up.stderr
    assert f"created secret {stack}-postgres-password" in up.stderr
    running = docker(
        "service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
        f"{stack}_binder",
    ).splitlines()  # fmt: skip
    assert len(running) == REPLICAS and all(s.startswith("Running") for s in running), running
    assert len(containers(stack, "postgres")) == 1
    # Each replica answers on its own port, configured for the shared database, password hidden.
    replicas = containers(stack, "binder")
    assert len(replicas) == REPLICAS
    for container in replicas:
        assert json.loads(in_replica(container, "/health"))["ok"] is True
        shown = json.loads(docker("exec", container, "swarmbinder", "show-config", "--json"))
        store = {k: v for k, v in shown.items() if k.startswith("store_")}
        assert store["store_url"] == "postgresql://binder@postgres:5432/binder", shown
        assert store["store_password"] == "***", store


def test_the_hub_keeps_its_database_in_postgres(replicated: dict[str, Any]) -> None:
    (postgres,) = containers(replicated["stack"], "postgres")
    tables = docker(
        "exec", "-u", "postgres", postgres, *PSQL, "-d", "jupyterhub", "-c",
        "select tablename from pg_tables where schemaname = 'public'",
    ).split()  # fmt: skip
    assert {"users", "servers", "spawners", "api_tokens", "alembic_version"} <= set(tables)
    # The hub's SQLite file was never made: its state is in PostgreSQL only.
    (hub,) = containers(replicated["stack"], "hub")
    listing = docker("exec", hub, "ls", "/srv/jupyterhub/data").split()
    assert "jupyterhub.sqlite" not in listing, listing


def test_no_password_in_any_service_spec(replicated: dict[str, Any]) -> None:
    stack = replicated["stack"]
    (postgres,) = containers(stack, "postgres")
    password = docker("exec", postgres, "cat", "/run/secrets/postgres_password").strip()
    assert len(password) >= 32
    services = docker(
        "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"
    )
    specs = docker("service", "inspect", *services.split())
    assert len(json.loads(specs)) == 6  # registry, hub, proxy, binder, postgres, front
    assert password not in specs
    for container in containers(stack, "binder") + containers(stack, "hub"):
        assert password not in docker("inspect", container)


def test_postgres_is_on_its_own_network_and_unpublished(replicated: dict[str, Any]) -> None:
    stack = replicated["stack"]
    (postgres,) = containers(stack, "postgres")
    networks = docker(
        "inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        postgres,
    ).split()  # fmt: skip
    assert networks == [f"{stack}-db"]
    spec = json.loads(docker("service", "inspect", f"{stack}_postgres"))[0]
    assert not spec["Endpoint"].get("Ports")
    # Binder's replicas and the hub only: not the proxy, the registry, the front or a user server.
    on_db = json.loads(
        docker("network", "inspect", "--format", "{{json .Containers}}", f"{stack}-db")
    )
    expected = containers(stack, "postgres") + containers(stack, "binder")
    expected += containers(stack, "hub")
    assert {c[:12] for c in on_db if not c.startswith("lb-")} == {c[:12] for c in expected}


def test_a_launch_works_through_the_front_and_spreads(
    replicated: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    port, stack = replicated["port"], replicated["stack"]
    repo = quote(f"{git_for_containers}binder-dockerfile.git", safe="")
    head = testground["repos"]["binder-dockerfile"]["head"]
    events = read_events(f"http://127.0.0.1:{port}/build/git/{repo}/{head}")
    assert events[-1]["phase"] == "ready", events[-3:]
    assert events[-1]["url"].startswith(f"http://127.0.0.1:{replicated['hub_port']}/user/")
    (postgres,) = containers(stack, "postgres")
    users = docker(
        "exec", "-u", "postgres", postgres, *PSQL, "-d", "jupyterhub", "-c",
        "select count(*) from spawners where server_id is not null",
    ).strip()  # fmt: skip
    assert users == "1"  # the launched server, as the hub recorded it in PostgreSQL
    # Requests through the published port reach every replica (the front's round robin).
    marker = f"spread-{uuid.uuid4().hex[:8]}"
    for _ in range(3 * REPLICAS):
        subprocess.run(
            ["curl", "-fsS", "-o", "/dev/null", "-A", marker, f"http://127.0.0.1:{port}/versions"],
            check=True,
            timeout=30,
        )
    served = [docker_logs(c).count(marker) for c in containers(stack, "binder")]
    assert sorted(served) == [3] * REPLICAS, served


def docker_logs(container: str) -> str:
    proc = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout + proc.stderr


def test_a_plain_up_keeps_the_replicas(replicated: dict[str, Any]) -> None:
    again = swarmbinder("up", *replicated["args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{REPLICAS} Binder replica(s) on PostgreSQL" in again.stderr
    # Nothing to deploy, unless someone rebuilt the shared service image meanwhile.
    if "deploying" in again.stderr:
        assert f"deploying stack {replicated['stack']} (swarmbinder-image" in again.stderr
    assert len(containers(replicated["stack"], "binder")) == REPLICAS


def test_bad_replicas_change_nothing(replicated: dict[str, Any]) -> None:
    for bad in (["--replicas", "0"], ["--replicas", "3", "--store", "sqlite"]):
        proc = swarmbinder("up", *replicated["args"], *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert len(containers(replicated["stack"], "binder")) == REPLICAS


# -- limits the replicas hold together ----------------------------------------------------------


def git_build(git_url: str, repo: str, ref: str) -> str:
    return f"/build/git/{quote(f'{git_url}{repo}.git', safe='')}/{ref}"


def test_a_ban_through_one_replica_refuses_the_next_request_at_every_replica(
    replicated: dict[str, Any],
) -> None:
    replicas = containers(replicated["stack"], "binder")
    path = EVIL_BUILD
    pattern = rf"^[a-z+]+://127\.0\.0\.1:9/org/{EVIL}$"  # its canonical URL, every spelling
    with (
        running_in(replicas[0], POLL, path, "127.1.0", BANNED_MESSAGE, "20") as a,
        running_in(replicas[1], POLL, path, "127.1.1", BANNED_MESSAGE, "20") as b,
        running_in(replicas[2], POLL, path, "127.1.2", BANNED_MESSAGE, "20") as c,
    ):
        pollers = (a, b, c)
        for poller in pollers:
            baseline = poller.next(timeout=60)
            assert baseline is not None
            assert BANNED_MESSAGE not in baseline["baseline"]["message"], baseline
        added = request_in(
            replicas[0],
            "/api/admin/bans",
            source="127.1.9.1",
            method="POST",
            admin=True,
            body={"kind": "spec", "pattern": pattern, "reason": "e2e ban"},
        )
        assert added["status"] == 201, added
        refusals = [poller.next(timeout=60) for poller in pollers]
    lags = [r["refused_at"] - added["started"] for r in refusals if r and r["refused_at"]]
    assert len(lags) == REPLICAS, refusals
    # From the moment the ban was sent to one replica, each replica refuses within a second.
    assert max(lags) < 1.0, lags
    print(f"ban reached every replica in {max(lags) * 1000:.0f} ms", file=sys.stderr)
    for refusal in refusals:
        assert refusal is not None
        assert refusal["event"]["status_code"] == 403


def test_a_quota_of_one_holds_across_replicas_under_concurrent_launches(
    replicated: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    replicas = containers(replicated["stack"], "binder")
    admin = {"source": "127.2.9.1", "admin": True}
    # The repository launched through the front earlier: its image is built, its server stops.
    servers = request_in(replicas[0], "/api/admin/servers", **admin)["json"]["servers"]
    for server in servers:
        if "binder-dockerfile" in server["repo_url"]:
            path = f"/api/admin/servers/{server['user']}"
            stopped = request_in(replicas[0], path, method="DELETE", **admin)
            assert stopped["status"] == 200, stopped
    deadline = time.monotonic() + 60
    while any("binder-dockerfile" in s["repo_url"] for s in servers):
        assert time.monotonic() < deadline, f"servers still running: {servers}"
        time.sleep(1)
        servers = request_in(replicas[0], "/api/admin/servers", **admin)["json"]["servers"]
    quota = {"pattern": r".*/binder-dockerfile(\.git)?$", "quota": 1}
    set_quota = request_in(replicas[1], "/api/admin/quotas", method="POST", body=quota, **admin)
    assert set_quota["status"] == 200, set_quota
    head = testground["repos"]["binder-dockerfile"]["head"]
    path = git_build(git_for_containers, "binder-dockerfile", head)

    def launch(i: int) -> dict[str, Any]:
        return request_in(replicas[i % REPLICAS], path, source="127.2.0.1", timeout=300)

    # Six at once, two through each replica: each replica alone would let one through.
    with ThreadPoolExecutor(6) as pool:
        finals = [last_event(result) for result in pool.map(launch, range(6))]
    ready = [e for e in finals if e.get("phase") == "ready"]
    refused = [e for e in finals if e.get("phase") == "failed"]
    assert len(ready) == 1, finals
    assert len(refused) == 5, finals
    for event in refused:
        assert event["status_code"] == 429, event
        assert event["message"].startswith("Too many users running "), event
    usage = request_in(replicas[2], "/api/admin/servers", **admin)["json"]["repos"]
    assert [r["running"] for r in usage if "binder-dockerfile" in r["repo_url"]] == [1], usage


def test_a_rate_limit_of_ten_an_hour_holds_across_replicas(replicated: dict[str, Any]) -> None:
    replicas = containers(replicated["stack"], "binder")

    def banned(i: int) -> dict[str, Any]:
        return request_in(replicas[i % REPLICAS], BANNED_BUILD, source="127.3.0.1")

    # Twelve at once from one client, four through each replica.
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(banned, range(12)))
    admitted = [r for r in results if BANNED_MESSAGE in last_event(r).get("message", "")]
    limited = [r for r in results if r["status"] == 429]
    assert (len(admitted), len(limited)) == (10, 2), [last_event(r) for r in results]
    for result in limited:
        assert last_event(result)["message"].startswith("Rate limit exceeded.")
        assert 3500 < int(result["headers"]["retry-after"]) <= 3600
    # Every replica now refuses this client, and only this one.
    for container in replicas:
        assert request_in(container, BANNED_BUILD, source="127.3.0.1")["status"] == 429
        assert request_in(container, BANNED_BUILD, source="127.3.0.2")["status"] == 200

    # A hostile client through the front: a new X-Forwarded-For on every request does not make
    # it someone new. The front adds the address it sees, and only that one is believed.
    statuses = []
    for i in range(12):
        request = urllib.request.Request(
            f"http://127.0.0.1:{replicated['port']}{BANNED_BUILD}",
            headers={"Accept": "text/event-stream", "X-Forwarded-For": f"198.51.100.{i + 1}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                statuses.append((resp.status, resp.headers.get("X-RateLimit-Remaining")))
        except urllib.error.HTTPError as error:
            statuses.append((error.code, None))
    # The launch through the front earlier counted too: 9 left at most, then refused.
    remaining = [int(left) for status, left in statuses if status == 200 and left is not None]
    assert remaining == list(range(remaining[0], remaining[0] - len(remaining), -1)), statuses
    assert remaining[-1] == 0 and len(remaining) <= 9, statuses
    assert {status for status, _ in statuses[len(remaining) :]} == {429}, statuses


def test_a_postgres_outage_is_a_503_ends_open_streams_and_passes_by_itself(
    replicated: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    stack = replicated["stack"]
    replicas = containers(stack, "binder")
    head = testground["repos"]["binder-two-commits"]["head"]
    launch = git_build(git_for_containers, "binder-two-commits", head)
    addresses = (f"127.4.{n // 250}.{n % 250 + 1}" for n in range(10_000))
    # A launch whose image is not built yet, under way when the database goes.
    with running_in(*stream_in(replicas[1], launch, source="127.4.99.1", timeout=600)) as stream:
        while (event := stream.next(timeout=120)) and event.get("event", {}).get("phase") not in (
            "building",
            "failed",
            "ready",
        ):
            pass
        assert event is not None and event["event"]["phase"] == "building", event
        docker("service", "scale", "--detach", f"{stack}_postgres=0")
        stopped_at = time.monotonic()
        # Every replica: a 503 naming the database within seconds, never a 500.
        for container in replicas:
            while True:
                result = request_in(container, BANNED_BUILD, source=next(addresses))
                final = last_event(result)
                assert final["status_code"] != 500 and result["status"] != 500, result
                if result["status"] == 503:
                    break
                assert time.monotonic() - stopped_at < 30, "no 503 within 30 s"
                time.sleep(0.5)
            assert final["status_code"] == 503 and DATABASE_AWAY in final["message"], final
            change = request_in(
                container,
                "/api/admin/bans",
                source=next(addresses),
                method="POST",
                admin=True,
                body={"kind": "network", "pattern": "192.0.2.0/24"},
            )
            assert change["status"] == 503 and "database" in change["json"]["message"], change
            health = request_in(container, "/health", source=next(addresses))
            assert health["status"] == 503
            (store,) = [c for c in health["json"]["checks"] if c["service"] == "Store database"]
            assert store["ok"] is False and DATABASE_AWAY in store["error"]
        # The launch under way ends too, with a clear failure, while the database is away.
        events: list[dict[str, Any]] = []
        try:
            while (line := stream.next(timeout=300)) is not None and "event" in line:
                events.append(line["event"])
        except queue.Empty:
            pytest.fail(f"the open event stream hung; its last events: {events[-3:]}")
    print(
        f"outage: the open stream ended {time.monotonic() - stopped_at:.1f} s in", file=sys.stderr
    )
    assert events[-1]["phase"] == "failed" and events[-1]["status_code"] == 503, events[-3:]

    docker("service", "scale", "--detach", f"{stack}_postgres=1")
    back_at = time.monotonic()
    for container in replicas:
        while BANNED_MESSAGE not in last_event(
            request_in(container, BANNED_BUILD, source=next(addresses))
        ).get("message", ""):
            assert time.monotonic() - back_at < 120, "a replica did not resume within 120 s"
            time.sleep(1)
    print(f"outage: every replica admits {time.monotonic() - back_at:.1f} s after", file=sys.stderr)
    # And launches again: the hub keeps its state in the same server.
    while (
        final := last_event(request_in(replicas[0], launch, source=next(addresses), timeout=300))
    )["phase"] != "ready":
        assert final.get("status_code") != 500, final
        assert time.monotonic() - back_at < 240, f"no launch within 240 s: {final}"
        time.sleep(2)


def test_a_restart_of_every_replica_loses_no_ban_quota_or_audit_entry(
    replicated: dict[str, Any],
) -> None:
    stack = replicated["stack"]
    before = containers(stack, "binder")
    admin = {"admin": True, "source": "127.5.0.1"}
    added = request_in(
        before[0],
        "/api/admin/bans",
        method="POST",
        body={"kind": "network", "pattern": "203.0.113.0/24", "reason": "restart check"},
        **admin,
    )
    assert added["status"] == 201, added

    def state(container: str) -> dict[str, Any]:
        bans = request_in(container, "/api/admin/bans", **admin)["json"]["bans"]
        quotas = request_in(container, "/api/admin/quotas", **admin)["json"]["overrides"]
        audit = request_in(container, "/api/admin/audit?limit=1000", **admin)["json"]["audit"]
        return {"bans": bans, "quotas": quotas, "audit": audit}

    kept = state(before[0])
    assert {b["reason"] for b in kept["bans"] if b["source"] == "admin"} >= {
        "e2e ban",
        "restart check",
    }
    assert [q["quota"] for q in kept["quotas"]] == [1]
    assert {"ban.add", "quota.set"} <= {entry["action"] for entry in kept["audit"]}

    started = time.monotonic()
    proc = subprocess.run(
        ["docker", "service", "update", "--force", "--detach=false", "--quiet", f"{stack}_binder"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"restart of every replica: {time.monotonic() - started:.1f} s", file=sys.stderr)
    after = containers(stack, "binder")
    assert len(after) == REPLICAS and not set(after) & set(before), (before, after)
    for container in after:
        assert state(container) == kept
        # And enforced at once by the new tasks.
        refused = last_event(request_in(container, EVIL_BUILD, source="127.5.0.2"))
        assert BANNED_MESSAGE in refused["message"], refused
