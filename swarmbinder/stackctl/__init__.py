"""``swarmbinder up`` and ``swarmbinder down``: the stack of docker-stack.yml on this machine.

``up`` goes from a machine with (or, on Debian as root, without) Docker to a running Binder:
engine, single-node swarm if the engine is in none, the project's images (rebuilt only when
their inputs changed), the stack's secrets (created once, never overwritten), its configs
(named by content hash, since Swarm configs cannot change), ``docker stack deploy``, then a
wait until Binder's ``/health`` and the proxy answer. Everything the stack depends on is hashed
into the label ``swarmbinder.stack-inputs`` on the binder service: when a second run finds the
same hashes on a stack that is up, it deploys nothing and says so; otherwise it says which
input changed.

The optional SSH console (stack/ssh-console.yml) is deployed on top when asked for with an
authorized_keys file, kept as it is (same keys secret, same port) by an ``up`` that does not
mention it, and removed only when asked to: ``--prune`` would otherwise drop it silently.

``down`` removes the stack, the user servers its hub started (SwarmSpawner makes them as
services outside the stack, and they hold the stack's network), the build services its Binder
left, and the network; volumes and secrets stay unless ``purge``.

Standard library and the docker CLI (through :mod:`hostsetup`), like ``stack/testground``:
every step is a short CLI call, and the CLI works with whichever engine version it meets.

:mod:`.deploy` and :mod:`.teardown` are the two commands; :mod:`.options` names what a stack
is made of, :mod:`.inputs` what a deploy is made from, :mod:`.console` and :mod:`.credentials`
the SSH console and the secrets, :mod:`.replicas` several replicas on PostgreSQL,
:mod:`.state` what the engine says is deployed, :mod:`.tls` HTTPS through the TLS proxy.
"""

from __future__ import annotations

from .console import console_from_spec, plan_console, read_console_keys
from .credentials import make_secrets
from .deploy import up
from .inputs import binder_environment, changed_inputs, check_binder_config, stack_variables
from .options import (
    CONSOLE_FILE,
    CONSOLE_SERVICE,
    DEFAULT_BINDER_CONFIG,
    DEFAULT_SSH_PORT,
    FRONT_FILE,
    FRONT_SERVICE,
    MAX_REPLICAS,
    POSTGRES_FILE,
    POSTGRES_SECRETS,
    POSTGRES_SERVICE,
    PULL_USER,
    SECRETS,
    SERVICES,
    STACK_FILE,
    TOKEN_PAIR,
    Console,
    DownResult,
    Progress,
    StackError,
    StackInputError,
    StackOptions,
    Store,
    UpResult,
)
from .replicas import (
    STORE_URL,
    add_replica_arguments,
    binder_store_environment,
    front_base,
    plan_store,
    store_inputs,
)
from .state import wait_healthy
from .teardown import down
from .tls import add_tls_arguments, check_tls, render_caddyfile, tls_options

__all__ = [
    "CONSOLE_FILE",
    "CONSOLE_SERVICE",
    "Console",
    "DEFAULT_BINDER_CONFIG",
    "DEFAULT_SSH_PORT",
    "DownResult",
    "FRONT_FILE",
    "FRONT_SERVICE",
    "MAX_REPLICAS",
    "POSTGRES_FILE",
    "POSTGRES_SECRETS",
    "POSTGRES_SERVICE",
    "PULL_USER",
    "Progress",
    "SECRETS",
    "SERVICES",
    "STACK_FILE",
    "STORE_URL",
    "StackError",
    "StackInputError",
    "StackOptions",
    "Store",
    "TOKEN_PAIR",
    "UpResult",
    "add_replica_arguments",
    "add_tls_arguments",
    "binder_environment",
    "binder_store_environment",
    "changed_inputs",
    "check_tls",
    "check_binder_config",
    "console_from_spec",
    "down",
    "front_base",
    "make_secrets",
    "plan_console",
    "plan_store",
    "read_console_keys",
    "render_caddyfile",
    "stack_variables",
    "store_inputs",
    "tls_options",
    "up",
    "wait_healthy",
]
