"""``swarmbinder build PROVIDER/SPEC``: one build through the same machinery the service uses."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from .buildjob import BuildSettings, connect_swarm
from .builds import BuildManager, to_sticky_node
from .config import Config
from .errors import SwarmbinderError
from .events import BuildEvent, Phase
from .registry import RegistryClient
from .resolve import policy_from_config, provider_session, providers_from_config, resolve
from .sticky import rank_nodes


async def run_build(
    config: Config, path: str, *, as_json: bool, dry_run: bool, out: TextIO = sys.stdout
) -> int:
    """Exit code 0 when the image is in the registry (or, with dry_run, when it resolved)."""
    async with provider_session(config) as session:
        resolved = await resolve(
            path,
            providers=providers_from_config(config, session),
            policy=policy_from_config(config),
            image_prefix=config.registry.image_prefix,
        )
    request = resolved.build
    if dry_run:
        node = await _sticky_node(config, request.repo_url)
        plan = {
            "provider": request.provider,
            "spec": request.spec,
            "repo_url": request.repo_url,
            "resolved_ref": request.ref,
            "image": request.image,
            "build_service": request.service_name,
            "node": node,
        }
        if as_json:
            print(json.dumps(plan), file=out)
        else:
            for key, value in plan.items():
                print(f"{key:14} {value if value is not None else '(none)'}", file=out)
        return 0

    registry = RegistryClient(
        config.registry.registry_url,
        username=config.registry.registry_username,
        password=config.registry.registry_password,
    )
    async with registry:
        if config.registry.use_registry and await _in_registry(registry, request.image):
            _emit(BuildEvent.built(request.image, "Found built image\n"), as_json, out)
            return 0
        async with connect_swarm(config) as swarm:
            manager = BuildManager(swarm, BuildSettings.from_config(config))
            try:
                build = await manager.request(request)
                final: BuildEvent | None = None
                async for event in build.events():
                    _emit(event, as_json, out)
                    final = event
                # A built image's service has served its purpose; failed ones stay a while
                # so `docker service logs` can still show what went wrong.
                await manager.cleanup()
            finally:
                await manager.close()
        if final is None or final.phase is not Phase.BUILT:
            return 1
        if config.registry.use_registry and not await _in_registry(registry, request.image):
            print(
                f"swarmbinder: error: the build ended but {request.image} is not in the registry",
                file=sys.stderr,
            )
            return 1
    return 0


async def _in_registry(registry: RegistryClient, image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return await registry.manifest_exists(name, tag)


async def _sticky_node(config: Config, repo_url: str) -> str | None:
    """The node sticky placement would pick; None when no engine answers."""
    try:
        async with connect_swarm(config) as swarm:
            async with asyncio.timeout(10):
                nodes = [to_sticky_node(n) for n in await swarm.nodes()]
    except (SwarmbinderError, TimeoutError):
        return None
    ranked = rank_nodes(repo_url, nodes)
    return ranked[0].hostname if ranked else None


def _emit(event: BuildEvent, as_json: bool, out: TextIO) -> None:
    if as_json:
        wire: dict[str, Any] = event.to_wire()
        print(json.dumps(wire), file=out, flush=True)
    else:
        text = event.message.rstrip("\n")
        print(
            f"[{event.phase.value}] {text}" if text else f"[{event.phase.value}]",
            file=out,
            flush=True,
        )
