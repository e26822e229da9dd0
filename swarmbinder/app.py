"""Builds the aiohttp application from a Config: routes, shared state, background tasks.

Wiring only: every rule lives in a domain module. The outside systems (Docker engine,
registry, hub, store) are connected in one ``cleanup_ctx`` entry, :func:`services`, which
never waits for them to answer: the service starts and serves pages, badges, ``/health``
(503 naming what is down), ``/versions`` and ``/metrics`` while any of them is down, and picks
them up when they come back. It makes each part with one small function: :func:`connect_registry`,
:func:`connect_builds`, :func:`load_policy`, :func:`connect_hub`, :func:`wire_metrics`,
:func:`make_launch_flow`, :func:`make_admission` and :func:`make_admin`.

Tests can put their own ``FLOW``/``ADMISSION``/``ADMIN`` on the app before it starts;
:func:`services` then leaves them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import registrygc
from .admin import AdminService, ConfigQuotas
from .buildjob import BuildSettings, connect_swarm, git_logins_from_config
from .buildlogs import BuildLogRecorder, prune_build_logs, recording_manager
from .builds import BuildManager
from .buildstatus import BuildStatus
from .config import Config, iter_options
from .errors import SwarmbinderError, SwarmUnavailable
from .handlers import admin, build, guard, ops
from .handlers.framewriter import WRITE_BATCH, WriteBatch
from .handlers.hubauth import authenticator, setup_hub_auth
from .handlers.pages import add_page_routes
from .handlers.registrytoken import add_registry_token_route
from .handlers.streamwatch import STREAM_WATCH, StreamWatch, run_stream_watch
from .health import HealthChecker
from .healthchecks import health_checks
from .housekeeping import start_housekeeping
from .hubauth import HubAuth
from .hubclient import HubClient
from .keys import (
    ADMIN,
    ADMISSION,
    BANS,
    BUILD_TOKENS,
    BUILDS,
    CLIENT_IP,
    CONFIG,
    FLOW,
    HEALTH,
    HUB,
    HUB_AUTH,
    METRICS,
    POOLS,
    QUOTAS,
    RATE_LIMITER,
    REGISTRY_TOKENS,
    SCRUBBER,
    STORE,
    STREAM_SLOTS,
    SWARM,
    USER_AGENT_BLOCK,
)
from .launch_flow import LaunchFlow, ServerLauncher
from .launcher import Launcher
from .launchslots import LaunchSlots, auto_limit
from .metrics import LaunchEventLog, Metrics, MetricsObserver
from .placement import image_placement
from .policy.admission import Admission
from .policy.bans import BanList
from .policy.buildtokens import BuildTokens, build_audience, token_origin
from .policy.clientip import ClientIP
from .policy.quotas import Quotas
from .policy.ratelimit import RateLimiter, StoreWindows
from .policy.streamcap import StreamSlots
from .policy.sync import follow_changes
from .policy.tokenmint import SpentTokens
from .policy.useragents import UserAgentBlock
from .pools import PooledLauncher, PoolManager
from .pools.setup import counted_servers, pools_from_config
from .prebuild import jobs as prebuild_jobs
from .registry import RegistryClient
from .registrytokens import TokenIssuer, issuer_from_config
from .resolve import Resolved, policy_from_config, provider_session, providers_from_config, resolve
from .retention import IMAGE_USE_FLUSH_SECONDS, ImageUse, sweep_forever
from .scrub import DEFAULT_SCRUBBER, Scrubber
from .store import Store, open_store
from .swarm import SwarmClient
from .userservers import UserServer, list_user_servers, reap_forever

log = logging.getLogger(__name__)

#: How long to wait between attempts to pick up builds while the engine does not answer.
ENGINE_RETRY_SECONDS = 5.0
#: How much longer than launch_timeout a launch's claim on the quotas lasts if nothing ends it.
LAUNCH_CLAIM_MARGIN = 60.0
#: How often persisted build logs past build_log_retention are deleted.
BUILD_LOG_PRUNE_INTERVAL = 3600.0
#: How often the swarm's nodes and user servers are read again: the Swarm gauges of /metrics
#: and the launch limit that follows the nodes' CPUs (concurrent_launch_limit: null).
SWARM_WATCH_INTERVAL = 5.0


def create_app(config: Config) -> web.Application:
    """The application for ``config``."""
    base = config.server.base_url
    allow_origin = config.server.cors_allow_origin
    client_ip = ClientIP(config.server.trusted_proxies)
    app = web.Application(
        middlewares=[
            # First: BinderHub refuses a banned network before anything else is looked at.
            guard.network_bans(client_ip, base),
            ops.cors_preflight(allow_origin, base),
        ]
    )
    app[CONFIG] = config
    app[CLIENT_IP] = client_ip
    app[SCRUBBER] = DEFAULT_SCRUBBER
    # First of the contexts: the secrets are known before anything can log them.
    app.cleanup_ctx.append(scrub_config_secrets)
    app[METRICS] = Metrics(
        scrub=app[SCRUBBER].scrub, repo_label_limit=config.server.metrics_repo_label_limit
    )
    app[BUILD_TOKENS] = BuildTokens(
        config.tokens.build_token_secret,
        expires_seconds=config.tokens.build_token_expires_seconds,
        check_origin=config.tokens.build_token_check_origin,
    )
    app.on_response_prepare.append(ops.cors_signal(allow_origin, base))
    issuer = issuer_from_config(config.registry)
    if issuer is not None:
        add_registry_token_route(app, base, issuer)

    app.router.add_get(f"{base}versions", ops.versions)
    app.router.add_get(f"{base}health", ops.health)
    app.router.add_get(f"{base}metrics", ops.metrics)
    add_build_routes(app)
    add_page_routes(app, config, tokens=app[BUILD_TOKENS])
    if config.hub.auth_enabled:
        setup_hub_auth(app)  # before services: /build's admission needs HUB_AUTH
    app.cleanup_ctx.append(services)
    # After services: the admin routes run the feed of the AdminService that services makes.
    admin.add_admin_routes(app)
    # Last: everything start-up made exists by then.
    app.cleanup_ctx.append(freeze_startup_objects)
    return app


async def freeze_startup_objects(app: web.Application) -> AsyncIterator[None]:
    """Hide what start-up made from the garbage collector while the app runs.

    Modules, config, clients and routes live as long as the process, yet every full
    collection walked them all: about 150,000 objects, some 60 ms of CPU with a thousand event
    streams open, while every stream's next log line waited. Frozen, they are skipped, and a
    full collection walks only what requests made. Unfrozen at shutdown, so a process that
    runs several apps one after another (the tests) frees each one's objects.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _own_tokens(issuer: TokenIssuer) -> Callable[[list[str]], tuple[str, float]]:
    """Binder's registry requests sign their own (pull) tokens: no round trip to the realm."""

    def token(scopes: list[str]) -> tuple[str, float]:
        reply = issuer.own_token(scopes)
        return reply.token, float(reply.expires_in)

    return token


def config_secrets(config: Config) -> list[str]:
    """The values of every option marked secret: a new secret option is scrubbed unasked."""
    found = (config.value(option.name) for option in iter_options() if option.secret)
    values = [value for value in found if isinstance(value, str) and value]
    # A git login's password is inside its option's text: scrubbed on its own too.
    return list(dict.fromkeys(values + git_logins_from_config(config).secrets()))


async def scrub_config_secrets(app: web.Application) -> AsyncIterator[None]:
    """The config's secrets are scrubbed while the app runs (another owner of the same
    scrubber, such as ``swarmbinder serve``'s logging, keeps its own additions)."""
    scrubber, secrets = app[SCRUBBER], config_secrets(app[CONFIG])
    scrubber.update(secrets)
    try:
        yield
    finally:
        for secret in secrets:
            scrubber.discard(secret)


def add_build_routes(app: web.Application) -> None:
    """``/build/<provider>/<spec>``; the handler needs FLOW and ADMISSION on the app.

    The client finder, the open-stream cap, the streams' write batch and their watch are made
    here unless the app has them, the refused User-Agents always."""
    config = app[CONFIG]
    if CLIENT_IP not in app:
        app[CLIENT_IP] = ClientIP(config.server.trusted_proxies)
    if STREAM_SLOTS not in app:
        app[STREAM_SLOTS] = StreamSlots(config.quotas.max_streams_per_ip)
    app[USER_AGENT_BLOCK] = UserAgentBlock(config.bans.block_build_user_agents)
    if WRITE_BATCH not in app:
        app[WRITE_BATCH] = WriteBatch()
    if STREAM_WATCH not in app:
        app[STREAM_WATCH] = StreamWatch()
        app.cleanup_ctx.append(run_stream_watch)
    base = config.server.base_url
    app.router.add_get(f"{base}build/{{provider}}/{{spec:.+}}", build.build)


async def services(app: web.Application) -> AsyncIterator[None]:
    """Connect the outside systems, run the background tasks, and close it all at shutdown.

    Everything is closed through one exit stack, which unwinds in the reverse of the order
    things were opened: the order of the steps below is also the order of shutdown, reversed.
    """
    if FLOW in app:
        yield
        return
    config = app[CONFIG]
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        swarm = await stack.enter_async_context(connect_swarm(config))
        app[SWARM] = swarm
        # The one outside system waited for at start-up: without it there are no bans to
        # enforce. A PostgreSQL that refuses us is a ConfigError naming store_url (exit 2).
        store = await open_store(config.server)
        stack.push_async_callback(store.close)
        app[STORE] = store
        issuer = app.get(REGISTRY_TOKENS)
        registry = connect_registry(config, session, issuer)

        tasks = _Tasks()
        builds = await connect_builds(config, swarm, store, stack, tasks, issuer, app[SCRUBBER])
        # Registered after builds.close: an exit stack unwinds in reverse, so background tasks
        # are cancelled before the manager closes.
        stack.push_async_callback(tasks.cancel_all)
        app[BUILDS] = builds
        tasks.start(_start_builds(builds), "build-manager-start")
        start_housekeeping(config, swarm, tasks.start)

        bans, quotas = await load_policy(config, store)
        app[BANS], app[QUOTAS] = bans, quotas
        tasks.start(follow_changes(store, [quotas.load, bans.load]), "policy-sync")

        hub, launcher = connect_hub(config, session, swarm, registry, store, stack, tasks)
        if hub is not None:
            app[HUB] = hub
        hub_id = config.hub.hub_id or None

        async def running_servers() -> list[UserServer]:
            return await list_user_servers(swarm, hub_id=hub_id)

        observer = wire_metrics(
            config, app[METRICS], swarm, builds, launcher, running_servers, stack, tasks
        )
        image_use = start_retention(config, swarm, registry, store, tasks)
        if image_use is not None:
            observer.listen_launched(image_use.note)

        def keep_pools(manager: PoolManager) -> None:
            app[POOLS] = manager

        app[FLOW] = await make_launch_flow(
            config,
            stack,
            bans,
            quotas,
            registry,
            builds,
            launcher,
            running_servers,
            observer,
            pools=(hub, swarm, tasks.start) if hub is not None else None,
            on_pools=keep_pools,
        )
        # One limiter for /build and for the loading page's build tokens (policy.tokenmint);
        # it counts in the store, so it holds across replicas.
        limiter = RateLimiter(
            config.quotas.rate_limit,
            config.quotas.rate_limit_period,
            windows=StoreWindows(store),
        )
        app[RATE_LIMITER] = limiter
        app[ADMISSION] = make_admission(
            config, bans, app[BUILD_TOKENS], app.get(HUB_AUTH), limiter, app[CLIENT_IP]
        )
        if ADMIN not in app:
            app[ADMIN] = make_admin(
                config, swarm, store, builds, bans, quotas, hub, running_servers, app.get(POOLS)
            )
        checker = HealthChecker(
            health_checks(config, swarm, registry, hub, builds, running_servers, store)
        )
        stack.push_async_callback(checker.aclose)
        app[HEALTH] = checker
        yield


def connect_registry(
    config: Config, session: aiohttp.ClientSession, issuer: TokenIssuer | None
) -> RegistryClient | None:
    """The registry images are pushed to and checked in; None with ``use_registry: false``."""
    if not config.registry.use_registry:
        return None
    return RegistryClient(
        config.registry.registry_url or config.registry.image_prefix.split("/", 1)[0],
        username=config.registry.registry_username,
        password=config.registry.registry_password,
        session=session,
        # Images are named by image_prefix's host, which may not be registry_url's.
        image_hosts=[config.registry.image_prefix.split("/", 1)[0]],
        token_source=_own_tokens(issuer) if issuer is not None else None,
    )


async def connect_builds(
    config: Config,
    swarm: SwarmClient,
    store: Store,
    stack: contextlib.AsyncExitStack,
    tasks: _Tasks,
    issuer: TokenIssuer | None,
    scrubber: Scrubber,
) -> BuildManager:
    """The build manager, recording build logs in the store with ``persist_build_logs``.

    Closed by ``stack``; it picks up the swarm's builds later (:func:`_start_builds`), once the
    engine answers.
    """
    settings = BuildSettings.from_config(config, issuer=issuer)
    builds: BuildManager
    if config.builds.persist_build_logs:
        recorder = BuildLogRecorder(
            store,
            replay_tail=config.builds.log_tail_lines,
            max_bytes=config.builds.build_log_max_bytes,
            scrubber=scrubber,
        )
        await recorder.start()
        stack.push_async_callback(recorder.close)
        builds = recording_manager(swarm, settings, recorder)
        tasks.start(
            _prune_build_logs(store, config.builds.build_log_retention),
            "build-log-pruning",
        )
    else:
        builds = BuildManager(swarm, settings)
    stack.push_async_callback(builds.close)
    return builds


async def load_policy(config: Config, store: Store) -> tuple[BanList, Quotas]:
    """The bans and quotas in force: the config's, with the admin's changes from the store,
    and the launches in progress (through any replica) held against the quotas."""
    policy = policy_from_config(config)
    bans = BanList(ban_networks=config.bans.ban_networks, policy=policy, store=store)
    await bans.load()
    quotas = Quotas(
        pod_quota=config.quotas.pod_quota,
        per_repo_quota=config.quotas.per_repo_quota,
        per_repo_quota_higher=config.quotas.per_repo_quota_higher,
        policy=policy,
        store=store,
        budget=store,
        # A launch that outlives this is ended by the launcher; a claim must not end sooner.
        claim_seconds=config.hub.launch_timeout + LAUNCH_CLAIM_MARGIN,
    )
    await quotas.load()
    return bans, quotas


def start_retention(
    config: Config,
    swarm: SwarmClient,
    registry: RegistryClient | None,
    store: Store,
    tasks: _Tasks,
) -> ImageUse | None:
    """The registry's retention sweep, when image_retention_days is set, and the record of
    launched images it reads (flushed to the store every few seconds)."""
    days = config.registry.image_retention_days
    if days is None or registry is None:
        return None
    image_use = ImageUse(store, time.time)
    tasks.start(image_use.flush_forever(IMAGE_USE_FLUSH_SECONDS), "image-use")
    tasks.start(
        sweep_forever(
            swarm=swarm,
            registry=registry,
            store=store,
            image_prefix=config.registry.image_prefix,
            keep_days=days,
            interval=config.registry.image_retention_interval,
            clock=time.time,
            after_sweep=registrygc.after_sweep(config, swarm) if config.disks.registry_gc else None,
        ),
        "registry-retention",
    )
    return image_use


def connect_hub(
    config: Config,
    session: aiohttp.ClientSession,
    swarm: SwarmClient,
    registry: RegistryClient | None,
    store: Store,
    stack: contextlib.AsyncExitStack,
    tasks: _Tasks,
) -> tuple[HubClient | None, Launcher | None]:
    """The hub's API and the launcher over it (preferring nodes that hold the image, with
    ``launch_prefer_image_nodes``); neither without a hub (``local_url``).

    With a ``hub_id`` the user servers of launches that went wrong are reaped in the
    background.
    """
    if not config.hub.local_url:
        return None, None
    hub = HubClient(config.hub.local_url + "hub/api", config.hub.hub_api_token, session)
    limit = config.hub.concurrent_launch_limit
    slots = LaunchSlots(auto_limit(0) if limit is None else limit)
    placement = image_placement(
        swarm,
        store,
        enabled=config.hub.launch_prefer_image_nodes,
        hub_id=config.hub.hub_id or None,
        max_imbalance=config.hub.launch_prefer_max_imbalance,
        clock=time.time,
        start=tasks.start,
    )
    launcher = Launcher(
        hub,
        swarm,
        hub_url=config.hub.hub_url or config.hub.local_url,
        registry=registry,
        launch_timeout=config.hub.launch_timeout,
        allow_named_servers=config.hub.allow_named_servers,
        named_server_limit_per_user=config.hub.named_server_limit_per_user,
        slots=slots,
        placement=placement,
    )
    stack.push_async_callback(launcher.aclose)
    hub_id = config.hub.hub_id or None
    if hub_id is not None:
        tasks.start(
            reap_forever(swarm, hub, hub_id=hub_id, interval=config.hub.reaper_interval),
            "user-server-reaper",
        )
    return hub, launcher


def wire_metrics(
    config: Config,
    metrics: Metrics,
    swarm: SwarmClient,
    builds: BuildManager,
    launcher: Launcher | None,
    running_servers: Callable[[], Awaitable[list[UserServer]]],
    stack: contextlib.AsyncExitStack,
    tasks: _Tasks,
) -> MetricsObserver:
    """Feed /metrics, and return the observer the launch flow reports launches to.

    In-process numbers are read when /metrics is scraped; the swarm's are polled.
    """
    metrics.build_queue_length.set_function(
        lambda: sum(1 for b in builds.builds if b.status is BuildStatus.QUEUED)
    )
    metrics.builds_running.set_function(
        lambda: sum(1 for b in builds.builds if b.status is BuildStatus.RUNNING)
    )
    if launcher is not None:
        slots_in_use = launcher.slots
        metrics.launch_queue_length.set_function(lambda: slots_in_use.queued)
        metrics.launch_limit.set_function(lambda: slots_in_use.limit)
    sized = launcher.slots if launcher and config.hub.concurrent_launch_limit is None else None
    tasks.start(_watch_swarm(metrics, swarm, running_servers, sized), "swarm-watch")
    events = LaunchEventLog()
    stack.callback(events.close)
    return MetricsObserver(metrics, events)


async def make_launch_flow(
    config: Config,
    stack: contextlib.AsyncExitStack,
    bans: BanList,
    quotas: Quotas,
    registry: RegistryClient | None,
    builds: BuildManager,
    launcher: Launcher | None,
    running_servers: Callable[[], Awaitable[list[UserServer]]],
    observer: MetricsObserver,
    *,
    pools: tuple[HubClient, SwarmClient, Callable[[Awaitable[None], str], None]] | None = None,
    on_pools: Callable[[PoolManager], None] = lambda manager: None,
) -> LaunchFlow:
    """What runs each /build request: resolve the spec, find or build the image, launch
    (with ``warm_pools``, from a pool when one holds a server of the image). ``on_pools`` is
    given the pools' manager when there is one, for the admin API to show."""
    # Specs choose where the providers connect, so they get a session of their own that
    # holds them to allowed_outbound_networks; the hub and registry use the plain one.
    provider_http = await stack.enter_async_context(provider_session(config))
    providers = providers_from_config(config, provider_http)
    image_prefix = config.registry.image_prefix

    async def resolve_path(path: str) -> Resolved:
        # bans.policy is read per request: an admin's spec ban applies to the next launch.
        return await resolve(
            path, providers=providers, policy=bans.policy, image_prefix=image_prefix
        )

    async def image_exists(image: str) -> bool:
        if registry is None:
            return False
        name, _, tag = image.rpartition(":")
        return await registry.manifest_exists(name, tag)

    flow_launcher: ServerLauncher | None = launcher
    counted = running_servers
    if pools is not None and launcher is not None:
        hub, swarm, start_task = pools
        found = image_exists
        manager = pools_from_config(config, hub, swarm, launcher, builds, resolve_path, found)
        if manager is not None:
            flow_launcher = PooledLauncher(launcher, manager)
            counted = counted_servers(running_servers)
            stack.push_async_callback(manager.aclose)
            start_task(manager.run(), "warm-pools")
            observer.metrics.watch_pools(manager.status)
            on_pools(manager)
    return LaunchFlow(
        resolve=resolve_path,
        image_exists=image_exists,
        builds=builds,
        launcher=flow_launcher,
        check_quota=quotas.gate(counted, on_refused=observer.quota_refused),
        launch_budget=quotas.launch_gate(counted, on_refused=observer.quota_refused),
        observer=observer,
    )


def make_admission(
    config: Config,
    bans: BanList,
    tokens: BuildTokens,
    hub_auth: HubAuth | None,
    limiter: RateLimiter,
    client_ip: ClientIP,
) -> Admission:
    """Who may start a /build: network bans, build token, rate limit, and (with
    ``auth_enabled``) a hub login.

    A token's first use is free, since the page that minted it was charged; a reuse is not
    (:mod:`~swarmbinder.policy.tokenmint`)."""
    spent = SpentTokens()

    def verify_token(token: str, path: str, headers: Any) -> bool:
        provider, _, spec = path.partition("/")
        claims = tokens.verify(token, build_audience(provider, spec), token_origin(headers))
        return spent.first_use(claims)

    return Admission(
        client_ip=client_ip,
        check_network=bans.check_network,
        verify_token=verify_token,
        rate_limit=limiter.check if config.quotas.rate_limit > 0 else None,
        authenticate=authenticator(hub_auth) if hub_auth is not None else None,
    )


def make_admin(
    config: Config,
    swarm: SwarmClient,
    store: Store,
    builds: BuildManager,
    bans: BanList,
    quotas: Quotas,
    hub: HubClient | None,
    running_servers: Callable[[], Awaitable[list[UserServer]]],
    pools: PoolManager | None = None,
) -> AdminService:
    """The admin console's service (its routes run its live feed)."""

    async def list_prebuilds() -> list[prebuild_jobs.JobStatus]:
        return await prebuild_jobs.list_jobs(swarm)

    async def remove_prebuild(name: str) -> bool:
        return await prebuild_jobs.remove_job(swarm, name)

    return AdminService(
        builds=builds,
        bans=bans,
        quotas=quotas,
        store=store,
        list_servers=running_servers,
        list_nodes=swarm.nodes,
        list_prebuilds=list_prebuilds,
        remove_prebuild=remove_prebuild,
        hub=hub,
        list_pools=None if pools is None else pools.status,
        temporary_users=not config.hub.auth_enabled,
        config_quotas=ConfigQuotas(
            config.quotas.pod_quota,
            config.quotas.per_repo_quota,
            config.quotas.per_repo_quota_higher,
        ),
    )


async def _prune_build_logs(store: Store, keep_for: int) -> None:
    """Forget persisted logs of builds that finished more than ``keep_for`` seconds ago."""
    while True:
        try:
            pruned = await prune_build_logs(store, keep_for=keep_for)
            if pruned:
                log.info("pruned %d persisted build logs", pruned)
        except Exception:
            log.exception("pruning build logs failed; trying again later")
        await asyncio.sleep(BUILD_LOG_PRUNE_INTERVAL)


async def _watch_swarm(
    metrics: Metrics,
    swarm: SwarmClient,
    running_servers: Callable[[], Awaitable[list[UserServer]]],
    sized_slots: LaunchSlots | None,
) -> None:
    """One read of the swarm's nodes serves the Swarm gauges of /metrics (nodes by state and
    availability, running user servers) and, with ``concurrent_launch_limit: null``, the launch
    limit: it follows the CPUs of the nodes user servers can run on, growing as workers join
    and shrinking as they leave."""
    while True:
        try:
            nodes = await swarm.nodes()
            servers = await running_servers()
        except SwarmbinderError as error:
            log.debug("cannot read the swarm's nodes and servers: %s", error)
        else:
            metrics.set_swarm_nodes(Counter((n.state, n.availability) for n in nodes))
            metrics.set_disks({n.hostname: n.labels for n in nodes})
            metrics.user_servers_running.set(len(servers))
            if sized_slots is not None:
                usable = [n for n in nodes if n.state == "ready" and n.availability == "active"]
                cpus = sum(n.cpus for n in usable)
                limit = auto_limit(cpus)
                if limit != sized_slots.limit:
                    log.info("launch limit: %d servers starting at once (%g CPUs)", limit, cpus)
                    sized_slots.resize(limit)
        await asyncio.sleep(SWARM_WATCH_INTERVAL)


async def _start_builds(builds: BuildManager) -> None:
    """Pick up builds from Swarm once the engine answers; until then /build reports it down."""
    while True:
        try:
            await builds.start()
            return
        except SwarmUnavailable as error:
            log.warning("cannot pick up builds yet: %s", error)
        await asyncio.sleep(ENGINE_RETRY_SECONDS)


class _Tasks:
    """Background tasks owned by the app: started by name, cancelled and awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Awaitable[None], name: str) -> None:
        async def run() -> None:
            await coroutine

        self._tasks.append(asyncio.create_task(run(), name=name))

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
