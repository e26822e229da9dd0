"""JupyterHub configuration for swarmbinder: SwarmSpawner user servers, launched over the API.

Shipped as a Swarm config and read from the environment, so one file serves every deployment.
Every variable has a default except the two that must never be guessed:

SWARMBINDER_HUB_API_TOKEN         token of the ``swarmbinder`` service (or ..._FILE: a path
                                  holding it, e.g. a Swarm secret under /run/secrets/)
SWARMBINDER_HUB_IMAGE_PREFIX      only images whose name starts with this are launched
                                  (``registry:5000/binder-``); ``*`` is refused on purpose
SWARMBINDER_HUB_NETWORK           attachable overlay shared by the hub and user servers
                                  (default ``swarmbinder``)
SWARMBINDER_HUB_CONNECT_HOST      the hub's Swarm service name, as user servers resolve it
                                  (default ``jupyterhub``)
SWARMBINDER_HUB_ID                value of the ``swarmbinder.hub`` label on user servers, so
                                  several hubs can share a swarm (default: the connect host)
SWARMBINDER_HUB_BASE_URL          JupyterHub's base URL (default ``/``)
SWARMBINDER_HUB_DATA_DIR          volume for the database and cookie secret
                                  (default ``/srv/jupyterhub/data``)
SWARMBINDER_HUB_DB_URL            the hub's database (default: SQLite in the data dir), e.g.
                                  ``postgresql+psycopg2://binder@postgres/jupyterhub``, without
                                  its password: that is read from
SWARMBINDER_HUB_DB_PASSWORD_FILE  (a Swarm secret), so it is in no service's environment
SWARMBINDER_HUB_DB_URL            database URL (default: SQLite in the data dir)
SWARMBINDER_HUB_MEM_LIMIT         user server memory limit (``2G``; empty: none)
SWARMBINDER_HUB_MEM_GUARANTEE     memory reservation (empty: none)
SWARMBINDER_HUB_CPU_LIMIT         CPUs per user server (``1``; empty: none)
SWARMBINDER_HUB_CPU_GUARANTEE     CPU reservation (empty: none)
SWARMBINDER_HUB_CULL_TIMEOUT      seconds of inactivity before a server is culled (3600)
SWARMBINDER_HUB_CULL_EVERY        seconds between culler runs (600)
SWARMBINDER_HUB_CULL_MAX_AGE      seconds after which any server is culled (0: never)
SWARMBINDER_HUB_START_TIMEOUT     seconds for a user server's task to start (120)
SWARMBINDER_HUB_HTTP_TIMEOUT      seconds for a started server to answer (60)
SWARMBINDER_HUB_AUTH_ENABLED      ``true``: users log in (then set ..._AUTHENTICATOR) and
                                  keep their named servers; ``false`` (default): temporary
                                  users made by swarmbinder, reached with the Binder token only
SWARMBINDER_HUB_AUTHENTICATOR     authenticator class when auth is enabled
SWARMBINDER_HUB_OAUTH_REDIRECT_URI with auth: swarmbinder's OAuth callback as browsers reach it
                                  (``https://binder.example.org/oauth_callback``; swarmbinder's
                                  ``oauth_redirect_uri``); required when auth is enabled
SWARMBINDER_HUB_OAUTH_CLIENT_ID   with auth: swarmbinder's OAuth client id (default
                                  ``service-swarmbinder``, swarmbinder's ``oauth_client_id``)
SWARMBINDER_HUB_SERVER_PREFIX     user server service names start ``{prefix}-`` (``jupyter``)
SWARMBINDER_HUB_LOG_MAX_SIZE      user servers' json-file log rotation: largest file (``10m``)
SWARMBINDER_HUB_LOG_MAX_FILE      and how many files are kept (``3``)
SWARMBINDER_HUB_CONSTRAINTS       comma-separated placement constraints for user servers
SWARMBINDER_HUB_PREFER_WAIT       seconds a user server's task may take to start on the node
                                  swarmbinder prefers before Swarm places it anywhere (``5``)
SWARMBINDER_HUB_CORS_ALLOW_ORIGIN Access-Control-Allow-Origin of user servers (empty: none)
SWARMBINDER_HUB_PROXY_API_URL     API URL of a configurable-http-proxy run as its own service
                                  (``http://proxy:8001``); empty (default): the hub starts its
                                  own proxy on port 8000
SWARMBINDER_HUB_PROXY_AUTH_TOKEN_FILE  that proxy's API token, as a file (a Swarm secret)
SWARMBINDER_HUB_REGISTRY_USER     with ..._REGISTRY_PASSWORD_FILE: credentials for the registry in
SWARMBINDER_HUB_REGISTRY_PASSWORD_FILE  the image prefix, sent with every user server's service
                                  so that any node can pull its image (empty: anonymous)

What a user server runs: without auth, a plain Jupyter server (``jupyter-lab``, else
``jupyter-notebook``, else ``jupyter-server``) whose only credential is the launch's token, as
BinderHub's does; it never calls the hub and holds no hub token. With auth,
``jupyterhub-singleuser`` with hub OAuth, as the user's named server needs. Either way the
spawner follows the task and then the server's port every 50-250 ms before it returns, so the
hub's own readiness probe (backoff with random jitter up to 5 s) answers on its first try.

Where a server starts: swarmbinder may name a node that already holds the image in the spawn
request (``prefer_node``, a Swarm node id). The task is then pinned there (``node.id==``, on
top of the configured constraints); if it is not running within ``PREFER_WAIT`` seconds, or
Swarm finds the node unsuitable at once (drained, down, full, outside the constraints), the
pin is dropped with a service update and Swarm places the task as usual: a preference never
fails a launch. It is honoured only in a spawn made with the ``swarmbinder`` service's own
token, so a user's request to the hub (with auth, users hold tokens) cannot pick a node.

Settings that a launch on Swarm needs and that are not negotiable: user servers join the
overlay network by their service name (``use_internal_ip``, ``dnsrr``: without IPVS a service's
virtual IP does not route), ``cmd`` is explicit (otherwise the spawner inspects the image on the
manager, where an image that lives only in the registry does not exist), and user-server tasks
are never restarted (a server that dies is stopped and culled rather than replaced with a fresh
one behind the user's back).
"""

# ruff: noqa: F821  (``c`` is provided by JupyterHub when it loads this file)

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from pprint import pformat

import aiohttp
from docker.types import DriverConfig, RestartPolicy
from dockerspawner import SwarmSpawner
from tornado import web

#: Labels on every user-server service; swarmbinder counts quotas and reaps orphans by them.
LABEL_ROLE = "swarmbinder.role"
ROLE_USER_SERVER = "user-server"
LABEL_HUB = "swarmbinder.hub"
LABEL_USER = "swarmbinder.user"
LABEL_SERVER_NAME = "swarmbinder.server-name"
LABEL_IMAGE = "swarmbinder.image"
LABEL_REPO_URL = "swarmbinder.repo-url"
LABEL_SPEC = "swarmbinder.spec"
#: Swarm keeps label values of any length, but nothing good comes of a megabyte of user input.
MAX_LABEL_VALUE = 1024

#: user_options keys passed on as environment variables, as BinderHub's spawner does.
BINDER_ENV_OPTIONS = (
    "binder_ref_url",
    "binder_launch_host",
    "binder_persistent_request",
    "binder_request",
    "binder_client_ip",
)


#: The spawn option naming the node swarmbinder prefers (swarmbinder.launcher spells it too).
PREFER_NODE_OPTION = "prefer_node"
#: The service whose spawns may name a node (the name in c.JupyterHub.services below).
BINDER_SERVICE = "swarmbinder"
#: A Swarm node id: 25 lower-case letters and digits (anything else is not one).
NODE_ID = re.compile(r"[a-z0-9]{1,64}\Z")
#: Task states before the task is on its node: a task still in one of these when the wait on
#: the preferred node is over did not get there (the node is gone, full or drained).
TASK_NOT_ON_NODE = frozenset({"new", "allocated", "pending", "assigned", "accepted"})

#: The named server of a warm pool's temporary user (swarmbinder.labels.SERVER_NAME_POOL).
POOL_SERVER_NAME = "pool"
#: Task states on the way to ``running`` (Swarm's order); any other state is the end.
TASK_STARTING = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
#: A launch waits on Swarm and then on the server's port; every poll that misses costs the
#: user the rest of its interval, so the first are 50 ms apart and none over 250 ms.
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.25
#: Without auth: the first of these the image has serves the user (``sh`` picks; the server
#: gets its token from JUPYTER_TOKEN, read by every Jupyter server since notebook 5).
PLAIN_SERVERS = ("jupyter-lab", "jupyter-notebook", "jupyter-server")
PLAIN_SERVER_CMD = [
    "sh",
    "-c",
    'for exe in {}; do command -v "$exe" >/dev/null && exec "$exe" "$@"; done; '
    'echo "no Jupyter server in this image: install jupyterlab or notebook" >&2; exit 127'.format(
        " ".join(PLAIN_SERVERS)
    ),
    "jupyter-server-launcher",
]
#: What a plain server keeps of the hub's environment: where it is served, whose it is. The
#: hub's API URL and token and the OAuth settings stay out: the server never calls the hub.
PLAIN_SERVER_HUB_ENV = frozenset(
    {
        "JUPYTERHUB_BASE_URL",
        "JUPYTERHUB_SERVICE_PREFIX",
        "JUPYTERHUB_USER",
        "JUPYTERHUB_SERVER_NAME",
        "JUPYTERHUB_HOST",
    }
)


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"SWARMBINDER_HUB_{name}", default).strip()


def env_flag(name: str, default: bool) -> bool:
    value = env(name, "true" if default else "false").lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    sys.exit(f"SWARMBINDER_HUB_{name}={value!r}: expected true or false")


def env_number(name: str, default: str) -> float | None:
    value = env(name, default)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        sys.exit(f"SWARMBINDER_HUB_{name}={value!r}: expected a number")


def read_api_token() -> str:
    path = env("API_TOKEN_FILE")
    token = Path(path).read_text().strip() if path else env("API_TOKEN")
    if len(token) < 8:
        sys.exit(
            "SWARMBINDER_HUB_API_TOKEN (or SWARMBINDER_HUB_API_TOKEN_FILE) must hold the "
            "swarmbinder service's API token, at least 8 characters"
        )
    return token


API_TOKEN = read_api_token()
IMAGE_PREFIX = env("IMAGE_PREFIX")
if not IMAGE_PREFIX or "*" in IMAGE_PREFIX or "/" not in IMAGE_PREFIX:
    # A prefix without a registry part would let any Docker Hub image run on the swarm.
    sys.exit(
        "SWARMBINDER_HUB_IMAGE_PREFIX must be the registry prefix of built images, "
        "e.g. registry.example.org:5000/binder- (wildcards are refused)"
    )
NETWORK = env("NETWORK", "swarmbinder")
CONNECT_HOST = env("CONNECT_HOST", "jupyterhub")
HUB_ID = env("ID", CONNECT_HOST)
DATA_DIR = Path(env("DATA_DIR", "/srv/jupyterhub/data"))
AUTH_ENABLED = env_flag("AUTH_ENABLED", False)
PREFER_WAIT_SECONDS = env_number("PREFER_WAIT", "5") or 0.0
CONSTRAINTS = [item.strip() for item in env("CONSTRAINTS").split(",") if item.strip()]
CORS_ALLOW_ORIGIN = env("CORS_ALLOW_ORIGIN")


def use_registry_credentials() -> None:
    """Give the spawner's Docker client the registry's credentials: docker-py sends them with
    each service it creates, and every node's engine pulls the image with them (an engine
    never reads credentials of its own for Swarm tasks)."""
    password_file = env("REGISTRY_PASSWORD_FILE")
    if not password_file:
        return
    import base64
    import json
    import tempfile

    user = env("REGISTRY_USER", "binder")
    password = Path(password_file).read_text().strip()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config_dir = Path(tempfile.mkdtemp(prefix="docker-config-"))
    registry = IMAGE_PREFIX.split("/", 1)[0]
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    os.environ["DOCKER_CONFIG"] = str(config_dir)


use_registry_credentials()


def image_allowed(image: object) -> bool:
    return isinstance(image, str) and image.startswith(IMAGE_PREFIX) and len(image) < 512


def allowed_images(spawner: SwarmSpawner) -> list[str]:
    """Only the image asked for, and only when it is one of ours."""
    image = spawner.user_options.get("image")
    return [image] if image_allowed(image) else []


def _label_value(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text[:MAX_LABEL_VALUE]


class BinderSwarmSpawner(SwarmSpawner):
    """SwarmSpawner for Binder launches.

    - the image comes from ``user_options["image"]`` and must be under the image prefix;
    - ``user_options["token"]`` is the token the Binder client hands to the browser: without
      auth the plain server's token (JUPYTER_TOKEN); with auth, if given, the server's API
      token, which jupyterhub-singleuser lets in;
    - the service carries ``swarmbinder.*`` labels naming user, image, repository and spec;
    - without auth the server is a plain Jupyter server with that token (see the module's
      docstring), and start() returns only once the server answers.
    """

    #: without auth: the launch's token, the plain server's only credential
    server_token = ""
    #: the node this start pins its task to ("": none, or the pin was dropped)
    preferred_node = ""
    #: the pin was dropped: the task it made is being replaced
    preference_dropped = False

    async def start(self) -> object:
        options = self.user_options or {}
        image = options.get("image")
        if not image:
            raise web.HTTPError(400, "image required")
        if not image_allowed(image):
            raise web.HTTPError(
                400, f"Image {image} is not one this Binder built (not under {IMAGE_PREFIX})"
            )
        token = options.get("token")
        if not AUTH_ENABLED and not token:
            raise web.HTTPError(400, "token required")
        if token:
            if not isinstance(token, str) or len(token) < 16:
                raise web.HTTPError(400, "token must be a string of at least 16 characters")
        plain = self._plain()
        if not plain and token:
            self.api_token = token
        # Without auth the launch's token is the plain server's only, never a hub token: a
        # holder of the link can use the server and nothing of the hub's API.
        self.server_token = token if plain else ""
        self.cmd = PLAIN_SERVER_CMD if plain else ["jupyterhub-singleuser"]
        self.preferred_node = self._preferred_node(options)
        self.preference_dropped = False
        pin = [f"node.id=={self.preferred_node}"] if self.preferred_node else []
        self.extra_placement_spec = (
            {"constraints": [*CONSTRAINTS, *pin]} if CONSTRAINTS or pin else {}
        )
        self.extra_create_kwargs = {
            **self.extra_create_kwargs,
            "labels": {
                LABEL_ROLE: ROLE_USER_SERVER,
                LABEL_HUB: HUB_ID,
                LABEL_USER: self.user.name,
                LABEL_SERVER_NAME: self.name or "",
                LABEL_IMAGE: _label_value(image),
                LABEL_REPO_URL: _label_value(options.get("repo_url")),
                LABEL_SPEC: _label_value(options.get("provider_spec")),
            },
        }
        address = await super().start()
        await self._wait_for_http(*address)
        return address

    # -- a launch waits on Swarm and the server, tightly ---------------------------------

    async def docker(self, method: str, *args: object, **kwargs: object) -> object:
        result = await super().docker(method, *args, **kwargs)
        if method == "create_service":
            # SwarmSpawner looks for the new service's task at once and sleeps a whole second
            # when the orchestrator has not made it yet (it never has, that soon).
            await self._poll(self._has_task, self.start_timeout, "no task was created")
        return result

    async def start_object(self) -> None:
        """Wait for the task to run (SwarmSpawner polls 1 s, then 1.5 s, 2.25 s, ...); on a
        preferred node for PREFER_WAIT seconds at most, then wherever Swarm places it."""
        deadline = time.monotonic() + self.start_timeout
        if self.preferred_node and not await self._runs_on_preferred_node():
            await self._drop_preference()
        await self._poll(
            self._task_running, max(1.0, deadline - time.monotonic()), "its task did not start"
        )

    async def _has_task(self) -> bool:
        tasks = await super().docker("tasks", filters={"service": self.service_name})
        return bool(tasks)

    async def _current_task(self) -> dict[str, object] | None:
        """The service's newest task: after a dropped preference, its replacement."""
        tasks = await super().docker("tasks", filters={"service": self.service_name})
        if not tasks:
            if await self.get_object() is None:
                raise RuntimeError(f"Service {self.service_name} not found")
            return None
        newest: dict[str, object] = max(tasks, key=lambda t: t.get("CreatedAt", ""))
        return newest

    async def _task_running(self) -> bool:
        task = await self._current_task()
        if task is None:
            return False
        status = task["Status"]
        state = status["State"].lower()
        if state == "running":
            return True
        if state in TASK_STARTING:
            return False
        if self.preference_dropped and task.get("DesiredState") != "running":
            return False  # the pinned task going away; its replacement comes next
        raise RuntimeError(f"Service {self.service_name} not running: {pformat(status)}")

    async def _runs_on_preferred_node(self) -> bool:
        """Whether the pinned task runs within PREFER_WAIT seconds. False at once when Swarm
        says no node suits it (pending with an error: drained, down, full, constrained out),
        or when it has not reached the node when the time is up; a task on the node that is
        still preparing (pulling: the node lost the image) is waited for as anywhere else."""
        deadline = time.monotonic() + PREFER_WAIT_SECONDS
        wait = POLL_FIRST_SECONDS
        while True:
            task = await self._current_task()
            status = task["Status"] if task else {}
            state = str(status.get("State", "new")).lower()
            if state == "running":
                return True
            if state not in TASK_STARTING:
                return True  # failed: the usual wait reports it
            if state == "pending" and status.get("Err"):
                self.log.info("%s: %s", self.service_name, status["Err"])
                return False
            if time.monotonic() > deadline:
                return state not in TASK_NOT_ON_NODE
            await asyncio.sleep(wait)
            wait = min(wait * 1.5, POLL_MAX_SECONDS)

    async def _drop_preference(self) -> None:
        """Remove the pin with a service update: Swarm replaces the task, placed as usual."""
        pin = f"node.id=={self.preferred_node}"
        self.log.info(
            "%s did not start on preferred node %s; letting Swarm place it",
            self.service_name,
            self.preferred_node,
        )
        for attempt in range(3):
            service = await self.docker("inspect_service", self.service_name)
            template = service["Spec"]["TaskTemplate"]
            placement = dict(template.get("Placement") or {})
            placement["Constraints"] = [c for c in placement.get("Constraints") or [] if c != pin]
            template["Placement"] = placement
            try:
                await self.docker(
                    "update_service",
                    service["ID"],
                    service["Version"]["Index"],
                    task_template=template,
                    fetch_current_spec=True,
                )
                break
            except Exception as exc:  # docker.errors.APIError: "update out of sequence"
                if attempt == 2:
                    raise
                self.log.info("updating %s: %s; again", self.service_name, exc)
        self.preferred_node = ""
        self.preference_dropped = True

    def _preferred_node(self, options: dict[str, object]) -> str:
        """The node named in the spawn request, if swarmbinder made it and it is a node id."""
        node = options.get(PREFER_NODE_OPTION)
        if node is None or node == "":
            return ""
        requester = getattr(self.handler, "current_user", None)
        if getattr(requester, "kind", None) != "service" or (
            getattr(requester, "name", None) != BINDER_SERVICE
        ):
            self.log.warning(
                "%s: ignoring %s from %r: only swarmbinder picks nodes",
                self.service_name,
                PREFER_NODE_OPTION,
                getattr(requester, "name", requester),
            )
            return ""
        if not isinstance(node, str) or not NODE_ID.match(node):
            self.log.warning(
                "%s: %s is not a node id: %r", self.service_name, PREFER_NODE_OPTION, node
            )
            return ""
        return node

    async def _wait_for_http(self, host: str, port: int) -> None:
        """Until the server answers its API URL with anything below 500, as the hub's own
        probe wants, so that probe succeeds on its first try."""
        url = f"http://{host}:{port}{self.server.base_url}api"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def answers() -> bool:
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        return response.status < 500
                except (TimeoutError, aiohttp.ClientError, OSError):
                    return False

            await self._poll(answers, self.http_timeout, f"it did not answer on {url}")

    async def _poll(
        self, done: Callable[[], Awaitable[bool]], seconds: float, failure: str
    ) -> None:
        wait = POLL_FIRST_SECONDS
        deadline = time.monotonic() + seconds
        while not await done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Server {self.service_name} not started: {failure}")
            await asyncio.sleep(wait)
            wait = min(wait * 1.5, POLL_MAX_SECONDS)

    # -- what the server runs ----------------------------------------------------------

    def _plain(self) -> bool:
        """A plain Jupyter server: without auth, except a warm pool's server, whose token is
        minted by the hub when it is handed out (so it runs jupyterhub-singleuser)."""
        return not AUTH_ENABLED and self.name != POOL_SERVER_NAME

    def get_env(self) -> dict[str, str]:
        environment: dict[str, str] = super().get_env()
        if not AUTH_ENABLED and not self._plain():
            # The pool's client is sent to <server>/?token=<token>; JupyterHub 5 ignores
            # tokens in page URLs unless told otherwise.
            environment["JUPYTERHUB_ALLOW_TOKEN_IN_URL"] = "1"
        if self._plain():
            environment = {
                key: value
                for key, value in environment.items()
                if not key.startswith(("JUPYTERHUB_", "JPY_")) or key in PLAIN_SERVER_HUB_ENV
            }
            environment["JUPYTER_TOKEN"] = self.server_token
        options = self.user_options or {}
        if isinstance(options.get("repo_url"), str):
            environment["BINDER_REPO_URL"] = options["repo_url"]
        for key in BINDER_ENV_OPTIONS:
            if isinstance(options.get(key), str):
                environment[key.upper()] = options[key]
        return environment

    def get_args(self) -> list[str]:
        if not self._plain():
            args: list[str] = super().get_args()
        else:
            # The Binder client sends the browser to <server>/?token=<token>: the token is the
            # only way in (a plain server takes it from the URL and keeps it in a cookie
            # scoped to the server's path).
            args = [
                "--ip=0.0.0.0",
                f"--port={self.port}",
                f"--ServerApp.base_url={self.server.base_url}",
                "--ServerApp.trust_xheaders=True",
                *([f"--ServerApp.default_url={self.default_url}"] if self.default_url else []),
                *self.args,
            ]
        if CORS_ALLOW_ORIGIN:
            args.append(f"--ServerApp.allow_origin={CORS_ALLOW_ORIGIN}")
            if CORS_ALLOW_ORIGIN == "*":
                # allow_origin=* alone does not cover requests for single files
                args.append("--ServerApp.allow_origin_pat=.*")
        if self._plain():
            # notebook < 7 is not a jupyter_server application: it reads NotebookApp.*
            args += [a.replace("--ServerApp.", "--NotebookApp.") for a in args if "ServerApp." in a]
        return args


# --------------------------------------------------------------------------- hub

c.JupyterHub.base_url = env("BASE_URL", "/")
c.JupyterHub.ip = "0.0.0.0"
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = CONNECT_HOST
DATA_DIR.mkdir(parents=True, exist_ok=True)


def database_url() -> str:
    """The hub's database URL, with the password from its file when one is named (JupyterHub
    shows such a URL with the password redacted)."""
    url = env("DB_URL", f"sqlite:///{DATA_DIR / 'jupyterhub.sqlite'}")
    password_file = env("DB_PASSWORD_FILE")
    if not password_file:
        return url
    from sqlalchemy.engine import make_url

    password = Path(password_file).read_text().strip()
    if not password:
        sys.exit(f"SWARMBINDER_HUB_DB_PASSWORD_FILE={password_file} is empty")
    return make_url(url).set(password=password).render_as_string(hide_password=False)


c.JupyterHub.db_url = database_url()
c.JupyterHub.cookie_secret_file = str(DATA_DIR / "jupyterhub_cookie_secret")
# A hub restart (an update, a moved task) keeps users' servers: they are Swarm services, and
# the database on the volume still knows them.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True
c.JupyterHub.log_level = env("LOG_LEVEL", "INFO")

PROXY_API_URL = env("PROXY_API_URL")
if PROXY_API_URL:
    # The proxy is a service of its own (it keeps serving while the hub restarts); the hub
    # only tells it the routes, with the token both read from the same secret.
    token_file = env("PROXY_AUTH_TOKEN_FILE")
    proxy_token = Path(token_file).read_text().strip() if token_file else ""
    if len(proxy_token) < 8:
        sys.exit(
            "SWARMBINDER_HUB_PROXY_API_URL needs SWARMBINDER_HUB_PROXY_AUTH_TOKEN_FILE: a file "
            "holding the proxy's API token, at least 8 characters"
        )
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = PROXY_API_URL
    c.ConfigurableHTTPProxy.auth_token = proxy_token

if AUTH_ENABLED:
    authenticator = env("AUTHENTICATOR")
    if not authenticator or authenticator == "null":
        sys.exit("SWARMBINDER_HUB_AUTH_ENABLED=true needs SWARMBINDER_HUB_AUTHENTICATOR")
    c.JupyterHub.authenticator_class = authenticator
else:
    # Nobody logs in: swarmbinder makes a temporary user per launch through the API, and the
    # user reaches the server with the token it was started with.
    c.JupyterHub.authenticator_class = "null"

# --------------------------------------------------------------------------- spawner

c.JupyterHub.spawner_class = BinderSwarmSpawner
c.SwarmSpawner.network_name = NETWORK
c.SwarmSpawner.use_internal_ip = True
c.SwarmSpawner.extra_endpoint_spec = {"mode": "dnsrr"}
# (start() picks per server: see BinderSwarmSpawner._plain)
c.SwarmSpawner.cmd = ["jupyterhub-singleuser"] if AUTH_ENABLED else PLAIN_SERVER_CMD
c.SwarmSpawner.allowed_images = allowed_images
c.SwarmSpawner.prefix = env("SERVER_PREFIX", "jupyter")
c.SwarmSpawner.extra_task_spec = {
    "restart_policy": RestartPolicy(condition="none"),
    # A repository's code can print without end: rotate, or it fills the node's disk.
    "log_driver": DriverConfig(
        "json-file",
        {"max-size": env("LOG_MAX_SIZE", "10m"), "max-file": env("LOG_MAX_FILE", "3")},
    ),
}
if CONSTRAINTS:  # (start() adds the preferred node's pin per server)
    c.SwarmSpawner.extra_placement_spec = {"constraints": CONSTRAINTS}
if env("MEM_LIMIT", "2G"):
    c.SwarmSpawner.mem_limit = env("MEM_LIMIT", "2G")
if env("MEM_GUARANTEE"):
    c.SwarmSpawner.mem_guarantee = env("MEM_GUARANTEE")
cpu_limit = env_number("CPU_LIMIT", "1")
if cpu_limit:
    c.SwarmSpawner.cpu_limit = cpu_limit
cpu_guarantee = env_number("CPU_GUARANTEE", "")
if cpu_guarantee:
    c.SwarmSpawner.cpu_guarantee = cpu_guarantee
c.SwarmSpawner.start_timeout = int(env_number("START_TIMEOUT", "120") or 120)
c.SwarmSpawner.http_timeout = int(env_number("HTTP_TIMEOUT", "60") or 60)
c.SwarmSpawner.remove = True

# --------------------------------------------------------------------------- services

cull_timeout = int(env_number("CULL_TIMEOUT", "3600") or 3600)
cull_every = int(env_number("CULL_EVERY", "600") or 600)
cull_max_age = int(env_number("CULL_MAX_AGE", "0") or 0)
culler = [
    sys.executable,
    "-m",
    "jupyterhub_idle_culler",
    f"--timeout={cull_timeout}",
    f"--cull-every={cull_every}",
    f"--max-age={cull_max_age}",
    "--remove-named-servers=true",
]
if not AUTH_ENABLED:
    # Temporary users exist for one launch: once their server is culled they go too.
    culler.append("--cull-users=true")

swarmbinder_service: dict[str, object] = {"name": "swarmbinder", "api_token": API_TOKEN}
if AUTH_ENABLED:
    # Users log in to swarmbinder through the hub (OAuth; the client secret is the service's
    # api_token). Binder is this hub's own front end, so the hub does not ask users to confirm
    # that it may identify them.
    redirect_uri = env("OAUTH_REDIRECT_URI")
    if not redirect_uri:
        sys.exit("SWARMBINDER_HUB_AUTH_ENABLED=true needs SWARMBINDER_HUB_OAUTH_REDIRECT_URI")
    swarmbinder_service.update(
        oauth_client_id=env("OAUTH_CLIENT_ID", "service-swarmbinder"),
        oauth_redirect_uri=redirect_uri,
        oauth_no_confirm=True,
    )

c.JupyterHub.services = [
    swarmbinder_service,
    {"name": "idle-culler", "command": culler},
]
c.JupyterHub.load_roles = [
    {
        "name": "swarmbinder",
        "services": ["swarmbinder"],
        "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "access:servers"],
    },
    *(
        # A logged-in user may log in to swarmbinder (the hub refuses OAuth to a service
        # its users may not access); "self" is what the default user role holds.
        [{"name": "user", "scopes": ["self", "access:services!service=swarmbinder"]}]
        if AUTH_ENABLED
        else []
    ),
    {
        "name": "idle-culler",
        "services": ["idle-culler"],
        "scopes": [
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers",
            *(["admin:users"] if not AUTH_ENABLED else []),
        ],
    },
]
