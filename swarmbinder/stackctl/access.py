"""``swarmbinder admin`` without arguments: the stack this manager runs, its Binder's URL and
its admin token.

The token is a Swarm secret, which the engine never gives back; only a task that mounts it can
read it. So the token is read inside a running task of the stack's binder service on this node
(``docker exec ... cat /run/secrets/...``): it comes back through a pipe into this process's
memory, and never touches an argument list, a terminal or a file. The URL is Binder's published
port on this node under Binder's own ``base_url``, as the service's config says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import hostsetup as hs
from .options import INPUTS_LABEL, NAMESPACE_LABEL, StackError, StackInputError
from .state import deployed_ports, service_spec

PROG = "swarmbinder"


@dataclass(frozen=True)
class ConsoleAccess:
    stack: str
    url: str
    token: str = field(repr=False)


def deployed_stacks() -> list[str]:
    """The stacks on this swarm that ``swarmbinder up`` deployed (their binder service carries
    the inputs label, with a value: by hand it is empty)."""
    if not hs.docker_answers():
        raise StackInputError(f"the Docker engine at {hs.docker_host()} does not answer")
    listed = hs.run(
        ["docker", "service", "ls", "--filter", f"label={INPUTS_LABEL}", "--format", "{{.Name}}"],
        check=False,
        timeout=30,
    )
    if listed.returncode != 0:
        if "not a swarm manager" in listed.stderr:
            raise StackInputError(
                "this node is not a swarm manager: run swarmbinder admin on a manager, or give "
                "--url and --token-file"
            )
        raise StackError(f"docker service ls failed: {listed.stderr.strip()[-300:]}")
    names = listed.stdout.split()
    if not names:
        return []
    inspect = hs.run(
        ["docker", "service", "inspect", "--format", "{{json .Spec.Labels}}", *names],
        check=False,
        timeout=30,
    )
    stacks = []
    for line in inspect.stdout.splitlines():
        labels = json.loads(line) or {}
        if labels.get(INPUTS_LABEL) and labels.get(NAMESPACE_LABEL):
            stacks.append(str(labels[NAMESPACE_LABEL]))
    return sorted(set(stacks))


def pick_stack(stacks: list[str], asked: str | None) -> str:
    if asked:
        if asked not in stacks:
            found = f" (found: {', '.join(stacks)})" if stacks else ""
            raise StackInputError(
                f"no stack {asked} deployed by swarmbinder up on this swarm{found}"
            )
        return asked
    if not stacks:
        raise StackInputError(
            "no stack deployed by swarmbinder up on this swarm: run swarmbinder up, or give "
            "--url and --token-file"
        )
    if len(stacks) > 1:
        raise StackInputError(
            f"{len(stacks)} stacks run on this swarm ({', '.join(stacks)}): pick one with --stack"
        )
    return stacks[0]


def console_command(stack: str) -> str:
    """The command that opens ``stack``'s console on this manager."""
    plain = deployed_stacks() == [stack]
    return f"{PROG} admin" if plain else f"{PROG} admin --stack {stack}"


def find_console(asked: str | None) -> ConsoleAccess:
    stack = pick_stack(deployed_stacks(), asked)
    service = f"{stack}_binder"
    container = _local_task(service)
    port = deployed_ports(stack).get("binder")
    if port is None:
        raise StackError(f"stack {stack} publishes no port for Binder")
    shown = _exec(container, ["swarmbinder", "show-config", "--json"], "Binder's config")
    try:
        base_url = str(json.loads(shown)["base_url"])
    except (ValueError, KeyError, TypeError):
        raise StackError(f"{service} did not show its config") from None
    token = _exec(container, ["cat", _token_path(stack)], "the admin token").strip()
    if not token:
        raise StackError(f"the admin token secret of stack {stack} is empty")
    return ConsoleAccess(stack, f"http://127.0.0.1:{port}{base_url}", token)


def _local_task(service: str) -> str:
    """A running container of ``service`` on this node."""
    found = hs.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"]
        + ["--filter", "status=running"],
        timeout=30,
    ).stdout.split()
    if found:
        return found[0]
    nodes = hs.run(
        ["docker", "service", "ps", "--filter", "desired-state=running"]
        + ["--format", "{{.Node}}", service],
        check=False,
        timeout=30,
    ).stdout.split()
    where = f"on {', '.join(sorted(set(nodes)))}" if nodes else "where it runs"
    raise StackInputError(
        f"no task of {service} runs on this node, and only its task can read the admin token: "
        f"run swarmbinder admin {where}, or give --url and --token-file"
    )


def _token_path(stack: str) -> str:
    """Where the binder service mounts the stack's admin token secret."""
    spec = service_spec(f"{stack}_binder") or {}
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {}) if isinstance(template, dict) else {}
    mounted = container.get("Secrets", []) if isinstance(container, dict) else []
    for secret in mounted:
        if secret.get("SecretName") == f"{stack}-admin-token":
            name = str(secret.get("File", {}).get("Name", ""))
            return name if name.startswith("/") else f"/run/secrets/{name}"
    raise StackError(f"the binder service of stack {stack} mounts no admin token secret")


def _exec(container: str, command: list[str], what: str) -> str:
    # The output is never shown: on failure, only the command's error line is.
    proc = hs.run(["docker", "exec", container, *command], check=False, timeout=60)
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"reading {what} in Binder's task failed: {error[0][:300]}")
    return proc.stdout
