"""Typed keys for what the application shares between handlers and background tasks.

One place for every ``web.AppKey``: handlers read ``request.app[CONFIG]``, never string keys.
"""

from __future__ import annotations

from aiohttp import web

from .admin import AdminService
from .builds import BuildManager
from .config import Config
from .health import HealthChecker
from .hubauth import HubAuth
from .hubclient import HubClient
from .launch_flow import LaunchFlow
from .metrics import Metrics
from .pages import PageSite
from .policy.admission import Admission
from .policy.bans import BanList
from .policy.buildtokens import BuildTokens
from .policy.clientip import ClientIP
from .policy.quotas import Quotas
from .policy.ratelimit import RateLimiter
from .policy.streamcap import StreamSlots
from .policy.useragents import UserAgentBlock
from .pools import PoolManager
from .registrytokens import TokenIssuer
from .scrub import Scrubber
from .store import Store
from .swarm import SwarmClient

CONFIG = web.AppKey("config", Config)
#: Decides whether a /build request may go on (bans, build token, rate limit).
ADMISSION = web.AppKey("admission", Admission)
#: Runs one /build request as events.
FLOW = web.AppKey("flow", LaunchFlow)
#: The build manager: every build this process watches.
BUILDS = web.AppKey("builds", BuildManager)
#: Bans in force (config plus admin changes).
BANS = web.AppKey("bans", BanList)
#: Quotas in force (config plus admin overrides).
QUOTAS = web.AppKey("quotas", Quotas)
#: The embedded store (build records and logs, admin bans and quotas, audit).
STORE = web.AppKey("store", Store)
#: The Docker engine (swarm manager) client: nodes, services, user servers.
SWARM = web.AppKey("swarm", SwarmClient)
#: JupyterHub's REST API client; absent when no hub is configured.
HUB = web.AppKey("hub", HubClient)
#: The JupyterHub OAuth client that logs users in; only with ``auth_enabled``.
HUB_AUTH = web.AppKey("hub_auth", HubAuth)
#: The pages' templates, static files and launch-page logic.
PAGE_SITE = web.AppKey("page_site", PageSite)
#: The one build token issuer and verifier of the process: /build must verify with this
#: instance, since without a configured secret each instance has its own random one.
BUILD_TOKENS = web.AppKey("build_tokens", BuildTokens)
#: The admin console's service; set by the admin routes' startup (or by a test beforehand).
ADMIN = web.AppKey("admin", AdminService)
#: The checks behind /health (registry, hub, swarm manager, build capacity).
HEALTH = web.AppKey("health", HealthChecker)
#: The metrics /metrics serves, and that the launch flow and build manager update.
METRICS = web.AppKey("metrics", Metrics)
#: Replaces known secrets in what leaves the service (logs, events, stored build logs, admin
#: answers). Add credentials minted at run time to it, and discard them when they expire.
SCRUBBER = web.AppKey("scrubber", Scrubber)
#: The registry's token issuer (Binder is the realm of a registry with ``auth: token``); only
#: with ``registry_token_key``.
REGISTRY_TOKENS = web.AppKey("registry_tokens", TokenIssuer)
#: Finds a request's client address (``trusted_proxies``) and the key per-client limits count
#: it under: one instance for the bans, the rate limit and the event-stream cap.
CLIENT_IP = web.AppKey("client_ip", ClientIP)
#: The per-client rate limit on launches, which the loading page's build tokens are charged to.
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
#: The open /build event streams per client (``max_streams_per_ip``), in this process.
STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)
#: The User-Agents refused at /build (``block_build_user_agents``).
USER_AGENT_BLOCK = web.AppKey("user_agent_block", UserAgentBlock)
#: The warm pools' manager (``warm_pools``); absent when no pool has a size, with
#: ``auth_enabled``, or without a hub. The admin API shows its status.
POOLS = web.AppKey("pools", PoolManager)
