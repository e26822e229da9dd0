"""The ``swarmbinder.*`` labels, and the Docker socket path: the one place they are spelled.

Swarm is swarmbinder's memory: after a restart, builds (queued ones too), registry logins,
prebuild jobs and user servers are found again by these labels on services, secrets and nodes.
A value changed here orphans every object labelled with the old one, so values never change;
a new label is added here, not spelled where it is used.

Label keys are ``LABEL_*``; the values a key takes from a fixed set are named after it
(``KIND_*`` for :data:`LABEL_KIND`, ``ROLE_*`` for :data:`LABEL_ROLE`).
"""

from __future__ import annotations

#: The Docker engine's socket, bind-mounted into builders and prebuild jobs.
DOCKER_SOCKET = "/var/run/docker.sock"

# -- what an object is ---------------------------------------------------------------------------

#: On services and secrets swarmbinder makes: one of the ``KIND_*`` values.
LABEL_KIND = "swarmbinder.kind"
#: A build service (one-shot repo2docker job).
KIND_BUILD = "build"
#: A secret with the configured registry login, shared by builds (no token issuer).
KIND_REGISTRY_AUTH = "registry-auth"
#: A secret with one build's own registry login, removed with its build service.
KIND_BUILD_AUTH = "build-auth"
#: A login for private repositories on one git host (content-addressed, shared by the builds
#: of that host's private repositories).
KIND_GIT_LOGIN = "git-login"
#: A prebuild job, and the secret it reads.
KIND_PREBUILD = "prebuild"
#: A service removing a finished job's containers from one node.
KIND_REAPER = "reaper"
#: The registry's garbage collection job (:mod:`swarmbinder.registrygc`).
KIND_REGISTRY_GC = "registry-gc"
#: The node housekeeping global job (:mod:`swarmbinder.housekeeping`).
KIND_HOUSEKEEPING = "housekeeping"

# -- build services: enough to adopt a build after a restart -------------------------------------

LABEL_PROVIDER = "swarmbinder.provider"
#: The provider spec; user servers carry it too.
LABEL_SPEC = "swarmbinder.spec"
#: The repository URL; user servers carry it too.
LABEL_REPO_URL = "swarmbinder.repo-url"
LABEL_REF = "swarmbinder.ref"
LABEL_BUILD_SLUG = "swarmbinder.build-slug"
#: The image built (user servers: the image run).
LABEL_IMAGE = "swarmbinder.image"
#: A :class:`~swarmbinder.buildstatus.BuildStatus` value (queued or running when labelled).
LABEL_STATUS = "swarmbinder.status"
#: The node hostname a build was placed on, ``""`` when Swarm chooses.
LABEL_NODE = "swarmbinder.node"
#: Creation time, seconds since the epoch (``%.3f``); prebuild jobs carry it too.
LABEL_CREATED = "swarmbinder.created"
#: The user name of a build's own registry login, so a restarted Binder can revoke it.
LABEL_REGISTRY_LOGIN = "swarmbinder.registry-login"
#: On a build-auth secret: the build service it belongs to. On a node, ``true`` marks a build
#: node (:data:`swarmbinder.sticky.BUILD_NODE_LABEL`).
LABEL_BUILD = "swarmbinder.build"
#: A node label no node carries: queued builds are constrained to it until a slot is free.
LABEL_QUEUED = "swarmbinder.queued"

# -- prebuild jobs -------------------------------------------------------------------------------

#: On a prebuild job's secret: the job it belongs to.
LABEL_PREBUILD_JOB = "swarmbinder.prebuild.job"
#: On a prebuild job: how many specs it builds.
LABEL_PREBUILD_SPECS = "swarmbinder.prebuild.specs"
#: On a prebuild job: the name of the secret it reads.
LABEL_PREBUILD_SECRET = "swarmbinder.prebuild.secret"

# -- user servers --------------------------------------------------------------------------------
# Set by the hub (stack/hub/jupyterhub_config.py), which spells them under these same names: a
# test compares the two by name.

LABEL_ROLE = "swarmbinder.role"
ROLE_USER_SERVER = "user-server"
#: Which hub made the service (``SWARMBINDER_HUB_ID``), so hubs sharing a swarm keep apart.
LABEL_HUB = "swarmbinder.hub"
LABEL_USER = "swarmbinder.user"
LABEL_SERVER_NAME = "swarmbinder.server-name"

# -- warm pools (swarmbinder.pools) --------------------------------------------------------------

#: The server name of every warm-pool server (a named server of its own temporary user), so a
#: pool server is known as one from the moment its service exists, by the hub's own label.
SERVER_NAME_POOL = "pool"
#: Set by swarmbinder on a pool server's service when it is taken out of its pool: the epoch
#: time it was handed out, or ``retiring`` while it is being stopped. Absent: it waits. Set
#: with the service's version, so two replicas never take the same server.
LABEL_POOL_CLAIMED = "swarmbinder.pool-claimed"
POOL_RETIRING = "retiring"

# -- disks (swarmbinder.diskuse): written on nodes by Binder from its jobs' reports ------------

#: Bytes used and in all on the filesystem of the node's Docker data root, and when it was
#: measured (epoch seconds), from the node housekeeping job's report.
LABEL_DISK_USED = "swarmbinder.disk.used"
LABEL_DISK_TOTAL = "swarmbinder.disk.total"
LABEL_DISK_CHECKED = "swarmbinder.disk.checked"
#: On the node the registry's volume is on: the registry's size in bytes after its last garbage
#: collection, and when that was.
LABEL_REGISTRY_SIZE = "swarmbinder.registry.size"
LABEL_REGISTRY_CHECKED = "swarmbinder.registry.checked"

# -- the stack -----------------------------------------------------------------------------------

#: On the secrets ``swarmbinder up`` makes: the stack they belong to.
LABEL_STACK = "swarmbinder.stack"
#: On the binder service: a digest of what ``swarmbinder up`` deployed it from.
LABEL_STACK_INPUTS = "swarmbinder.stack-inputs"

# -- host setup (test grounds) -------------------------------------------------------------------

#: On images host setup builds: a digest of their inputs, to skip a rebuild.
LABEL_INPUTS = "swarmbinder.inputs"
#: On everything a multi-node test ground makes: its prefix.
LABEL_MULTINODE = "swarmbinder.multinode"
#: On a multi-node test ground's store volume and containers: the stamp of what filled it.
LABEL_STORE_STAMP = "swarmbinder.store-stamp"
