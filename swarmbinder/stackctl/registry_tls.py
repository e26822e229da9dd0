"""The registry over TLS for every node's engine, with no ``insecure-registries`` anywhere.

With ``--tls``, the TLS proxy also fronts the registry on a port of its own
(``--registry-https-port``) and image names start with ``<host>:<that port>``. ACME and the
operator's certificate need nothing on the nodes: their engines trust the certificate through
the system's roots. A local CA is trusted by no engine, so in ``--tls local`` mode:

- ``up`` makes the CA itself, once per stack: its key as a Swarm secret that only the TLS proxy
  mounts (Caddy signs with it: ``pki { ca <id> { root ... } }``), its root certificate as a
  Swarm config (readable back, so the next ``up`` finds the same CA, from any machine);
- the global service ``<stack>_registry-trust`` (stack/registry-trust.yml) writes that root to
  ``/etc/docker/certs.d/<host:port>/ca.crt`` on every node, a new node included, and removes it
  when it stops. An engine reads certs.d at each pull and push: no restart.

Hostile view: builds and user servers run repository content; neither mounts the CA key (only
the proxy does, and it runs no repository content) nor ``/etc/docker`` (only the trust service
does, running a fixed script from a stack image). The root certificate is public anyway.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .. import hostsetup as hs
from .options import (
    STACK_LABEL,
    TRUST_FILE,
    TRUST_SERVICE,
    Progress,
    StackError,
    StackOptions,
)

#: Label of the CA's secret and config (value: the stack), so ``down --purge`` finds them.
CA_LABEL = "swarmbinder.tls-ca"
#: ``{stack}-tls-ca-key-{digest}`` and ``{stack}-tls-ca-root-{digest}``: one pair, named by the
#: root's digest, since the key (a secret) cannot be read back to check it against a root.
CA_KEY_PREFIX, CA_ROOT_PREFIX = "tls-ca-key-", "tls-ca-root-"
CA_DAYS = 3650


@dataclass(frozen=True)
class LocalCA:
    """The stack's local CA as deployed: the secret and config names and the root itself."""

    stack: str
    digest: str
    root_pem: bytes

    @property
    def key_secret(self) -> str:
        return f"{self.stack}-{CA_KEY_PREFIX}{self.digest}"

    @property
    def root_config(self) -> str:
        return f"{self.stack}-{CA_ROOT_PREFIX}{self.digest}"

    @property
    def ca_id(self) -> str:
        """Caddy's name for it: a new root gets new storage, never an old intermediate."""
        return f"sb-{self.digest}"


def make_ca(stack: str) -> tuple[bytes, bytes]:
    """A new P-256 root (certificate PEM, key PEM) for the stack's TLS proxy."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"swarmbinder {stack} local CA")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def find_local_ca(stack: str) -> LocalCA | None:
    """The stack's CA when both its config and its key secret exist (the newest, if several)."""
    listed = hs.run(
        ["docker", "config", "ls", "--format", "{{.Name}}"]
        + ["--filter", f"label={CA_LABEL}={stack}"],
        check=False,
        timeout=30,
    ).stdout.split()
    prefix = f"{stack}-{CA_ROOT_PREFIX}"
    for name in sorted(n for n in listed if n.startswith(prefix)):
        digest = name.removeprefix(prefix)
        ca_secret = f"{stack}-{CA_KEY_PREFIX}{digest}"
        if hs.run(["docker", "secret", "inspect", ca_secret], check=False).returncode != 0:
            continue
        data = hs.run(
            ["docker", "config", "inspect", "--format", "{{json .Spec.Data}}", name],
            check=False,
            timeout=30,
        ).stdout.strip()
        if data:
            return LocalCA(stack, digest, base64.b64decode(json.loads(data)))
    return None


def ensure_local_ca(stack: str) -> tuple[LocalCA, list[str]]:
    """The stack's CA, made (key secret, then root config) if it has none; returns it and the
    names made. A key secret left without its config by an interrupted ``up`` is never used:
    its name is the digest of a root nobody has."""
    found = find_local_ca(stack)
    if found:
        return found, []
    root_pem, key_pem = make_ca(stack)
    ca = LocalCA(stack, hashlib.sha256(root_pem).hexdigest()[:12], root_pem)
    labels = {STACK_LABEL: stack, CA_LABEL: stack}
    hs.ensure_secret(ca.key_secret, key_pem.decode, labels)
    made = hs.ensure_swarm_config(f"{stack}-{CA_ROOT_PREFIX}", root_pem, labels)
    assert made == ca.root_config
    return ca, [ca.key_secret, ca.root_config]


def remove_local_ca(stack: str, keep: LocalCA | None = None) -> list[str]:
    """The stack's CA secrets and configs other than ``keep`` (the engine keeps any in use)."""
    removed = []
    for kind, prefix in (("secret", CA_KEY_PREFIX), ("config", CA_ROOT_PREFIX)):
        listed = hs.run(
            ["docker", kind, "ls", "--format", "{{.Name}}"]
            + ["--filter", f"label={CA_LABEL}={stack}"],
            check=False,
            timeout=30,
        ).stdout.split()
        kept = {keep.key_secret, keep.root_config} if keep else set()
        for name in listed:
            if name.startswith(f"{stack}-{prefix}") and name not in kept:
                if hs.run(["docker", kind, "rm", name], check=False).returncode == 0:
                    removed.append(name)
    return removed


def caddy_pki(ca: LocalCA) -> list[str]:
    """The Caddyfile's global ``pki`` lines: Caddy's internal issuer signs with this root."""
    return [
        "\tpki {",
        f"\t\tca {ca.ca_id} {{",
        "\t\t\troot {",
        "\t\t\t\tcert /etc/caddy/ca-root.crt",
        "\t\t\t\tkey /run/secrets/tls_ca_key",
        "\t\t\t}",
        "\t\t}",
        "\t}",
    ]


def caddy_issuer(ca: LocalCA) -> list[str]:
    return ["tls {", f"\tissuer internal {{\n\t\tca {ca.ca_id}\n\t}}", "}"]


def trust_variables(ca: LocalCA, image_id: str) -> dict[str, str]:
    """stack/registry-trust.yml's variables."""
    return {
        "SWARMBINDER_TLS_CA_KEY": ca.key_secret,
        "SWARMBINDER_TLS_CA_ROOT": ca.root_config,
        "SWARMBINDER_TRUST_IMAGE_ID": image_id.removeprefix("sha256:")[:12],
    }


def trust_files(ca: LocalCA | None) -> list[Path]:
    return [TRUST_FILE] if ca else []


def trust_state(stack: str) -> tuple[int, int]:
    """(nodes with a running trust task, ready and active nodes)."""
    tasks = hs.run(
        ["docker", "service", "ps", f"{stack}_{TRUST_SERVICE}"]
        + ["--filter", "desired-state=running", "--format", "{{.Node}}\t{{.CurrentState}}"],
        check=False,
        timeout=30,
    ).stdout.splitlines()
    running = {t.split("\t")[0] for t in tasks if "\tRunning" in t}
    nodes = hs.run(
        ["docker", "node", "ls", "--format", "{{.Hostname}}\t{{.Status}}\t{{.Availability}}"],
        check=False,
        timeout=30,
    ).stdout.splitlines()
    ready = {n.split("\t")[0] for n in nodes if n.split("\t")[1:] == ["Ready", "Active"]}
    return len(running & ready), len(ready)


def wait_trusted(options: StackOptions, report: Progress) -> None:
    """Until every ready node runs a healthy trust task (its ca.crt is written): before that, a
    build on that node could not push, nor a server start there."""
    started = time.monotonic()
    trusted, ready = 0, 0
    while time.monotonic() - started < options.timeout:
        trusted, ready = trust_state(options.name)
        if ready and trusted >= ready:
            report.step(f"every node's engine trusts the registry's CA ({ready} node(s))")
            return
        report.status(
            f"waiting for the registry's CA on every node: {trusted}/{ready} "
            f"({time.monotonic() - started:.0f} s)"
        )
        time.sleep(1)
    raise StackError(
        f"service {options.name}_{TRUST_SERVICE} wrote the registry's CA on {trusted} of "
        f"{ready} node(s) within {options.timeout:.0f} s"
    )
