"""``up`` on a cluster without a swarm: which engine DOCKER_HOST names, a manager required
there, images current there without base images, the registry's TLS port among the stack's
ports, and the local CA with the trust service's stack file. The whole of it, for real, is in
test_stack_multinode_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from swarmbinder import hostsetup as hs
from swarmbinder.stackctl import StackInputError, StackOptions, render_caddyfile
from swarmbinder.stackctl import engine as eng
from swarmbinder.stackctl.options import TLS_FILE, TRUST_FILE, TLSOptions
from swarmbinder.stackctl.registry_tls import LocalCA, make_ca
from swarmbinder.stackctl.tls import TLSPlan, tls_environment, tls_inputs


def test_docker_host_names_the_engine_and_where_its_ports_are() -> None:
    assert eng.engine_from(None) == eng.Engine()
    assert eng.engine_from("unix:///run/docker.sock").remote is False
    remote = eng.engine_from("tcp://10.1.2.3:2375")
    assert remote.remote and remote.host == "10.1.2.3"
    assert eng.engine_from("ssh://ops@manager.example.org").host == "manager.example.org"
    assert eng.engine_from("tcp://localhost:2375").host == "127.0.0.1"
    with pytest.raises(StackInputError, match="DOCKER_HOST=nonsense: expected tcp://"):
        eng.engine_from("nonsense")


@pytest.mark.parametrize(
    ("swarm", "what"),
    [({"LocalNodeState": "inactive"}, "in no swarm"), ({"LocalNodeState": "active"}, "a worker")],
)
def test_a_remote_engine_must_be_a_manager(
    monkeypatch: pytest.MonkeyPatch, swarm: dict[str, Any], what: str
) -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(swarm), "")

    monkeypatch.setattr(hs, "run", run)
    engine = eng.engine_from("tcp://10.1.2.3:2375")
    with pytest.raises(StackInputError) as err:
        eng.ensure_manager(engine, print)
    assert str(err.value).startswith(f"the engine at DOCKER_HOST=tcp://10.1.2.3:2375 is {what}")
    assert not any("init" in cmd for cmd in calls)  # never a swarm made over there


def test_a_manager_elsewhere_gives_its_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    info = {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "abc"}
    monkeypatch.setattr(
        hs, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 0, json.dumps(info), "")
    )
    assert eng.ensure_manager(eng.engine_from("tcp://10.1.2.3:2375"), print) == "abc"


def _registry_label(base_id: str) -> str:
    """The inputs label a build of the registry image on ``base_id`` gets."""
    import tempfile

    spec = next(s for s in hs.project_images("0.1.0") if s.name == "registry")
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp) / "ctx"
        hs._stage_context(spec, context)
        return hs._build_inputs(context, {"BASE_IMAGE": hs.LOCAL_BASE_IMAGE}, base_id)


def test_an_image_current_on_the_engine_needs_no_base_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = next(s for s in hs.project_images("0.1.0") if s.name == "registry")
    label = _registry_label("sha256:base")
    asked: list[tuple[str, str | None]] = []

    def image_id(tag: str, engine: str | None = None) -> str | None:
        asked.append((tag, engine))
        if tag == spec.tag and engine is None:
            return "sha256:remote-image"
        if tag == hs.LOCAL_BASE_IMAGE:
            return "sha256:base" if engine == eng.LOCAL_ENGINE else None  # only here
        return None

    monkeypatch.setattr(hs, "image_id", image_id)
    monkeypatch.setattr(hs, "image_label", lambda tag, _label: label)
    remote = eng.engine_from("tcp://10.1.2.3:2375")
    assert eng.current_image(spec, remote) == "sha256:remote-image"
    assert (hs.LOCAL_BASE_IMAGE, eng.LOCAL_ENGINE) in asked
    # Other sources than this tree's: built again.
    monkeypatch.setattr(hs, "image_label", lambda tag, _label: "something-else")
    assert eng.current_image(spec, remote) is None
    # No image there at all.
    monkeypatch.setattr(hs, "image_id", lambda tag, engine=None: None)
    assert eng.current_image(spec, remote) is None


def test_the_registry_https_port_is_one_of_the_stack_ports() -> None:
    tls = TLSOptions("local", registry_port=8585)
    with pytest.raises(StackInputError, match="the stack's ports must differ"):
        StackOptions(name="sb", tls=tls).check()
    ok = StackOptions(name="sb", public_host="10.0.0.5", tls=TLSOptions("local", host="10.0.0.5"))
    ok.check()
    assert ok.image_prefix == "10.0.0.5:5443/binder-"
    assert tls_environment(ok)["SWARMBINDER_IMAGE_PREFIX"] == "10.0.0.5:5443/binder-"
    assert StackOptions().image_prefix == "127.0.0.1:5000/binder-"  # plain HTTP: as before


def run_up(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBINDER_")}
    return subprocess.run(
        [sys.executable, "-m", "swarmbinder", "up", "--stack", "sbclusterunit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_up_refuses_a_clashing_registry_https_port_in_one_line() -> None:
    proc = run_up("--tls", "local", "--registry-https-port", "8443")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "swarmbinder: error: the stack's ports must differ"
    ), lines


def test_the_local_ca_signs_and_caddy_uses_it_for_the_registry_too() -> None:
    root_pem, key_pem = make_ca("sb")
    root = x509.load_pem_x509_certificate(root_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert b"PRIVATE KEY" in key_pem and b"PRIVATE KEY" not in root_pem
    ca = LocalCA("sb", "0123456789ab", root_pem)
    assert (ca.key_secret, ca.root_config) == (
        "sb-tls-ca-key-0123456789ab",
        "sb-tls-ca-root-0123456789ab",
    )
    tls = TLSOptions("local", host="10.0.0.5", port=8443, hub_port=9443, registry_port=5443)
    text = render_caddyfile(TLSPlan(tls, ca=ca), "10.0.0.5", replicas_front=False)
    assert "\t\tca sb-0123456789ab {" in text and "key /run/secrets/tls_ca_key" in text
    registry_site = text.split("https://10.0.0.5:5443 {", 1)[1].split("\n}", 1)[0]
    assert "ca sb-0123456789ab" in registry_site and "reverse_proxy registry:5000" in registry_site
    # ACME and cert: the same certificate for the registry, no HSTS on an engines-only port.
    public = TLSOptions("cert", host="b.test", registry_port=5443)
    text = render_caddyfile(TLSPlan(public, {"certificate": b"c", "key": b"k"}), "h", False)
    registry_site = text.split("https://b.test:5443 {", 1)[1].split("\n}", 1)[0]
    assert "tls /run/secrets/tls_certificate" in registry_site
    assert "Strict-Transport-Security" not in registry_site


def test_the_trust_service_file_fits_and_holds_no_key(tmp_path: Path) -> None:
    ca = LocalCA("sb", "0123456789ab", b"root")
    tls = TLSOptions("local", host="10.0.0.5")
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text("x")
    opts = StackOptions(name="sb", public_host="10.0.0.5", tls=tls)
    variables, parts = tls_inputs(opts, TLSPlan(tls, ca=ca), caddyfile, "sha256:t", "[]", "r")
    text = TRUST_FILE.read_text() + TLS_FILE.read_text()
    needed = {
        word.split(":")[0].split("}")[0]
        for word in text.split("${")[1:]
        if word.startswith(("SWARMBINDER_TLS", "SWARMBINDER_TRUST"))
    }
    assert needed <= set(variables), needed - set(variables)
    assert variables["SWARMBINDER_TLS_REGISTRY"] == "10.0.0.5:5443"
    assert "registry-trust-file" in parts
    trust = yaml.safe_load(TRUST_FILE.read_text())
    service = trust["services"]["registry-trust"]
    assert service["deploy"]["mode"] == "global"
    assert "secrets" not in service  # the root only, never the key
    assert [v["source"] for v in service["volumes"]] == ["/etc/docker"]
    assert trust["services"]["tls"]["secrets"] == ["tls_ca_key"]
    # Without the local CA nothing of it is deployed or labelled.
    _, parts = tls_inputs(opts, TLSPlan(tls), caddyfile, "sha256:t", "[]")
    assert "registry-trust-file" not in parts
