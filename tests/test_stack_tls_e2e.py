"""``swarmbinder up --tls`` for real: the TLS proxy (Caddy) in front of Binder and the hub.

One deployment for the whole file, next to the test ground under a name and ports of its own,
switched between the three modes by ``up`` itself, in order: the local CA (HTTPS verified
against the root ``up`` copied out, the plain-HTTP redirect, a launch through HTTPS, and a
real Chromium that trusts the root through an NSS database), bad input (refused in one line,
nothing made), the operator's certificate (the served certificate is theirs), and ACME against
Debian's ``pebble`` on this machine (a certificate issued after a real HTTP or TLS-ALPN
challenge through the published ports). The host name is ``localhost``: every client here
resolves it without help, pebble included.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_support import chromium_executable, launch_browser
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright, expect
from test_browser_launch import JUPYTER_PAGE
from test_stack_e2e import (  # the single-replica e2e test's helpers and git server
    deployed_stack,
    docker,
    free_port,
    swarmbinder,
)
from tls_support import make_ca, make_leaf

from swarmbinder import hostsetup as hs
from swarmbinder.events import SSEDecoder
from swarmbinder.stackctl.options import STATE_DIR

pytestmark = pytest.mark.swarm

HOST = "localhost"


@pytest.fixture(scope="module")
def tls_stack(
    testground: dict[str, Any],
    git_for_containers: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    ports = {name: free_port() for name in ("http", "https", "hub-https", "registry-https")}
    kept = ["--host", HOST, f"--http-port={ports['http']}", f"--https-port={ports['https']}"]
    kept += [f"--hub-https-port={ports['hub-https']}"]
    kept += [f"--registry-https-port={ports['registry-https']}"]
    tmp = tmp_path_factory.mktemp("tls")
    with deployed_stack("sbtls", tmp, git_for_containers, "--tls", "local", kept_args=kept) as made:
        ports |= {"port": made["port"], "hub-port": made["hub_port"]}
        ports["registry-port"] = made["registry_port"]
        yield {**made, "ports": ports}
    # Nothing of the proxy left on this machine either: its Caddyfile, the CA root's copy.
    stack = made["stack"]
    assert not list(STATE_DIR.glob(f"{stack}-*")), list(STATE_DIR.glob(f"{stack}-*"))


def root_of(up: subprocess.CompletedProcess[str]) -> Path:
    """The root certificate ``up`` says it copied out."""
    said = [ln for ln in up.stderr.splitlines() if "the local CA's root certificate is in" in ln]
    assert len(said) == 1, up.stderr[-2000:]
    path = Path(said[0].split(" is in ", 1)[1].split(":", 1)[0])
    assert path.is_file() and "BEGIN CERTIFICATE" in path.read_text()
    return path


def https(url: str, cafile: Path, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def plain_get(port: int, path: str) -> http.client.HTTPResponse:
    """One plain-HTTP request, its redirect not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": f"{HOST}:{port}"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def served_certificate(port: int) -> bytes:
    """The leaf certificate (DER) the proxy serves for HOST, whoever signed it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der
    return der


def read_events_https(url: str, cafile: Path, timeout: float = 240) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        while not events or events[-1]["phase"] not in ("ready", "failed"):
            chunk = resp.read1(65536)
            if not chunk:
                break
            events.extend(decoder.feed(chunk))
    return events


def test_local_ca_serves_verified_https(tls_stack: dict[str, Any]) -> None:
    up, ports = tls_stack["up"], tls_stack["ports"]
    assert up.stdout.strip() == f"Binder is running at https://{HOST}:{ports['https']}/"
    root = root_of(up)
    status, headers, body = https(f"https://{HOST}:{ports['https']}/versions", root)
    assert status == 200 and "binderhub" in json.loads(body), body[:300]
    # No HSTS from a local CA: a browser told it would lock its user out once the root goes.
    assert headers["Strict-Transport-Security"] is None
    status, _, body = https(f"https://{HOST}:{ports['hub-https']}/hub/api/", root)
    assert status == 200 and "version" in json.loads(body)
    # Binder believes the proxy's X-Forwarded-For from the front network, and from nowhere else
    # (the stack's own network is attachable).
    stack = tls_stack["stack"]
    (binder,) = docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_binder"
    ).split()
    shown = json.loads(docker("exec", binder, "swarmbinder", "show-config", "--json"))
    front = json.loads(
        docker("network", "inspect", "--format", "{{json .IPAM.Config}}", f"{stack}-front")
    )[0]["Subnet"]
    assert shown["trusted_proxies"] == [front], shown["trusted_proxies"]
    # Without the root, the same request is refused: the trust is the root's, nothing else's.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://{HOST}:{ports['https']}/versions", timeout=30)


def test_plain_http_redirects_to_https(tls_stack: dict[str, Any]) -> None:
    ports = tls_stack["ports"]
    resp = plain_get(ports["http"], "/v2/gh/org/repo/main?filepath=a.ipynb")
    assert resp.status == 308
    assert resp.headers["Location"] == (
        f"https://{HOST}:{ports['https']}/v2/gh/org/repo/main?filepath=a.ipynb"
    )
    resp = plain_get(ports["http"], "/hub/login")
    assert (resp.status, resp.headers["Location"]) == (
        308,
        f"https://{HOST}:{ports['hub-https']}/hub/login",
    )
    # A path that pretends to be another host stays on ours.
    resp = plain_get(ports["http"], "//evil.example/x")
    assert resp.headers["Location"].startswith(f"https://{HOST}:{ports['https']}/")


def test_a_launch_through_https_is_ready_with_https_urls(
    tls_stack: dict[str, Any], testground: dict[str, Any], git_for_containers: str
) -> None:
    ports, root = tls_stack["ports"], root_of(tls_stack["up"])
    repo = quote(f"{git_for_containers}binder-dockerfile.git", safe="")
    head = testground["repos"]["binder-dockerfile"]["head"]
    started = time.monotonic()
    events = read_events_https(f"https://{HOST}:{ports['https']}/build/git/{repo}/{head}", root)
    print(f"launch over HTTPS: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert events[-1]["phase"] == "ready", events[-3:]
    ready = events[-1]
    assert ready["url"].startswith(f"https://{HOST}:{ports['hub-https']}/user/"), ready
    status, _, body = https(
        ready["url"] + "api/status", root, {"Authorization": f"token {ready['token']}"}
    )
    assert status == 200 and "started" in json.loads(body)
    # The server is told Binder's address as the browser used it (X-Forwarded-Proto from the
    # TLS proxy, a trusted peer), as BinderHub sets BINDER_LAUNCH_HOST.
    told = launch_hosts_told(HOST, ports["https"])
    assert f"https://{HOST}:{ports['https']}/" in told, told
    assert not any(host.startswith("http:") for host in told), told
    # The badge Binder hands out points at its HTTPS address too.
    status, _, page = https(f"https://{HOST}:{ports['https']}/v2/git/{repo}/{head}", root)
    assert status == 200
    assert f"https://{HOST}:{ports['https']}/".encode() in page
    assert f"http://{HOST}:{ports['https']}/".encode() not in page


def launch_hosts_told(host: str, port: int) -> set[str]:
    """The ``BINDER_LAUNCH_HOST`` of every user server told of Binder at ``host:port``."""
    listed = hs.run(["docker", "service", "ls", "-q", "--filter", "label=swarmbinder.image"])
    told = set()
    for service in listed.stdout.split():
        inspected = hs.run(
            [
                "docker",
                "service",
                "inspect",
                service,
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            ],
            check=False,
        )
        for entry in json.loads(inspected.stdout or "null") or []:
            name, _, value = entry.partition("=")
            if name == "BINDER_LAUNCH_HOST" and f"//{host}:{port}/" in value:
                told.add(value)
    return told


def nss_home(tmp_path: Path, root: Path) -> Path:
    """A HOME whose NSS database trusts ``root`` for websites, as Chromium on Linux reads it."""
    database = tmp_path / ".pki" / "nssdb"
    database.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-d", f"sql:{database}", "-N", "--empty-password"], check=True, timeout=30
    )
    subprocess.run(
        ["certutil", "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", "swarmbinder-local-ca"]
        + ["-i", str(root)],
        check=True,
        timeout=30,
    )
    return tmp_path


@pytest.fixture
def trusting_browser_setup(
    tls_stack: dict[str, Any], testground: dict[str, Any], git_for_containers: str, tmp_path: Path
) -> dict[str, str]:
    """The loading page's URL, the hub's user prefix, a HOME trusting the root, Chromium."""
    if not Path("/usr/bin/certutil").exists():
        hs._install_debian_packages(["libnss3-tools"], print)
    ports, root = tls_stack["ports"], root_of(tls_stack["up"])
    repo = quote(f"{git_for_containers}binder-dockerfile.git", safe="")
    head = testground["repos"]["binder-dockerfile"]["head"]
    return {
        "loading": f"https://{HOST}:{ports['https']}/v2/git/{repo}/{head}",
        "hub": f"https://{HOST}:{ports['hub-https']}/user/",
        "home": str(nss_home(tmp_path, root)),
        "chromium": chromium_executable(),
    }


async def test_chromium_launches_over_https_with_the_local_ca_trusted(
    trusting_browser_setup: dict[str, str],
) -> None:
    setup = trusting_browser_setup
    # An untrusting browser (the same Chromium without the root) stops at the certificate.
    async with launch_browser(setup["chromium"]) as untrusting:
        page = await untrusting.new_page()
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            await page.goto(setup["loading"])
    args = ["--disable-dev-shm-usage", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    # HTTP/1.1: Chromium on Linux closes its HTTP/2 sessions, streams in flight included, with
    # ERR_NETWORK_CHANGED whenever an interface appears, and this browser runs on the Docker
    # host, where starting the user server adds one (seen: the build stream cut 3 s after the
    # launch began). A browser elsewhere never sees the swarm's interfaces.
    args.append("--disable-http2")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=setup["chromium"],
            headless=True,
            args=args,
            env={**os.environ, "HOME": setup["home"]},
        )
        try:
            page = await browser.new_page()
            started = time.monotonic()
            await page.goto(setup["loading"])
            hub = setup["hub"]
            await page.wait_for_url(lambda url: url.startswith(hub), timeout=180_000)
            await expect(page.locator(JUPYTER_PAGE).first).to_be_visible(timeout=60_000)
            await expect(page.get_by_text("index.ipynb").first).to_be_visible(timeout=30_000)
            print(f"browser launch over HTTPS: {time.monotonic() - started:.1f} s", file=sys.stderr)
        finally:
            await browser.close()


def secrets_of(stack: str) -> list[str]:
    return sorted(
        docker("secret", "ls", "--format", "{{.Name}}", "--filter", f"name={stack}").split()
    )


def service_versions(stack: str) -> str:
    """Every service of the stack with its spec version: an update changes it."""
    names = docker("service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}")
    return docker("service", "inspect", "--format", "{{.ID}} {{.Version.Index}}", *names.split())


def test_bad_tls_input_is_refused_and_changes_nothing(
    tls_stack: dict[str, Any], tmp_path: Path
) -> None:
    stack, args = tls_stack["stack"], tls_stack["args"]
    before = secrets_of(stack), service_versions(stack)
    nothing = f"https://127.0.0.1:{free_port()}/dir"
    without_host = [a for a in args if a not in ("--host", HOST)]
    cases = {
        "--tls acme needs --host": [*without_host, "--tls", "acme"],
        "--tls cert needs --tls-cert FILE and --tls-key FILE": [*args, "--tls", "cert"],
        f"--tls-cert {tmp_path}/missing.pem: No such file or directory": [
            *args,
            "--tls",
            "cert",
            "--tls-cert",
            f"{tmp_path}/missing.pem",
            "--tls-key",
            f"{tmp_path}/missing.key",
        ],  # fmt: skip
        f"--acme-ca {nothing} does not answer": [*args, "--tls", "acme", "--acme-ca", nothing],
        f"stack {stack} serves HTTPS through its TLS proxy": without_host,
    }
    for message, case in cases.items():
        proc = swarmbinder("up", *case, timeout=120)
        lines = proc.stderr.strip().splitlines()
        # Refused before the engine is asked, in one line; the kept proxy is found on the
        # engine, after its progress line.
        one_line = len(lines) == 1 or message.startswith("stack ")
        assert proc.returncode == 2 and one_line, (message, proc.stderr[-1500:])
        assert lines[-1].startswith(f"swarmbinder: error: {message}"), (message, lines)
    after = secrets_of(stack), service_versions(stack)
    assert after == before


def test_the_operators_certificate_is_served(tls_stack: dict[str, Any], tmp_path: Path) -> None:
    stack, ports = tls_stack["stack"], tls_stack["ports"]
    ca = make_ca(tmp_path, "operator-ca")
    cert, key, der = make_leaf(tmp_path, ca, [HOST], [])
    # A certificate for another name is refused before anything is made.
    other, other_key, _ = make_leaf(tmp_path, ca, ["binder.example.org"], [])
    refused = swarmbinder(
        "up", *tls_stack["args"], "--tls", "cert", "--tls-cert", str(other),
        "--tls-key", str(other_key),
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"swarmbinder: error: --tls-cert {other} is not for {HOST}"

    started = time.monotonic()
    up = swarmbinder(
        "up", *tls_stack["args"], "--tls", "cert", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    print(f"up --tls cert: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert up.returncode == 0, up.stderr[-2000:]
    assert hashlib.sha256(served_certificate(ports["https"])).hexdigest() == (
        hashlib.sha256(der).hexdigest()
    )
    assert served_certificate(ports["hub-https"]) == der
    status, headers, _ = https(f"https://{HOST}:{ports['https']}/versions", ca[2])
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    made = [s for s in secrets_of(stack) if s.startswith(f"{stack}-tls-")]
    assert sorted(s.rsplit("-", 1)[0] for s in made) == [
        f"{stack}-tls-certificate",
        f"{stack}-tls-key",
    ]
    # The key is in a secret only: no service spec or label carries it.
    specs = docker("service", "inspect", f"{stack}_tls", f"{stack}_binder")
    assert "PRIVATE KEY" not in specs


@contextmanager
def pebble(tmp_path: Path, ports: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Debian's pebble on this machine: its directory on the address containers reach the
    host by, its management API on 127.0.0.1, its challenges sent to the stack's ports."""
    if not Path("/usr/bin/pebble").exists():
        hs._install_debian_packages(["pebble"], print)
    gateway = json.loads(
        docker("network", "inspect", "docker_gwbridge", "--format", "{{json .IPAM.Config}}")
    )[0]["Gateway"]
    ca = make_ca(tmp_path, "pebble-listener-ca")
    cert, key, _ = make_leaf(tmp_path, ca, ["localhost"], [gateway, "127.0.0.1"])
    listen, management = free_port(), free_port()
    config = tmp_path / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{gateway}:{listen}",
                    "managementListenAddress": f"127.0.0.1:{management}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": ports["http"],
                    "tlsPort": ports["https"],
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log = tmp_path / "pebble.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["/usr/bin/pebble", "-config", str(config), "-strict=false"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        directory = f"https://{gateway}:{listen}/dir"
        for _ in range(50):
            try:
                socket.create_connection((gateway, listen), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield {"dir": directory, "ca": ca[2], "management": management, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_acme_with_a_local_pebble(tls_stack: dict[str, Any], tmp_path: Path) -> None:
    ports = tls_stack["ports"]
    with pebble(tmp_path, ports) as server:
        started = time.monotonic()
        up = swarmbinder(
            "up", *tls_stack["args"], "--tls", "acme", "--acme-ca", server["dir"],
            "--acme-ca-root", str(server["ca"]), "--acme-email", "ops@example.org",
        )  # fmt: skip
        print(f"up --tls acme: {time.monotonic() - started:.1f} s", file=sys.stderr)
        assert up.returncode == 0, up.stderr[-2000:] + server["log"].read_text()[-3000:]
        # The served chain leads to the root pebble issued it under (not the listener's CA).
        context = ssl.create_default_context(cafile=str(server["ca"]))
        root_url = f"https://127.0.0.1:{server['management']}/roots/0"
        with urllib.request.urlopen(root_url, timeout=10, context=context) as resp:
            issued_root = tmp_path / "pebble-root.pem"
            issued_root.write_bytes(resp.read())
        status, headers, body = https(f"https://{HOST}:{ports['https']}/versions", issued_root)
        assert status == 200 and "binderhub" in json.loads(body)
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        status, _, _ = https(f"https://{HOST}:{ports['hub-https']}/hub/api/", issued_root)
        assert status == 200
