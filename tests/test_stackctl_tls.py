"""The TLS proxy's plan without a swarm: the Caddyfile each mode renders, and the bad input
``up --tls`` refuses (in one line, exit 2) before it makes anything. The proxy itself, for
real, is in test_stack_tls_e2e.py."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tls_support import make_ca, make_leaf

from swarmbinder.stackctl import StackInputError, StackOptions, check_tls, render_caddyfile, tls
from swarmbinder.stackctl.options import TLS_FILE, TLSOptions
from swarmbinder.stackctl.tls import (
    ACME_ROOT_SECRET,
    CERT_SECRET,
    KEY_SECRET,
    TLSPlan,
    tls_environment,
    tls_inputs,
    write_secrets_file,
)


def options(tls: TLSOptions, **kwargs: object) -> StackOptions:
    return StackOptions(name="sb", tls=tls, **kwargs)  # type: ignore[arg-type]


def refused(opts: StackOptions) -> str:
    with pytest.raises(StackInputError) as err:
        check_tls(opts)
    return str(err.value)


def test_local_mode_renders_an_internal_issuer_redirects_and_no_hsts() -> None:
    tls = TLSOptions("local", http_port=8080, port=8443, hub_port=9443)
    text = render_caddyfile(TLSPlan(tls), "127.0.0.1", replicas_front=False)
    assert "https://127.0.0.1:8443 {\n\ttls internal\n\treverse_proxy binder-front:8585\n}" in text
    assert "https://127.0.0.1:9443 {\n\ttls internal\n\treverse_proxy proxy:8000\n}" in text
    assert "\tdefault_sni 127.0.0.1\n" in text
    assert "Strict-Transport-Security" not in text
    # Plain HTTP: the hub's paths to the hub's port, everything else to Binder's, 308.
    assert "redir https://127.0.0.1:9443{uri} 308" in text
    assert "redir https://127.0.0.1:8443{uri} 308" in text
    assert "@hub path /hub /hub/* /user/*" in text
    assert "skip_install_trust" in text


def test_public_modes_send_hsts() -> None:
    cert = TLSOptions("cert", host="binder.example.org")
    text = render_caddyfile(TLSPlan(cert, {CERT_SECRET: b"c", KEY_SECRET: b"k"}), "h", True)
    assert "tls /run/secrets/tls_certificate /run/secrets/tls_key" in text
    assert text.count('header Strict-Transport-Security "max-age=31536000"') == 2
    # Several replicas: through their front.
    assert "reverse_proxy front:8585" in text and "binder-front" not in text
    acme = TLSOptions("acme", host="binder.example.org", acme_ca="https://ca/dir", acme_email="a@b")
    text = render_caddyfile(TLSPlan(acme, {ACME_ROOT_SECRET: b"r"}), "h", False)
    assert "\t\tissuer acme {\n\t\t\tdir https://ca/dir\n\t\t\temail a@b\n" in text
    assert "trusted_roots /run/secrets/tls_acme_ca_root" in text
    assert text.count("Strict-Transport-Security") == 2
    assert "skip_install_trust" not in text


def test_urls_handed_out_are_https() -> None:
    tls = TLSOptions("local", host="binder.test", port=443, hub_port=8443)
    opts = options(tls, base_url="/binder/")
    assert opts.url == "https://binder.test/"
    env = tls_environment(opts)
    assert env["SWARMBINDER_HUB_URL"] == "https://binder.test:8443/"
    assert env["SWARMBINDER_BADGE_BASE_URL"] == "https://binder.test/binder/"


def test_mode_without_host_or_files_is_refused() -> None:
    assert refused(options(TLSOptions("acme"))) == (
        "--tls acme needs --host: the public name the ACME server validates"
    )
    assert refused(options(TLSOptions("cert"))).startswith("--tls cert needs --host")
    assert refused(options(TLSOptions("cert", host="b.example.org"))) == (
        "--tls cert needs --tls-cert FILE and --tls-key FILE"
    )
    assert refused(options(TLSOptions("acme", host="10.0.0.1"))) == (
        "--tls acme needs a host name, not the address 10.0.0.1"
    )
    assert "is not a host name" in refused(options(TLSOptions("local", host="a b/../c")))


def test_local_mode_defaults_to_the_public_host() -> None:
    plan = check_tls(options(TLSOptions("local"), public_host="127.0.0.1"))
    assert plan is not None and plan.files == {}
    assert check_tls(options(TLSOptions("off"))) is None


def test_certificate_files_are_checked(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    cert, key, _ = make_leaf(tmp_path, ca, ["binder.example.org"], [])
    other_cert, other_key, _ = make_leaf(tmp_path, ca, ["*.example.org"], [])

    def cert_mode(c: Path, k: Path, host: str = "binder.example.org") -> StackOptions:
        return options(TLSOptions("cert", host=host, cert_file=c, key_file=k))

    plan = check_tls(cert_mode(cert, key))
    assert plan is not None and plan.files[CERT_SECRET] == cert.read_bytes()
    assert plan.secret_name("sb", KEY_SECRET).startswith("sb-tls-key-")
    # A wildcard covers one label, not two.
    assert check_tls(cert_mode(other_cert, other_key)) is not None
    assert refused(cert_mode(other_cert, other_key, "a.binder.example.org")) == (
        f"--tls-cert {other_cert} is not for a.binder.example.org"
    )
    assert refused(cert_mode(cert, other_key)) == f"--tls-key {other_key} is not the key of {cert}"
    assert refused(cert_mode(tmp_path / "nope.pem", key)) == (
        f"--tls-cert {tmp_path / 'nope.pem'}: No such file or directory"
    )
    assert refused(cert_mode(key, key)) == f"--tls-cert {key} is not a PEM certificate"
    assert refused(cert_mode(cert, cert)) == (
        f"--tls-key {cert} is not an unencrypted PEM private key"
    )


@pytest.fixture
def acme_directory(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fake ACME directory over HTTPS on 127.0.0.1 (only its directory document)."""
    ca = make_ca(tmp_path, "acme-ca")
    cert, key, _ = make_leaf(tmp_path, ca, ["localhost"], ["127.0.0.1"])

    class Directory(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"newOrder": "x"} if self.path == "/dir" else {"no": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca[2]
    server.shutdown()
    server.server_close()


def test_acme_server_must_answer_as_one(acme_directory: tuple[str, Path], tmp_path: Path) -> None:
    base, root = acme_directory

    def acme(url: str, ca_root: Path | None = root) -> StackOptions:
        return options(TLSOptions("acme", host="binder.test", acme_ca=url, acme_ca_root=ca_root))

    plan = check_tls(acme(f"{base}/dir"))
    assert plan is not None and plan.files == {ACME_ROOT_SECRET: root.read_bytes()}
    no_order = refused(acme(f"{base}/other"))
    assert no_order == f"--acme-ca {base}/other is no ACME directory (no newOrder)"
    # Its certificate is not trusted without the root it was given.
    assert "CERTIFICATE_VERIFY_FAILED" in refused(acme(f"{base}/dir", None))
    with_nothing = f"https://127.0.0.1:{free_port()}/dir"
    assert refused(acme(with_nothing)).startswith(f"--acme-ca {with_nothing} does not answer:")
    assert refused(acme("http://ca.example/dir")).endswith("starts with https://")
    missing = tmp_path / "missing-root.pem"
    assert refused(acme(f"{base}/dir", missing)) == (
        f"--acme-ca-root {missing}: No such file or directory"
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_fragment_and_its_secrets_overlay_fit_together(tmp_path: Path) -> None:
    fragment = yaml.safe_load(TLS_FILE.read_text())
    tls_service = fragment["services"]["tls"]
    assert [p["mode"] for p in tls_service["ports"]] == ["host"] * 4
    assert tls_service["deploy"]["endpoint_mode"] == "dnsrr"
    assert fragment["networks"]["front"]["external"] is True
    # Every variable the fragment needs is one tls_inputs sets.
    plan = TLSPlan(TLSOptions("cert", host="b.test"), {CERT_SECRET: b"c", KEY_SECRET: b"k"})
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text("x")
    variables, parts = tls_inputs(options(plan.tls), plan, caddyfile, "sha256:abc", "[]")
    needed = {
        word.split(":")[0].split("}")[0]
        for word in TLS_FILE.read_text().split("${")[1:]
        if word.startswith("SWARMBINDER_TLS")
    }
    assert needed <= set(variables), needed - set(variables)
    assert parts["tls"] == "cert"
    written = write_secrets_file(options(plan.tls), plan, tmp_path / "o.yml")
    assert written is not None
    overlay = yaml.safe_load(written.read_text())
    assert sorted(overlay["services"]["tls"]["secrets"]) == ["tls_certificate", "tls_key"]
    assert overlay["secrets"]["tls_key"] == {
        "name": plan.secret_name("sb", KEY_SECRET),
        "external": True,
    }


def run_up(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", "up", "--stack", "sbtlsunit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls", "acme"], "--tls acme needs --host"),
        (["--tls", "cert", "--host", "b.test"], "--tls cert needs --tls-cert FILE"),
        (["--host", "b.test"], "--host needs --tls"),
        (
            ["--tls", "cert", "--host", "b.test", "--tls-cert", "/nonexistent.pem"]
            + ["--tls-key", "/nonexistent.key"],
            "--tls-cert /nonexistent.pem: No such file or directory",
        ),
        (["--tls", "local", "--https-port", "8585"], "the stack's ports must differ"),
    ],
)
def test_up_refuses_bad_tls_input_in_one_line(args: list[str], message: str) -> None:
    proc = run_up(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"swarmbinder: error: {message}"), lines


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "old.crt", tmp_path / "old.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = TLSOptions("cert", host="old.test", cert_file=cert_path, key_file=key_path)
    assert refused(options(tls)).startswith(f"--tls-cert {cert_path} expired on ")


def test_down_removes_the_caddyfile_and_purge_the_roots_copy_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "STATE_DIR", tmp_path)
    for name in ("one-Caddyfile", "one-tls-root.crt", "other-Caddyfile"):
        (tmp_path / name).write_text("x")
    assert tls.remove_tls_files("one", purge=False) == [str(tmp_path / "one-Caddyfile")]
    assert (tmp_path / "one-tls-root.crt").exists()  # browsers were told to trust it
    assert tls.remove_tls_files("one", purge=True) == [str(tmp_path / "one-tls-root.crt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-Caddyfile"]
