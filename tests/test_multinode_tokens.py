"""Scoped build logins on the 3-node ground: a build pushes with a login of its own from
whichever node it runs on, and that login reaches its own image repository only.

The registry runs as a cluster's would: a service of the 3-node swarm on node1 with
``auth: token`` and TLS, known to every engine as ``node1:<port>`` with its certificate in
``/etc/docker/certs.d`` (the README's advice for a registry off 127.0.0.1). The token endpoint
is the test process, served on the host's address on the ground's bridge: the engines, which
fetch the tokens for a push, reach it there as they reach Binder's published port on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import ipaddress
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from build_fixtures import TOKEN_CERT_PATH, TokenRealm, make_issuer, make_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multinode_support import (
    docker_on,
    healthy,
    manager_factory,
    multinode,
    repo_ranked,
    run_id,
    swarm,
)

from swarmbinder.builds import BuildManager
from swarmbinder.buildwatch import Build
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.registrytokens import TokenIssuer, make_signing_pair

__all__ = ["healthy", "manager_factory", "multinode", "run_id", "swarm"]  # fixtures

pytestmark = pytest.mark.swarm

BUILD_TIMEOUT = 150
REGISTRY_PORT = 5099  # published on every node by the routing mesh; free on the 3-node ground
NODES = ("node1", "node2", "node3")
PAIR = make_signing_pair()


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return make_issuer(PAIR, prefix="sbtest-")


@pytest.fixture(scope="module")
def realm(multinode: dict[str, Any], issuer: TokenIssuer) -> Iterator[TokenRealm]:
    """The token endpoint on the host's address on the ground's bridge."""
    gateway = subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            multinode["network"],
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    with TokenRealm(issuer, host=gateway) as served:
        yield served


def _tls_pair(host: str, address: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for the registry (as ``host`` and ``address``) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(address))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass(frozen=True)
class ClusterRegistry:
    host: str  # node1:PORT, as image names and every node's engine see it
    url: str  # https://<node1's address>:PORT, as the test process reaches it
    ca_file: str

    def status(self, path: str, token: str | None = None) -> int | None:
        context = ssl.create_default_context(cafile=self.ca_file)
        headers = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.url}{path}", method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None


def _secret(manager: str, name: str, data: bytes) -> None:
    subprocess.run(
        ["docker", "-H", manager, "secret", "create", name, "-"],
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def scoped_registry(
    multinode: dict[str, Any], realm: TokenRealm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterRegistry]:
    """A registry with token auth and TLS on node1, as a cluster runs one: every node's engine
    trusts its certificate through ``/etc/docker/certs.d/node1:PORT/ca.crt``."""
    manager = multinode["docker_host"]
    node1 = multinode["nodes"][0]
    host = f"{node1['name']}:{REGISTRY_PORT}"
    certificate, key = _tls_pair(node1["name"], node1["ip"])
    ca_file = tmp_path_factory.mktemp("registry-tls") / "ca.crt"
    ca_file.write_bytes(certificate)
    name = f"sbtest-registry-{uuid.uuid4().hex[:8]}"
    secrets = {
        f"{name}-token": PAIR.certificate_pem,
        f"{name}-tls": certificate,
        f"{name}-key": key,
    }
    for secret, data in secrets.items():
        _secret(manager, secret, data)
    for node in multinode["nodes"]:
        subprocess.run(
            ["docker", "exec", "-i", node["container"], "sh", "-c",
             f"mkdir -p /etc/docker/certs.d/{host} && cat > /etc/docker/certs.d/{host}/ca.crt"],
            input=certificate, capture_output=True, check=True, timeout=30,
        )  # fmt: skip
    registry = ClusterRegistry(host, f"https://{node1['ip']}:{REGISTRY_PORT}", str(ca_file))
    try:
        created = docker_on(
            manager,
            "service", "create", "--detach", "--name", name, "--no-resolve-image",
            "--publish", f"mode=host,published={REGISTRY_PORT},target=5000",
            "--mount", "type=tmpfs,dst=/var/lib/registry",
            "--constraint", f"node.hostname=={node1['name']}",
            "--secret", f"source={name}-token,target={TOKEN_CERT_PATH}",
            "--secret", f"source={name}-tls,target=/etc/docker/registry/tls.crt",
            "--secret", f"source={name}-key,target=/etc/docker/registry/tls.key",
            "--env", "REGISTRY_HTTP_TLS_CERTIFICATE=/etc/docker/registry/tls.crt",
            "--env", "REGISTRY_HTTP_TLS_KEY=/etc/docker/registry/tls.key",
            "--env", "REGISTRY_AUTH=token",
            "--env", f"REGISTRY_AUTH_TOKEN_REALM={realm.url}",
            "--env", "REGISTRY_AUTH_TOKEN_SERVICE=swarmbinder-registry",
            "--env", "REGISTRY_AUTH_TOKEN_ISSUER=swarmbinder",
            "--env", f"REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE={TOKEN_CERT_PATH}",
            multinode["images"]["registry"],
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 60
        while registry.status("/v2/") != 401:
            if time.monotonic() > deadline:
                raise AssertionError(f"the token registry did not come up on {registry.url}")
            time.sleep(0.3)
        yield registry
    finally:
        docker_on(manager, "service", "rm", name, timeout=30)
        for node in multinode["nodes"]:
            subprocess.run(
                ["docker", "exec", node["container"], "rm", "-rf", f"/etc/docker/certs.d/{host}"],
                capture_output=True, check=False, timeout=30,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        for secret in secrets:
            while docker_on(manager, "secret", "rm", secret, timeout=30).returncode != 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)


@pytest.fixture(scope="module")
def tiny_base(multinode: dict[str, Any]) -> Iterator[str]:
    """A one-file image in every node's engine."""
    name = f"sbtest-tiny-{uuid.uuid4().hex[:8]}:1"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = name.encode()
        info = tarfile.TarInfo("hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    for node in multinode["nodes"]:
        subprocess.run(
            ["docker", "-H", node["docker_host"], "import", "-", name],
            input=archive.getvalue(),
            capture_output=True,
            check=True,
            timeout=60,
        )
    yield name
    for node in multinode["nodes"]:
        docker_on(node["docker_host"], "rmi", "-f", name)


async def _events(build: Build) -> list[BuildEvent]:
    return [event async for event in build.events()]


async def test_a_build_pushes_with_its_own_login_from_every_node(
    healthy: dict[str, Any],
    manager_factory: Callable[..., BuildManager],
    tmp_path: Path,
    run_id: str,
    issuer: TokenIssuer,
    scoped_registry: ClusterRegistry,
    tiny_base: str,
) -> None:
    """Three repositories ranked first onto node1, node2 and node3 build at once; each pushes
    with its own login through the node's engine, and that login reaches nothing else."""
    ground = healthy
    # A one-file base in every node: the pushes are the point, not 700 MB of layers.
    dockerfile = f"FROM {tiny_base}\nLABEL repository={{name}}\nCOPY . /srv/\n"
    repos = [
        repo_ranked(ground, tmp_path, f"tok{run_id}{i}", dockerfile, lambda r, n=node: r[0] == n)
        for i, node in enumerate(NODES)
    ]
    registry = scoped_registry
    requests = [
        make_request(run_id, r.url, r.head, registry=registry.host, label=r.name) for r in repos
    ]
    manager = manager_factory(ground, registry_url=f"https://{registry.host}", issuer=issuer)
    builds = await asyncio.gather(*(manager.request(r) for r in requests))
    credentials = [b.credential for b in builds]
    watchers = [asyncio.ensure_future(_events(b)) for b in builds]
    await asyncio.wait(watchers, timeout=BUILD_TIMEOUT)
    unfinished = [f"{b.name} on {b.node}: {b.status}" for b in builds if not b.done.is_set()]
    for watcher in watchers:
        watcher.cancel()
    assert not unfinished, f"builds still running after {BUILD_TIMEOUT} s: {unfinished}"
    outcomes = [w.result() for w in watchers]
    for build, events in zip(builds, outcomes, strict=True):
        assert events[-1].phase is Phase.BUILT, f"{build.node}: {events[-1].message}"
    assert [b.node for b in builds] == list(NODES)

    for request in requests:
        name, tag = request.image.split("/", 1)[1].rsplit(":", 1)
        path = f"/v2/{name}/manifests/{tag}"
        assert registry.status(path) == 401  # anonymous: nothing
        assert registry.status(path, issuer.own_token([f"repository:{name}:pull"]).token) == 200

    # Each login was its build's own, scoped to its repository, and ended with it.
    for credential, request in zip(credentials, requests, strict=True):
        assert credential is not None
        assert credential.repository == request.image.split("/", 1)[1].rsplit(":", 1)[0]
        assert issuer.authenticate(credential.username, credential.password) is None
    with contextlib.suppress(Exception):
        await manager.cleanup()
