"""Where a prebuild resolves and builds (:class:`~swarmbinder.prebuild.run.Backend`): two back
ends that share the rest of the service's machinery.

- :class:`SwarmBackend` drives the swarm itself from a config file: specs are resolved with
  :func:`~swarmbinder.resolve.resolve` (spec policy included), looked up in the registry, and
  built by a :class:`~swarmbinder.builds.BuildManager`, so a build of the same repo and ref that
  is already running (started by the service, say) is joined rather than repeated, and
  ``concurrent_build_limit`` queues the rest;
- :class:`ServiceBackend` asks a running swarmbinder: one ``/build/<spec>?build_only=true``
  stream per spec, with the admin token (allowed outside API-only mode), so the builds are
  the service's own and show in its admin console.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from ..buildjob import BuildSettings, connect_swarm
from ..builds import BuildManager
from ..config import Config
from ..errors import ConfigError, SpecError, SwarmbinderError
from ..events import BuildEvent, Phase, SSEDecoder
from ..registry import RegistryClient
from ..resolve import Resolved, policy_from_config, provider_session, providers_from_config, resolve

#: A rate-limited ``/build`` (HTTP 429) is retried this often, waiting as Retry-After says.
RATE_LIMIT_RETRIES = 20
MAX_RETRY_WAIT = 60.0


# --- the swarm, directly ---------------------------------------------------------------------


class SwarmBackend:
    """Resolve with the config's providers and policy, look up with its registry, build with
    a BuildManager on its engine: what the service itself would do for a ``/build``."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        registry: RegistryClient,
        builds: BuildManager,
    ) -> None:
        self._config = config
        self._providers = providers_from_config(config, session)
        self._policy = policy_from_config(config)
        self._registry = registry
        self._builds = builds
        self._resolved: dict[str, Resolved] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[SwarmBackend]:
        if not config.registry.use_registry:
            raise ConfigError("use_registry", "prebuilding needs a registry to push images to")
        image_host = config.registry.image_prefix.split("/", 1)[0]
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            registry = RegistryClient(
                config.registry.registry_url or image_host,
                username=config.registry.registry_username,
                password=config.registry.registry_password,
                session=session,
                image_hosts=[image_host],
            )
            stack.push_async_callback(registry.aclose)
            swarm = await stack.enter_async_context(connect_swarm(config))
            builds = BuildManager(swarm, BuildSettings.from_config(config))
            stack.push_async_callback(builds.close)
            # The specs' own requests go through a session held to allowed_outbound_networks.
            providers = await stack.enter_async_context(provider_session(config))
            yield cls(config, providers, registry, builds)
            # Built images' services have served their purpose; failed ones stay for a while
            # so `docker service logs` can still show what went wrong.
            with contextlib.suppress(SwarmbinderError):
                await builds.cleanup()

    async def resolve(self, spec: str) -> str:
        resolved = await resolve(
            spec,
            providers=self._providers,
            policy=self._policy,
            image_prefix=self._config.registry.image_prefix,
        )
        self._resolved[spec] = resolved
        return resolved.build.image

    async def in_registry(self, image: str) -> bool:
        name, _, tag = image.rpartition(":")
        return await self._registry.manifest_exists(name, tag)

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        yield BuildEvent.waiting()
        build = await self._builds.request(self._resolved[spec].build)
        async for event in build.events():
            yield event


# --- a running swarmbinder -------------------------------------------------------------------


class ServiceBackend:
    """``/build/<spec>?build_only=true`` on a running swarmbinder, as an administrator."""

    def __init__(self, url: str, token: str, session: aiohttp.ClientSession) -> None:
        self._base = url.rstrip("/") + "/"
        self._token = token
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, token: str) -> AsyncIterator[ServiceBackend]:
        if not url.startswith(("http://", "https://")):
            raise SpecError(f"--url {url!r} is not an http:// or https:// URL")
        # Keepalives come every 20 s, so a minute of silence means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backend = cls(url, token, session)
            await backend._check()
            yield backend

    async def _check(self) -> None:
        """Fail once, clearly, when the URL is not a swarmbinder (rather than once per spec)."""
        url = self._base + "versions"
        try:
            async with self._session.get(url) as response:
                body = await response.json(content_type=None) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise SwarmbinderError(f"cannot reach swarmbinder at {url}: {error}") from None
        if not isinstance(body, dict) or "binderhub" not in body:
            raise SwarmbinderError(f"{url} did not answer as a swarmbinder (/versions)")

    async def resolve(self, spec: str) -> None:
        return None  # the service resolves each spec at the start of its /build stream

    async def in_registry(self, image: str) -> bool:
        # Only asked after a build: the service sends ``ready`` once the image is pushed.
        return True

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        url = URL(f"{self._base}build/{spec}?build_only=true", encoded=True)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {self._token}"}
        for _attempt in range(RATE_LIMIT_RETRIES):
            try:
                async with self._session.get(url, headers=headers) as response:
                    if response.status == 429:
                        wait = _retry_after(response.headers.get("Retry-After"))
                        yield BuildEvent(
                            Phase.WAITING,
                            f"Rate limited; trying again in {wait:g} s\n",
                            {"rate_limited": wait},
                        )
                        await asyncio.sleep(wait)
                        continue
                    if not response.content_type.startswith("text/event-stream"):
                        raise SwarmbinderError(
                            f"{url} answered {response.status} {response.reason}"
                        )
                    decoder = SSEDecoder()
                    async for chunk in response.content.iter_any():
                        for payload in decoder.feed(chunk):
                            event = BuildEvent.from_wire(payload)
                            if event.phase is Phase.FAILED and "API only mode" in event.message:
                                raise SwarmbinderError(
                                    "the Binder refused build_only: is the admin token right?"
                                )
                            yield event
                            if event.phase in (Phase.READY, Phase.FAILED):
                                return
                    return
            except (aiohttp.ClientError, TimeoutError) as error:
                raise SwarmbinderError(f"the stream from {self._base} broke: {error}") from None
        raise SwarmbinderError(f"still rate limited after {RATE_LIMIT_RETRIES} attempts")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 1.0), MAX_RETRY_WAIT)
    except ValueError:
        return 5.0
