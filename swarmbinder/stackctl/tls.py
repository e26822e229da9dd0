"""HTTPS for Binder and the hub: ``swarmbinder up --tls local|acme|cert`` deploys stack/tls.yml,
Caddy in front of Binder and the hub's proxy, with a Caddyfile rendered here.

One host name and four published ports (plain HTTP, Binder, the hub and the registry over
HTTPS; the registry's is :mod:`.registry_tls`'s business):
on one machine with a local CA that needs no DNS at all, and on a public host one name and one
certificate serve both. Plain HTTP answers with a 308 to the HTTPS port of the same path (the
hub's paths to the hub's port); HSTS is sent only by the public modes, whose certificates a
browser trusts anyway: a browser told HSTS by a local CA it later stops trusting would lock its
user out of the name.

Everything an ``up`` is given for TLS is checked before anything is made (:func:`check_tls`):
a mode without its host name or files, files that are no certificate or no matching key, a
certificate that does not cover the host name, an ACME server that does not answer. The
operator's certificate and key (and a private ACME server's root) become Swarm secrets named by
content, as Swarm secrets cannot change: a renewed certificate is a new secret, and the old one
is removed once the proxy no longer uses it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import hostsetup as hs
from .options import (
    DEFAULT_ACME_CA,
    STACK_LABEL,
    STATE_DIR,
    TLS_FILE,
    TLS_MODES,
    TLS_SERVICE,
    Progress,
    StackError,
    StackInputError,
    StackOptions,
    TLSOptions,
)
from .registry_tls import (
    LocalCA,
    caddy_issuer,
    caddy_pki,
    trust_files,
    trust_variables,
)

#: The secrets the proxy may mount (``{stack}-tls-{name}-{digest}``), as files in /run/secrets.
CERT_SECRET, KEY_SECRET, ACME_ROOT_SECRET = "certificate", "key", "acme-ca-root"
#: Label of the secrets made here, so ``down --purge`` finds them whatever their digest.
TLS_SECRET_LABEL = "swarmbinder.tls-secret"
#: What Binder is reached by from the proxy: a name only the front network resolves (SQLite
#: mode), or the front of several replicas (PostgreSQL mode).
BINDER_UPSTREAM, FRONT_UPSTREAM, HUB_UPSTREAM = "binder-front:8585", "front:8585", "proxy:8000"
REGISTRY_UPSTREAM = "registry:5000"
HSTS = "max-age=31536000"


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HTTPS (the TLS proxy, stack/tls.yml)")
    group.add_argument(
        "--tls",
        choices=[*TLS_MODES, "off"],
        help="serve Binder and the hub over HTTPS: local (a CA of the proxy's own; its root "
        "certificate is copied out), acme (a certificate from an ACME server for --host), cert "
        "(--tls-cert and --tls-key); off removes the proxy. Once deployed, every up repeats it",
    )
    group.add_argument("--host", help="the host name browsers use (local: default the host)")
    defaults = TLSOptions("local")
    for flag, default, what in (
        ("--http-port", defaults.http_port, "plain HTTP, redirected to HTTPS"),
        ("--https-port", defaults.port, "Binder over HTTPS"),
        ("--hub-https-port", defaults.hub_port, "the hub over HTTPS"),
        (
            "--registry-https-port",
            defaults.registry_port,
            "the registry over HTTPS, as every node's engine reaches it",
        ),
    ):
        group.add_argument(flag, type=int, default=default, help=f"{what} ({default})")
    group.add_argument("--tls-cert", metavar="FILE", help="cert mode: the certificate (PEM)")
    group.add_argument("--tls-key", metavar="FILE", help="cert mode: its private key (PEM)")
    group.add_argument("--acme-ca", metavar="URL", help=f"ACME directory ({DEFAULT_ACME_CA})")
    group.add_argument("--acme-email", default="", help="the ACME account's contact address")
    group.add_argument(
        "--acme-ca-root", metavar="FILE", help="the root certificate of a private ACME server"
    )


def tls_options(args: argparse.Namespace) -> TLSOptions | None:
    """The TLS options of ``up``'s command line (None without --tls); checked later."""
    if args.tls is None:
        for flag in ("host", "tls_cert", "tls_key", "acme_ca", "acme_ca_root"):
            if getattr(args, flag):
                raise StackInputError(f"--{flag.replace('_', '-')} needs --tls")
        return None
    return TLSOptions(
        mode=args.tls,
        host=args.host or "",
        http_port=args.http_port,
        port=args.https_port,
        hub_port=args.hub_https_port,
        registry_port=args.registry_https_port,
        cert_file=Path(args.tls_cert) if args.tls_cert else None,
        key_file=Path(args.tls_key) if args.tls_key else None,
        acme_ca=args.acme_ca or DEFAULT_ACME_CA,
        acme_email=args.acme_email,
        acme_ca_root=Path(args.acme_ca_root) if args.acme_ca_root else None,
    )


@dataclass(frozen=True)
class TLSPlan:
    """What the TLS proxy is deployed with: its options and its secrets' contents."""

    tls: TLSOptions
    #: secret (CERT_SECRET, KEY_SECRET, ACME_ROOT_SECRET) -> content
    files: dict[str, bytes] = field(default_factory=dict)
    #: local mode: the stack's CA (made by ``up`` once the checks passed)
    ca: LocalCA | None = None

    def secret_name(self, stack: str, secret: str) -> str:
        return f"{stack}-tls-{secret}-{hashlib.sha256(self.files[secret]).hexdigest()[:12]}"


def check_tls(options: StackOptions) -> TLSPlan | None:
    """The TLS proxy's plan, or StackInputError naming the first thing wrong with it (before
    anything is made). ``--tls off`` plans no proxy."""
    tls = options.tls
    if tls is None or tls.mode == "off":
        return None
    if tls.mode not in TLS_MODES:
        raise StackInputError(f"unknown TLS mode {tls.mode!r} ({', '.join(TLS_MODES)} or off)")
    if tls.mode != "local" and not tls.host:
        what = (
            "the public name the ACME server validates"
            if tls.mode == "acme"
            else ("the name its certificate is for")
        )
        raise StackInputError(f"--tls {tls.mode} needs --host: {what}")
    host = tls.name(options.public_host)
    _check_host(host, tls.mode)
    if tls.mode == "cert":
        return TLSPlan(tls, _check_certificate(tls, host))
    if tls.mode == "acme":
        files = {}
        if tls.acme_ca_root:
            files[ACME_ROOT_SECRET] = _read(tls.acme_ca_root, "--acme-ca-root")
        check_acme_server(tls.acme_ca, tls.acme_ca_root)
        return TLSPlan(tls, files)
    return TLSPlan(tls)


def _check_host(host: str, mode: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not all(label and len(label) < 64 and _hostname_label(label) for label in labels):
            raise StackInputError(f"--host {host!r} is not a host name") from None
        return
    if mode == "acme":
        raise StackInputError(f"--tls acme needs a host name, not the address {host}")


def _hostname_label(label: str) -> bool:
    return label.replace("-", "a").isalnum() and label.isascii() and not label.startswith("-")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StackInputError(f"{flag} {path}: {exc.strerror or exc}") from None


def _check_certificate(tls: TLSOptions, host: str) -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not tls.cert_file or not tls.key_file:
        raise StackInputError("--tls cert needs --tls-cert FILE and --tls-key FILE")
    cert_pem = _read(tls.cert_file, "--tls-cert")
    key_pem = _read(tls.key_file, "--tls-key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise StackInputError(f"--tls-cert {tls.cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise StackInputError(
            f"--tls-key {tls.key_file} is not an unencrypted PEM private key"
        ) from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != (
        leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    ):
        raise StackInputError(f"--tls-key {tls.key_file} is not the key of {tls.cert_file}")
    if leaf.not_valid_after_utc.timestamp() < time.time():
        raise StackInputError(f"--tls-cert {tls.cert_file} expired on {leaf.not_valid_after_utc}")
    if not certificate_covers(leaf, host):
        raise StackInputError(f"--tls-cert {tls.cert_file} is not for {host}")
    return {CERT_SECRET: cert_pem, KEY_SECRET: key_pem}


def certificate_covers(cert: object, host: str) -> bool:
    """Whether ``cert``'s subject alternative names include ``host`` (one wildcard label)."""
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        for name in names.get_values_for_type(x509.DNSName):
            name = name.lower()
            if name == wanted or (
                name.startswith("*.") and wanted.partition(".")[2] == name[2:] and "." in name[2:]
            ):
                return True
        return False
    return address in names.get_values_for_type(x509.IPAddress)


def check_acme_server(url: str, root: Path | None, timeout: float = 10) -> None:
    """The ACME server's directory answers (over TLS trusted by ``root`` or the system's
    roots) and lists newOrder: the proxy could not get a certificate otherwise."""
    if not url.startswith("https://"):
        raise StackInputError(f"--acme-ca {url}: an ACME directory URL starts with https://")
    try:
        context = ssl.create_default_context(cafile=str(root) if root else None)
    except (OSError, ssl.SSLError) as exc:
        raise StackInputError(f"--acme-ca-root {root} is no PEM certificate: {exc}") from None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            directory = json.loads(resp.read(100_000))
    except urllib.error.HTTPError as exc:
        raise StackInputError(f"--acme-ca {url} answers HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StackInputError(f"--acme-ca {url} does not answer: {reason}") from None
    except ValueError:
        raise StackInputError(f"--acme-ca {url} is no ACME directory (not JSON)") from None
    if not isinstance(directory, dict) or "newOrder" not in directory:
        raise StackInputError(f"--acme-ca {url} is no ACME directory (no newOrder)")


def render_caddyfile(plan: TLSPlan, public_host: str, replicas_front: bool) -> str:
    """The proxy's Caddyfile (a Swarm config): each published port is Caddy's port too."""
    tls = plan.tls
    host = tls.name(public_host)
    shown = f"[{host}]" if ":" in host else host
    if tls.mode == "local":
        issuer = caddy_issuer(plan.ca) if plan.ca else ["tls internal"]
    elif tls.mode == "cert":
        issuer = [f"tls /run/secrets/tls_{CERT_SECRET} /run/secrets/tls_{KEY_SECRET}"]
    else:
        acme = [f"dir {tls.acme_ca}"]
        acme += [f"email {tls.acme_email}"] if tls.acme_email else []
        if ACME_ROOT_SECRET in plan.files:
            acme.append(f"trusted_roots /run/secrets/tls_{ACME_ROOT_SECRET.replace('-', '_')}")
        issuer = ["tls {", "\tissuer acme {", *(f"\t\t{a}" for a in acme), "\t}", "}"]
    hsts = [f'header Strict-Transport-Security "{HSTS}"'] if tls.public else []
    binder = FRONT_UPSTREAM if replicas_front else BINDER_UPSTREAM
    lines = [
        f"# Rendered by swarmbinder up --tls {tls.mode}; the next up replaces it.",
        "{",
        "\tadmin off",
        f"\thttp_port {tls.http_port}",
        f"\thttps_port {tls.port}",
        # A client that sends no name (an address in the URL) gets the host's certificate.
        f"\tdefault_sni {host}",
        # Our own redirects below: Caddy's would send the hub's paths to Binder's port.
        "\tauto_https disable_redirects",
        *(["\tskip_install_trust"] if tls.mode == "local" else []),
        *(caddy_pki(plan.ca) if plan.ca else []),
        "}",
    ]
    for port, upstream in ((tls.port, binder), (tls.hub_port, HUB_UPSTREAM)):
        lines += [f"https://{shown}:{port} {{", *(f"\t{line}" for line in issuer + hsts)]
        lines += [f"\treverse_proxy {upstream}", "}"]
    # Engines push and pull here (no browser: no HSTS); the registry builds its upload URLs
    # from the Host and X-Forwarded-Proto Caddy passes on.
    lines += [f"https://{shown}:{tls.registry_port} {{", *(f"\t{line}" for line in issuer)]
    lines += [f"\treverse_proxy {REGISTRY_UPSTREAM}", "}"]
    binder_url = f"https://{shown}:{tls.port}{{uri}}"
    hub_url = f"https://{shown}:{tls.hub_port}{{uri}}"
    lines += [
        f"http://:{tls.http_port} {{",
        "\t@hub path /hub /hub/* /user/*",
        f"\thandle @hub {{\n\t\tredir {hub_url} 308\n\t}}",
        f"\thandle {{\n\t\tredir {binder_url} 308\n\t}}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def tls_environment(options: StackOptions) -> dict[str, str]:
    """What stack/tls.yml sets in the binder service's environment (for the config check)."""
    tls = options.tls
    if tls is None or tls.mode == "off":
        return {}
    return {
        "SWARMBINDER_HUB_URL": tls.hub_url(options.public_host),
        "SWARMBINDER_BADGE_BASE_URL": tls.binder_url(options.public_host, options.base_url),
        "SWARMBINDER_TRUSTED_PROXIES": "[]",
        "SWARMBINDER_IMAGE_PREFIX": options.image_prefix,
    }


def tls_inputs(
    options: StackOptions,
    plan: TLSPlan | None,
    caddyfile: Path,
    image_id: str,
    trusted_proxies: str,
    trust_image_id: str = "",
) -> tuple[dict[str, str], dict[str, str]]:
    """stack/tls.yml's variables and the inputs-label parts of the proxy (none without TLS,
    so a stack that never had it keeps its label as it was); ``trusted_proxies`` is Binder's
    list with the front network's subnet (:func:`.replicas.trusted_proxies`)."""
    if plan is None:
        return {}, {}
    tls = plan.tls
    version = hashlib.sha256(caddyfile.read_bytes()).hexdigest()[:12]
    secrets = ",".join(sorted(plan.secret_name(options.name, s) for s in plan.files))
    secrets += f",{plan.ca.key_secret},{plan.ca.root_config}" if plan.ca else ""
    secrets_digest = hashlib.sha256(secrets.encode()).hexdigest()[:12]
    variables = {
        "SWARMBINDER_TLS_HOST": tls.name(options.public_host),
        "SWARMBINDER_TLS_HTTP_PORT": str(tls.http_port),
        "SWARMBINDER_TLS_PORT": str(tls.port),
        "SWARMBINDER_TLS_HUB_PORT": str(tls.hub_port),
        "SWARMBINDER_TLS_REGISTRY_PORT": str(tls.registry_port),
        "SWARMBINDER_TLS_REGISTRY": tls.registry(options.public_host),
        "SWARMBINDER_TLS_BINDER_URL": tls.binder_url(options.public_host, options.base_url),
        "SWARMBINDER_TLS_HUB_URL": tls.hub_url(options.public_host),
        "SWARMBINDER_TLS_CONFIG": str(caddyfile),
        "SWARMBINDER_TLS_CONFIG_VERSION": version,
        "SWARMBINDER_TLS_IMAGE_ID": image_id.removeprefix("sha256:")[:12],
        "SWARMBINDER_TRUSTED_PROXIES": trusted_proxies,
        "SWARMBINDER_TLS_INPUTS": f"{version}-{secrets_digest}",
        **(trust_variables(plan.ca, trust_image_id) if plan.ca else {}),
    }
    parts = {
        "tls": tls.mode,
        "tls-file": hashlib.sha256(TLS_FILE.read_bytes()).hexdigest()[:12],
        "tls-config": version,
        "tls-image": variables["SWARMBINDER_TLS_IMAGE_ID"],
        "tls-secrets": secrets_digest,
        "tls-front": hashlib.sha256(trusted_proxies.encode()).hexdigest()[:12],
    }
    if plan.ca:
        # Absent without the local CA, like the TLS parts without TLS.
        trust_file = trust_files(plan.ca)[0].read_bytes()
        parts["registry-trust-file"] = hashlib.sha256(trust_file).hexdigest()[:12]
        parts["registry-trust-image"] = variables["SWARMBINDER_TRUST_IMAGE_ID"]
    return variables, parts


def write_secrets_file(options: StackOptions, plan: TLSPlan, path: Path) -> Path | None:
    """A compose file that mounts the plan's secrets into the proxy (None: it has none)."""
    if not plan.files:
        return None
    import yaml

    sources = {f"tls_{s.replace('-', '_')}": plan.secret_name(options.name, s) for s in plan.files}
    data = {
        "version": "3.8",
        "services": {TLS_SERVICE: {"secrets": sorted(sources)}},
        "secrets": {src: {"name": name, "external": True} for src, name in sources.items()},
    }
    path.write_text(
        "# Made by swarmbinder up for the TLS proxy's secrets; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=True)
    )
    return path


def ensure_tls_secrets(stack: str, plan: TLSPlan | None) -> list[str]:
    """The plan's secrets that do not exist yet; returns the names made."""
    if plan is None:
        return []
    made = []
    for secret, content in plan.files.items():
        name = plan.secret_name(stack, secret)
        labels = {STACK_LABEL: stack, TLS_SECRET_LABEL: secret}
        if hs.ensure_secret(name, functools.partial(content.decode), labels):
            made.append(name)
    return made


def remove_unused_tls_secrets(stack: str, plan: TLSPlan | None) -> list[str]:
    """The stack's TLS secrets the plan does not use (the engine keeps any still mounted)."""
    keep = {plan.secret_name(stack, s) for s in plan.files} if plan else set()
    listed = hs.run(
        ["docker", "secret", "ls", "--format", "{{.Name}}"]
        + ["--filter", f"label={STACK_LABEL}={stack}", "--filter", f"label={TLS_SECRET_LABEL}"],
        check=False,
        timeout=30,
    ).stdout.split()
    removed = []
    for name in (n for n in listed if n not in keep):
        if hs.run(["docker", "secret", "rm", name], check=False).returncode == 0:
            removed.append(name)
    return removed


def check_tls_ports(
    options: StackOptions, deployed: set[int], in_use: Callable[[int], bool] | None = None
) -> None:
    """Each of the proxy's ports is free on the engine's host (``in_use`` tells; default: bound
    on this machine), unless the stack's own proxy holds it."""
    if options.tls is None:
        return
    taken = in_use or (lambda port: not hs.port_is_free(port))
    for what, port in options.tls.ports().items():
        if port not in deployed and taken(port):
            raise StackInputError(
                f"port {port} on {options.engine_host} is already in use; choose another with "
                f"{_PORT_FLAGS[what]}"
            )


_PORT_FLAGS = {
    "http port": "--http-port",
    "https port": "--https-port",
    "hub https port": "--hub-https-port",
    "registry https port": "--registry-https-port",
}


def deployed_tls_ports(stack: str) -> set[int] | None:
    """The published ports of the stack's TLS proxy (None: it has none deployed)."""
    from .state import service_spec

    spec = service_spec(f"{stack}_{TLS_SERVICE}")
    if spec is None:
        return None
    endpoint = spec.get("EndpointSpec", {})
    ports = endpoint.get("Ports", []) if isinstance(endpoint, dict) else []
    return {int(p["PublishedPort"]) for p in ports if "PublishedPort" in p}


def wait_tls(options: StackOptions, plan: TLSPlan, inputs: str, report: Progress) -> Path | None:
    """Until a proxy task made from ``inputs`` (SWARMBINDER_TLS_INPUTS) serves a certificate
    for its host on every HTTPS port of the engine's host; in local mode, the stack's CA root is
    written out first and the handshakes are verified against it. Returns that copy."""
    tls = plan.tls
    host = tls.name(options.public_host)
    started = time.monotonic()
    root = write_local_root(plan.ca) if plan.ca else None
    problem = "the proxy has no running task"
    while time.monotonic() - started < options.timeout:
        if _proxy_container(options.name, inputs):
            ports = (tls.port, tls.hub_port, tls.registry_port)
            problem = _handshake_problem(options.engine_host, host, ports, root)
            if not problem:
                report.step(f"HTTPS is served for {host} ({time.monotonic() - started:.0f} s)")
                return root
        report.status(f"waiting for HTTPS: {problem} ({time.monotonic() - started:.0f} s)")
        time.sleep(1)
    raise StackError(f"the TLS proxy of {options.name} did not serve HTTPS for {host}: {problem}")


def _proxy_container(stack: str, inputs: str) -> str | None:
    """A healthy container of the proxy made from ``inputs``: right after a deploy, the task
    being replaced may still run and serve the old certificate."""
    listed = hs.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_tls"]
        + ["--filter", "health=healthy"],
        check=False,
        timeout=30,
    ).stdout.split()
    for container in listed:
        env = hs.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}", container],
            check=False,
            timeout=30,
        ).stdout
        if f"TLS_INPUTS={inputs}" in (json.loads(env) if env.strip() else []):
            return container
    return None


def _handshake_problem(address: str, host: str, ports: tuple[int, ...], root: Path | None) -> str:
    """'' when every port of ``address`` completes a TLS handshake for ``host`` (verified
    against ``root`` when given), else what went wrong."""
    import socket

    if root:
        context = ssl.create_default_context(cafile=str(root))
    else:
        # The certificate's trust is the browser's business (ACME staging, a private CA).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for port in ports:
        try:
            with socket.create_connection((address, port), timeout=5) as raw:
                # An address sends no SNI (the proxy's default_sni answers) but is verified.
                with context.wrap_socket(raw, server_hostname=host) as conn:
                    if not conn.getpeercert(binary_form=True):
                        return f"port {port} sent no certificate"
        except (OSError, ssl.SSLError) as exc:
            return f"port {port}: {exc}"
    return ""


def local_root_path(stack: str) -> Path:
    return STATE_DIR / f"{stack}-tls-root.crt"


def write_local_root(ca: LocalCA) -> Path:
    """The root's copy for the operator (browsers, curl) on the machine ``up`` runs on."""
    path = local_root_path(ca.stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ca.root_pem)
    path.chmod(0o644)
    return path


def caddyfile_path(stack: str) -> Path:
    return STATE_DIR / f"{stack}-Caddyfile"


def remove_tls_files(stack: str, *, purge: bool) -> list[str]:
    """What ``down`` leaves of the proxy on this machine: the Caddyfile always goes (``up``
    writes it again); the local CA's root copy only with ``purge``, which removes the CA's
    volume too (until then it is the root browsers were told to trust)."""
    paths = [caddyfile_path(stack)] + ([local_root_path(stack)] if purge else [])
    removed = []
    for path in paths:
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def write_caddyfile(options: StackOptions, plan: TLSPlan, replicas_front: bool) -> Path:
    """The Caddyfile, where ``docker stack deploy`` reads it (its config is named by content)."""
    path = caddyfile_path(options.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_caddyfile(plan, options.public_host, replicas_front))
    return path


def tls_files(options: StackOptions, plan: TLSPlan | None, workdir: Path) -> list[Path]:
    """The compose files the proxy adds to ``docker stack deploy`` (none without TLS)."""
    if plan is None:
        return []
    secrets = write_secrets_file(options, plan, workdir / "tls-secrets.yml")
    return [TLS_FILE, *([secrets] if secrets else []), *trust_files(plan.ca)]


def check_tls_kept(stack: str, plan: TLSPlan | None, deployed: bool, off: bool) -> None:
    """An ``up`` without --tls on a stack that serves HTTPS: refused rather than dropping the
    proxy (and every https:// link handed out) by a forgotten option; --tls off removes it."""
    if deployed and plan is None and not off:
        raise StackInputError(
            f"stack {stack} serves HTTPS through its TLS proxy: repeat --tls and its options, "
            "or remove the proxy with --tls off"
        )
