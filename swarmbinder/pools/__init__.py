"""Warm pools: Jupyter servers started ahead for popular repositories, handed out on launch.

How it fits (``warm_pools: {spec pattern: size}``)::

    rules      which specs get a pool, of what size; the pure plan of what to start and stop
    auto       warm_pool_auto: the most launched specs of the hour, counted against churn
    pressure   whether the swarm's ready nodes are short of unreserved CPU or memory
    servers    the pool servers as Swarm and the hub know them: list, claim, mint, retire
    manager    the background loop: resolve each pool's spec, build its image if missing,
               fill to size, drain what is stale; and the hand-out itself
    handout    a ServerLauncher for the launch flow: a pooled server if one waits for the
               image, else the cold launch

A pool server is started exactly as a cold launch starts one (the same launcher, through the
hub, with the image the spec resolves to now), as the named server ``pool`` of a temporary user
of its own. Its state lives in Swarm, where a restarted Binder (or another replica) finds it:
the hub labels the service with its user, server name, image and spec when it creates it, and
swarmbinder adds ``swarmbinder.pool-claimed`` when it takes the server out of the pool, with the
service's version so two replicas cannot take one server. A server without that label waits;
it counts against no quota until it is handed out, and from then on like any launch.

A hand-out gives the launch a server nobody used, with a token minted by the hub at that moment
(scoped to that one server) and the request's own ``binder_*`` fields in the ``ready`` event,
so the client sees a cached launch's ``built``, ``launching``, ``ready``. What differs inside
the server is only its environment: ``BINDER_REQUEST`` and friends name the pool's spec and
launch host, not the one request it was later handed to.

A new commit (the spec resolves to another image) retires the pool's waiting servers and fills
it with the new image; a server that waited ``warm_pool_max_age`` is retired and replaced; pools
do not start servers while launches wait for a launch slot or while the swarm is short of
unreserved CPU or memory (``warm_pool_min_free_percent``); a pool without a hand-out for
``warm_pool_idle_after`` keeps 1 waiting server (an auto pool none) until its spec is launched;
a build or spawn that fails is retried with a growing backoff, never in a loop. Several replicas
each run a manager; they see each other's servers in Swarm, so a pool overshoots its size by at
most one start per replica.
"""

from .handout import PooledLauncher
from .manager import HandedOut, PoolManager
from .rules import PoolRule, rules_from_config
from .servers import PoolServers

__all__ = [
    "HandedOut",
    "PoolManager",
    "PoolRule",
    "PoolServers",
    "PooledLauncher",
    "rules_from_config",
]
