"""What a deploy is made from: the binder service's environment, the checked Binder config
file, docker-stack.yml's variables and the inputs label that tells a second ``up`` whether
anything changed."""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .. import __version__
from ..registrytokens import make_signing_pair
from .options import (
    CONSOLE_FILE,
    HUB_CONFIG,
    PULL_USER,
    STACK_FILE,
    STACK_IMAGES,
    Console,
    StackInputError,
    StackOptions,
)


def binder_environment(options: StackOptions) -> dict[str, str]:
    """The options docker-stack.yml sets in the binder service's environment."""
    return {
        "SWARMBINDER_HUB_URL": f"http://{options.public_host}:{options.hub_port}/",
        "SWARMBINDER_HUB_URL_LOCAL": "http://hub:8081/",
        "SWARMBINDER_HUB_ID": options.hub_id,
        "SWARMBINDER_IMAGE_PREFIX": options.image_prefix,
        "SWARMBINDER_REGISTRY_URL": "http://registry:5000",
        "SWARMBINDER_REGISTRY_USERNAME": "binder",
        "SWARMBINDER_REGISTRY_PULL_USERNAME": PULL_USER,
        "SWARMBINDER_BUILD_IMAGE": f"swarmbinder/builder:{__version__}",
        "SWARMBINDER_STORE_PATH": "/srv/swarmbinder/swarmbinder.sqlite",
    }


def check_binder_config(path: Path, environment: Mapping[str, str]) -> str:
    """Refuse a config file Binder would refuse at start, before anything is deployed, with
    the stack's ``environment`` applied over it as in the service; returns its base_url.

    Secret ``*_file`` options name files that exist only inside the service: they are checked
    against stand-in files (a random token, or a key pair where the option wants one), so the
    rest of the file is checked as the service will load it.
    """
    import yaml

    from ..config import load_config
    from ..errors import ConfigError

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StackInputError(f"cannot read the config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StackInputError(f"the config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StackInputError(f"the config file {path} must be a mapping of option names")
    with tempfile.TemporaryDirectory(prefix="swarmbinder-check-") as tmp:
        stand_in = Path(tmp) / "secret"
        stand_in.write_text(secrets.token_hex(32))
        pair = make_signing_pair()
        stand_ins = {
            "registry_token_key_file": Path(tmp) / "key.pem",
            "registry_token_certificate_file": Path(tmp) / "certificate.pem",
        }
        stand_ins["registry_token_key_file"].write_bytes(pair.key_pem)
        stand_ins["registry_token_certificate_file"].write_bytes(pair.certificate_pem)
        checked = {
            k: (str(stand_ins.get(k, stand_in)) if k.endswith("_file") else v)
            for k, v in raw.items()
        }
        copy = Path(tmp) / "binder.yaml"
        copy.write_text(json.dumps(checked))
        # The stack's own secret files (SWARMBINDER_*_FILE) get stand-ins too.
        env = {k: str(stand_in) if k.endswith("_FILE") else v for k, v in environment.items()}
        try:
            config = load_config(copy, env=env)
        except ConfigError as exc:
            raise StackInputError(f"{path}: {exc}") from None
    return config.server.base_url


def stack_variables(
    options: StackOptions,
    image_ids: Mapping[str, str],
    console: Console | None = None,
    store_inputs: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> dict[str, str]:
    """Every variable of docker-stack.yml (and of stack/ssh-console.yml with a ``console``),
    with config versions and the inputs label; ``store_inputs`` are PostgreSQL mode's
    variables and inputs-label parts (:func:`.replicas.store_inputs`)."""
    binder_config = options.config_file.read_bytes()
    variables = options.variables()
    variables["SWARMBINDER_BINDER_CONFIG"] = str(options.config_file.resolve())
    variables["SWARMBINDER_BINDER_CONFIG_VERSION"] = digest(binder_config)
    variables["SWARMBINDER_HUB_CONFIG_VERSION"] = digest(HUB_CONFIG.read_bytes())
    for name, variable in STACK_IMAGES.items():
        if variable:
            # A rebuilt image under the same tag changes the service, so Swarm rolls it.
            variables[variable] = image_ids[name].removeprefix("sha256:")[:12]
    parts = {
        "settings": digest(json.dumps(options.variables(), sort_keys=True).encode()),
        "stack-file": digest(STACK_FILE.read_bytes()),
        "binder-config": variables["SWARMBINDER_BINDER_CONFIG_VERSION"],
        "hub-config": variables["SWARMBINDER_HUB_CONFIG_VERSION"],
        **{f"{name}-image": image_ids[name].removeprefix("sha256:")[:12] for name in STACK_IMAGES},
    }
    variables.update(store_inputs[0])
    parts.update(store_inputs[1])
    if console:
        # Absent without a console, so a stack that never had one keeps its label as it was.
        variables["SWARMBINDER_SSH_PORT"] = str(console.port)
        variables["SWARMBINDER_CONSOLE_KEYS_VERSION"] = console.keys_version
        parts["ssh-console-file"] = digest(CONSOLE_FILE.read_bytes())
        parts["ssh-console-keys"] = console.keys_version
        parts["ssh-port"] = str(console.port)
    variables["SWARMBINDER_STACK_INPUTS"] = ",".join(f"{k}={v}" for k, v in parts.items())
    return variables


def changed_inputs(deployed: str | None, wanted: str) -> list[str]:
    """The parts of the stack's inputs label that differ (all of them when none is deployed),
    including parts that are gone (the SSH console's, when it is removed)."""
    before = dict(item.partition("=")[::2] for item in (deployed or "").split(",") if item)
    after = dict(item.partition("=")[::2] for item in wanted.split(","))
    changed = [part for part, digest in after.items() if before.get(part) != digest]
    return changed + [part for part in before if part not in after]


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]
