"""A corpus of hostile repositories, built for real: the real Binder app (token issuer, build
manager, store, admin API) on the node's bridge address, a Distribution registry with
``auth: token`` trusting it, and repo2docker in the builder image through Swarm.

* Dependency files that link to what a builder holds (its registry login, its environment,
  the engine's socket, ``/etc/shadow``, ``/run/secrets/``), through ``..``, a linked directory
  and a chain of links. repo2docker 2024.3.0 reads several of them and quotes ``apt.txt``'s
  content in its error; none of it may show anywhere Binder speaks: events, failure reason,
  stored log, admin API, Binder's own log.
* ``apt.txt`` of one line of 5 MB and of 100 MB, which repo2docker quotes whole, twice.
* A Dockerfile whose RUN step tries the engine, Binder's admin API, the hub's API, the
  registry and the realm, and a cloud metadata service; submodules that make the builder (on
  the node's network) fetch from Binder and from the metadata service.

Every build ends ``failed`` with a clear reason (those that would push fail on purpose at the
end: pushing the 700 MB base to a fresh registry would take half a minute), and nothing is
gained: a build's login reaches only its own repository and is refused once its build ended.

Everything runs once per module, builds concurrently; the tests then read the results.
The metadata stand-in is routed off the node into a network namespace and the node rules of
docs/security.md are installed for the builds; both are removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import resource
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from build_fixtures import FixtureRegistry, token_registry
from hostile_support import (
    METADATA_ADDRESS,
    PROBE_SCRIPT,
    Entry,
    Filler,
    Link,
    Submodule,
    bridge_gateway,
    free_port_on,
    hostile_repo,
    metadata_stand_in,
    node_rule,
    push_with,
    tiny_image,
)

from swarmbinder.app import create_app
from swarmbinder.buildjob import (
    BUILD_AUTH_PREFIX,
    BUILDER_DOCKER_CONFIG,
    BuildRequest,
    docker_config_json,
)
from swarmbinder.buildlogs import read_build_log
from swarmbinder.builds import BuildManager
from swarmbinder.buildwatch import Build
from swarmbinder.config import load_config
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.keys import BUILDS, STORE, SWARM
from swarmbinder.labels import KIND_BUILD
from swarmbinder.labels import LABEL_KIND as KIND_LABEL
from swarmbinder.loglines import MAX_LOG_LINE
from swarmbinder.registrytokens import TOKEN_PATH, BuildCredential, make_signing_pair
from swarmbinder.scrub import DEFAULT_SCRUBBER, REPLACEMENT, ScrubFilter
from swarmbinder.swarm import SwarmClient

pytestmark = pytest.mark.swarm

RUN = uuid.uuid4().hex[:8]
#: Where the builder finds its registry login (the build's own, with the token issuer).
LOGIN = f"{BUILDER_DOCKER_CONFIG}/config.json"
#: The same file reached through ``..`` from repo2docker's clone in /tmp/repo2docker<random>/.
LOGIN_UP = "../../../../" + LOGIN.lstrip("/")
BIG = 100 << 20
#: A build of the corpus must end within this (the slowest, the 100 MB one, takes ~30 s).
BUILD_WITHIN = 150.0
#: A Dockerfile tail for cases that would build: stop before the push (see the docstring).
STOP = 'RUN echo "hostile test repository: stopping before the push" && exit 3\n'


@dataclass(frozen=True)
class Case:
    """A repository of the corpus and what its failure reason must say (``[secret]`` where
    repo2docker quoted the login), beyond the rules every case keeps."""

    entries: Mapping[str, Entry]
    says: tuple[str, ...] = ()
    #: repo2docker quotes the build's login: the raw service log must hold it (the proof that
    #: the case is real), and Binder's answers ``[secret]`` in its place.
    quotes_login: bool = False


#: The auth's base64 keeps the characters of ``username:`` and of the padding.
QUOTED_LOGIN = (REPLACEMENT, '"}}} in apt.txt')


def link_cases(singleuser: str) -> dict[str, Case]:
    """The symlink part of the corpus. Outcomes in comments are repo2docker 2024.3.0's on the
    offline test ground ("pull": the buildpack's base, buildpack-deps, cannot be pulled)."""
    dockerfile = f"FROM {singleuser}\n"
    return {
        # apt.txt is read and each line checked; a line that is no package name is quoted.
        "apt-login": Case({"apt.txt": Link(LOGIN)}, QUOTED_LOGIN, quotes_login=True),
        "binder-apt-login": Case({"binder/apt.txt": Link(LOGIN)}, QUOTED_LOGIN, True),
        "dotbinder-apt-login": Case({".binder/apt.txt": Link(LOGIN)}, QUOTED_LOGIN, True),
        "apt-login-dotdot": Case({"apt.txt": Link(LOGIN_UP)}, QUOTED_LOGIN, True),
        "apt-login-chain": Case(
            {"apt.txt": Link("first"), "first": Link("second"), "second": Link(LOGIN)},
            QUOTED_LOGIN,
            True,
        ),
        "apt-login-proc-root": Case(
            {"apt.txt": Link("/proc/self/root" + LOGIN)}, QUOTED_LOGIN, True
        ),
        # The builder's environment, NUL-separated: one line, quoted whole.
        "apt-environ": Case(
            {"apt.txt": Link("/proc/self/environ")},
            ("Found invalid package name PATH=", "DOCKER_CONFIG=" + BUILDER_DOCKER_CONFIG),
        ),
        # Lines starting with a-z, 0-9, '.', '+' or '-' pass the check; the first other one
        # is quoted (Debian's _apt line: no password hash in the builder image).
        "apt-shadow": Case({"apt.txt": Link("/etc/shadow")}, ("invalid package name _apt:",)),
        "apt-docker-socket": Case(
            {"apt.txt": Link("/var/run/docker.sock")}, ("No such device or address",)
        ),
        # Not there: as if there were no apt.txt (pull).
        "apt-run-secrets": Case({"apt.txt": Link("/run/secrets/config.json")}),
        # A linked directory: repo2docker looks for binder/apt.txt etc. in the login's
        # directory, finds none of its file names there, and reads nothing (pull).
        "binder-dir-login": Case({"binder": Link(BUILDER_DOCKER_CONFIG), "README.md": "x\n"}),
        # Read, never quoted (pull).
        "binder-requirements-login": Case({"binder/requirements.txt": Link(LOGIN)}),
        "dotbinder-environment-login": Case({".binder/environment.yml": Link(LOGIN)}),
        "runtime-login": Case({"runtime.txt": Link(LOGIN)}),
        "require-login": Case({"REQUIRE": Link(LOGIN)}),
        # Only looked for, never read, in the builder (pull).
        "dotbinder-install-r-login": Case({".binder/install.R": Link(LOGIN)}),
        "binder-postbuild-login": Case({"binder/postBuild": Link(LOGIN)}),
        "dotbinder-start-login": Case({".binder/start": Link(LOGIN)}),
        # Parse errors that name a position, not the content.
        "binder-project-toml-login": Case(
            {"binder/Project.toml": Link(LOGIN)}, ("Found invalid character in key name",)
        ),
        "project-toml-shadow": Case(
            {"Project.toml": Link("/etc/shadow")}, ("Found invalid character in key name: ':'",)
        ),
        "environment-environ": Case(
            {"environment.yml": Link("/proc/self/environ")}, ("unacceptable character #x0000",)
        ),
        # The daemon resolves links in the build context inside the context: never the login.
        "dockerfile-login": Case(
            {"Dockerfile": Link(LOGIN)}, ("Cannot locate specified Dockerfile",)
        ),
        "dockerfile-copies-login": Case(
            {"Dockerfile": dockerfile + "COPY login /tmp/login\n" + STOP, "login": Link(LOGIN)},
            ("COPY failed",),
        ),
        # With a Dockerfile, apt.txt is not read at all; .dockerignore is read, not quoted.
        "dockerfile-with-apt-login": Case(
            {"Dockerfile": dockerfile + STOP, "apt.txt": Link(LOGIN)}, ("non-zero code: 3",)
        ),
        "dockerignore-login": Case(
            {"Dockerfile": dockerfile + "COPY . /tmp/repo\n" + STOP, ".dockerignore": Link(LOGIN)},
            ("non-zero code: 3",),
        ),
    }


def big_case(size: int) -> Case:
    # One line that is no package name: repo2docker quotes it whole, in its message and again
    # in its traceback. 5 MB of it reach Binder before the build's end is seen; of 100 MB the
    # engine has sent a part when the build ends.
    return Case({"apt.txt": Filler(size, b"X" * 65536)})


@dataclass(frozen=True)
class Ports:
    gateway: str
    binder: int
    gate: int
    hub: int
    registry: int


def probe_case(singleuser: str, ports: Ports) -> Case:
    settings = {
        "gateway": ports.gateway,
        "binder_port": ports.binder,
        "gate_port": ports.gate,
        "hub_port": ports.hub,
        "registry_port": ports.registry,
        "other_repository": f"sbtest-hostile-{RUN}-other",
        "run": RUN,
    }
    dockerfile = (
        f"FROM {singleuser}\n"
        "COPY probe.py /tmp/probe.py\n"
        f"RUN python3 /tmp/probe.py '{json.dumps(settings)}'\n" + STOP
    )
    return Case({"Dockerfile": dockerfile, "probe.py": PROBE_SCRIPT}, ("non-zero code: 3",))


def submodule_case(singleuser: str, ports: Ports) -> Case:
    # The builder runs on the node's network (build_network: host): its git reaches what the
    # node reaches, loopback and the bridge address included.
    return Case(
        {
            "Dockerfile": f"FROM {singleuser}\n" + STOP,
            "a-admin": Submodule(f"http://{ports.gateway}:{ports.binder}/api/admin/builds.git"),
            "b-metadata": Submodule(f"http://{METADATA_ADDRESS}/latest/meta-data/submodule.git"),
        },
        ("submodule",),
    )


# -- running the corpus ----------------------------------------------------------------------


@dataclass
class Outcome:
    status: str
    reason: str
    events: list[BuildEvent]
    seconds: float
    credential: BuildCredential | None
    stored: list[str] = field(default_factory=list)
    stored_reason: str = ""
    admin: str = ""
    #: The builder's own log as ``docker service logs`` shows it (unscrubbed: the engine's).
    raw_log: str = field(default="", repr=False)

    def binder_says(self) -> str:
        """Everything Binder said about this build."""
        return "\n".join(
            [self.reason, self.stored_reason, self.admin, *self.stored]
            + [e.message for e in self.events]
        )


@dataclass
class Corpus:
    cases: dict[str, Case]
    outcomes: dict[str, Outcome]
    #: Secrets of the process: the registry operator's password, the admin token, the key.
    process_secrets: list[str]
    #: Binder's own log, as a scrubbing handler writes it (as ``swarmbinder serve`` does).
    binder_log: str
    admin_list: str
    probes: dict[str, str]
    #: A live build's login: (pushed, docker's words) to another repository and to its own,
    #: and the realm's grants for each.
    scope: dict[str, Any]
    realm_after: dict[str, int]
    push_after: tuple[bool, str]
    controls: dict[str, str]
    stand_in: list[str]
    logins_left: list[str]
    rss_growth_mb: float
    registry_host: str = ""
    metadata_marker: str = ""

    def secrets_of(self, outcome: Outcome) -> list[str]:
        found = list(self.process_secrets)
        credential = outcome.credential
        if credential is not None:
            pair = f"{credential.username}:{credential.password}"
            config = docker_config_json(
                [self.registry_host], credential.username, credential.password
            )
            found += [
                credential.password,
                base64.b64encode(pair.encode()).decode(),
                base64.b64encode(config).decode(),
            ]
        return found


def _request(case: str, url: str, sha: str, image_prefix: str) -> BuildRequest:
    return BuildRequest(
        provider="git",
        spec=f"{url}/{sha}",
        repo_url=url,
        ref=sha,
        build_slug=f"sbhostile-{RUN}-{case}",
        image=f"{image_prefix}{case}:{sha}",
    )


def _grants(reply: dict[str, Any]) -> list[str]:
    payload = reply["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return [f"{a['name']}:{','.join(a['actions'])}" for a in claims.get("access", [])]


class _Gate:
    """``GET /open``: 503 until the test opens it; the probe's RUN step waits on it, which
    keeps its build (and its login) alive while the test tries that login."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.opened.is_set() else 503)


@contextlib.asynccontextmanager
async def _serving(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


@dataclass
class _Setup:
    ports: Ports
    registry: FixtureRegistry
    config: dict[str, Any]
    repos: dict[str, tuple[str, str]]
    tiny: str


async def _run_corpus(setup: _Setup, cases: dict[str, Case]) -> Corpus:
    ports, registry = setup.ports, setup.registry
    image_prefix = setup.config["image_prefix"]
    realm = f"http://{ports.gateway}:{ports.binder}/{TOKEN_PATH}"
    admin_headers = {"Authorization": f"Bearer {setup.config['admin_token']}"}
    gate = _Gate()
    gate_app = web.Application()
    gate_app.router.add_get("/open", gate.handle)
    scope: dict[str, Any] = {}
    probes: dict[str, str] = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        app = create_app(load_config(env={}, overrides=setup.config))
        await stack.enter_async_context(_serving(app, ports.gateway, ports.binder))
        await stack.enter_async_context(_serving(gate_app, ports.gateway, ports.gate))
        builds: BuildManager = app[BUILDS]
        swarm: SwarmClient = app[SWARM]

        async def token(login: tuple[str, str] | None, repository: str) -> tuple[int, Any]:
            headers = {}
            if login is not None:
                basic = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            params = {
                "service": "swarmbinder-registry",
                "scope": f"repository:{repository}:push,pull",
            }
            async with session.get(realm, params=params, headers=headers) as reply:
                return reply.status, await reply.json() if reply.status == 200 else None

        async def try_live_login(build: Build) -> None:
            """While the probe build waits at the gate: what its login may do."""
            credential = build.credential
            assert credential is not None
            login = (credential.username, credential.password)
            other = f"sbtest-hostile-{RUN}-other"
            _, own_grant = await token(login, credential.repository)
            _, other_grant = await token(login, other)
            scope["own_grant"] = _grants(own_grant)
            scope["other_grant"] = _grants(other_grant)
            scope["push_other"] = await asyncio.to_thread(
                push_with, registry.host, setup.tiny, other, login
            )
            scope["push_own"] = await asyncio.to_thread(
                push_with, registry.host, setup.tiny, credential.repository, login
            )
            scope["alive_after"] = build.done.is_set() is False
            gate.opened.set()

        async def watch(name: str) -> tuple[str, Build, list[BuildEvent], float]:
            url, sha = setup.repos[name]
            begin = time.monotonic()
            build = await builds.request(_request(name, url, sha, image_prefix))
            events: list[BuildEvent] = []
            trying: asyncio.Task[None] | None = None
            async with asyncio.timeout(BUILD_WITHIN):
                async for event in build.events():
                    events.append(event)
                    for line in event.message.splitlines():
                        if line.startswith("PROBE "):
                            _, probe, outcome = (line.split(" ", 2) + [""])[:3]
                            probes[probe] = outcome
                            if probe == "done" and trying is None:
                                trying = asyncio.create_task(try_live_login(build))
            if trying is not None:
                await trying
            return name, build, events, time.monotonic() - begin

        watched = await asyncio.gather(*(watch(name) for name in cases))
        outcomes: dict[str, Outcome] = {}
        for name, build, events, seconds in watched:
            outcomes[name] = Outcome(
                build.status.value, build.reason, events, seconds, build.credential
            )

        # What is kept and what the admin API answers, once the store has every final record.
        store = app[STORE]
        for name, build, _, _ in watched:
            async with asyncio.timeout(30):
                while True:
                    persisted = await read_build_log(store, service_name=build.name)
                    if persisted is not None and persisted.record.finished_at is not None:
                        break
                    await asyncio.sleep(0.2)
            assert persisted is not None
            outcome = outcomes[name]
            outcome.stored, outcome.stored_reason = persisted.lines, persisted.record.reason
            admin_url = f"http://{ports.gateway}:{ports.binder}/api/admin/builds/{build.name}"
            async with session.get(admin_url, headers=admin_headers) as reply:
                assert reply.status == 200, await reply.text()
                outcome.admin = await reply.text()
            if cases[name].quotes_login:
                outcome.raw_log = "\n".join(await swarm.read_logs(build.name, max_seconds=10))
        list_url = f"http://{ports.gateway}:{ports.binder}/api/admin/builds"
        async with session.get(list_url, headers=admin_headers) as reply:
            admin_list = await reply.text()

        realm_after = {}
        for name, outcome in outcomes.items():
            if outcome.credential is not None:
                c = outcome.credential
                realm_after[name] = (await token((c.username, c.password), c.repository))[0]
        leaked = outcomes["apt-login"].credential
        assert leaked is not None
        push_after = await asyncio.to_thread(
            push_with,
            registry.host,
            setup.tiny,
            leaked.repository,
            (leaked.username, leaked.password),
        )
        await builds.cleanup()
        logins_left = [
            s.name
            for s in await swarm.list_secrets({})
            if s.name.startswith(BUILD_AUTH_PREFIX)
            and any(s.labels.get("swarmbinder.build") == b.name for _, b, _, _ in watched)
        ]

    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Corpus(
        cases=cases,
        outcomes=outcomes,
        process_secrets=[],
        binder_log="",
        admin_list=admin_list,
        probes=probes,
        scope=scope,
        realm_after=realm_after,
        push_after=push_after,
        controls={},
        stand_in=[],
        logins_left=logins_left,
        rss_growth_mb=(rss_after - rss_before) / 1024,
    )


async def _sweep_builds(docker_host: str) -> None:
    """Remove this run's build services (and their logins) should the run have stopped
    before its own cleanup."""
    async with SwarmClient.connect(docker_host) as swarm:
        for service in await swarm.list_services({KIND_LABEL: KIND_BUILD}):
            if f"sbhostile-{RUN}-" in service.labels.get("swarmbinder.build-slug", ""):
                await swarm.remove_service(service.name)
                for secret in await swarm.list_secrets({"swarmbinder.build": service.name}):
                    with contextlib.suppress(Exception):
                        await swarm.remove_secret(secret.id)


@contextlib.contextmanager
def _binder_log() -> Iterator[io.StringIO]:
    """Binder's log as ``swarmbinder serve`` writes it: every record, through the scrubber."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setLevel(logging.DEBUG)
    handler.addFilter(ScrubFilter(DEFAULT_SCRUBBER))
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield text
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def corpus(
    testground: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    singleuser = testground["images"]["singleuser"]
    gateway = bridge_gateway()
    binder_port = free_port_on(gateway)
    pair = make_signing_pair()
    realm = f"http://{gateway}:{binder_port}/{TOKEN_PATH}"
    operator_password = "operator-" + uuid.uuid4().hex
    admin_token = "admin-" + uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(token_registry(testground, pair.certificate_pem, realm))
        ports = Ports(
            gateway,
            binder_port,
            free_port_on(gateway),
            int(testground["hub_url"].rstrip("/").rsplit(":", 1)[1]),
            int(registry.host.rsplit(":", 1)[1]),
        )
        cases = link_cases(singleuser) | {
            "apt-100mb": big_case(BIG),
            "apt-5mb": big_case(5 << 20),
            "probe": probe_case(singleuser, ports),
            "submodules": submodule_case(singleuser, ports),
        }
        repos = {}
        for name, case in cases.items():
            repo = stack.enter_context(hostile_repo(testground, case.entries, f"sbhostile-{name}"))
            repos[name] = (repo.url, repo.sha)
        tiny = stack.enter_context(tiny_image())
        stand_in = stack.enter_context(metadata_stand_in(testground["state_dir"], RUN))
        controls = {
            "node-before": stand_in.fetch_from_node("/control-node"),
            "container-before": stand_in.fetch_from_container(singleuser, "/control-container"),
        }
        setup = _Setup(
            ports=ports,
            registry=registry,
            config={
                "image_prefix": f"{registry.host}/sbtest-hostile-{RUN}-",
                "registry_url": registry.url,
                "registry_username": "binder",
                "registry_password": operator_password,
                "registry_token_key": pair.key_pem.decode(),
                "registry_token_certificate": pair.certificate_pem.decode(),
                "docker_host": testground["docker_host"],
                "build_image": testground["images"]["builder"],
                "store_path": str(tmp_path_factory.mktemp("hostile") / "store.sqlite"),
                "admin_token": admin_token,
                "enable_api_only_mode": True,
                "build_keep_failed_for": 0,
                "build_cleanup_interval": 3600,
                "concurrent_build_limit": 0,
            },
            repos=repos,
            tiny=tiny,
        )
        # docs/security.md's node rules, for the builds' duration. OUTPUT gets REJECT rather
        # than DROP so that the builder's git fails at once instead of after TCP's timeout.
        with (
            node_rule("DOCKER-USER", METADATA_ADDRESS, "DROP", RUN),
            node_rule("OUTPUT", METADATA_ADDRESS, "REJECT", RUN),
            _binder_log() as binder_log,
        ):
            try:
                result = asyncio.run(_run_corpus(setup, cases))
            finally:
                asyncio.run(_sweep_builds(testground["docker_host"]))
            controls["node-ruled"] = stand_in.fetch_from_node("/control-node-ruled")
            controls["container-ruled"] = stand_in.fetch_from_container(
                singleuser, "/control-container-ruled"
            )
        result.controls = controls
        result.registry_host = registry.host
        result.metadata_marker = stand_in.marker
        result.stand_in = stand_in.requests()
        result.binder_log = binder_log.getvalue()
        pem_lines = [ln for ln in pair.key_pem.decode().splitlines() if not ln.startswith("-")]
        result.process_secrets = [operator_password, admin_token, *pem_lines]
        yield result


# -- the tests -------------------------------------------------------------------------------

CASES = [*link_cases("base"), "apt-100mb", "apt-5mb", "probe", "submodules"]
#: Larger than any line a build should ever need; a quoted 100 MB file must not get through.
MAX_MESSAGE = 1 << 20
#: What the Swarm adapter keeps of one log line, with its note of what it cut.
MAX_LINE = MAX_LOG_LINE + 100


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_repository_fails_clearly_and_says_no_secret(corpus: Corpus, name: str) -> None:
    outcome, case = corpus.outcomes[name], corpus.cases[name]
    final = outcome.events[-1]
    assert outcome.status == "failed", outcome.reason
    assert final.phase is Phase.FAILED and outcome.reason and outcome.reason in final.message
    for fragment in case.says:
        assert fragment in outcome.reason
    assert outcome.stored_reason == outcome.reason
    assert max(len(e.message) for e in outcome.events) < MAX_MESSAGE
    assert max((len(line) for line in outcome.stored), default=0) < MAX_MESSAGE
    said = outcome.binder_says()
    for other in corpus.outcomes.values():  # its own login, and every other build's
        for secret in corpus.secrets_of(other):
            assert secret not in said
    if case.quotes_login:
        # The case is real: the engine's own log of the builder holds the live login...
        assert outcome.credential is not None
        auth = f"{outcome.credential.username}:{outcome.credential.password}"
        assert base64.b64encode(auth.encode()).decode() in outcome.raw_log
        # ... and where Binder says it, it says [secret].
        for text in (outcome.reason, outcome.admin, "\n".join(outcome.stored)):
            assert REPLACEMENT in text


def test_binders_own_log_and_build_list_hold_no_secret(corpus: Corpus) -> None:
    for outcome in corpus.outcomes.values():
        for secret in corpus.secrets_of(outcome):
            assert secret not in corpus.binder_log
            assert secret not in corpus.admin_list


def test_a_huge_quoted_line_is_cut_and_costs_binder_little(corpus: Corpus) -> None:
    # 5 MB: the quote reached Binder whole (a 5 MB event, stored line and failure reason,
    # the event loop held for seconds) until the Swarm adapter cut long lines.
    five = corpus.outcomes["apt-5mb"]
    assert any("[log line cut: " in line for line in five.stored), (
        five.reason[:300],
        [line[:200] for line in five.stored[-8:]],
        len(five.stored),
    )
    assert len(five.reason) < 4 * MAX_LINE
    # 100 MB (200 MB of log): the build ends long before the engine has sent it all.
    hundred = corpus.outcomes["apt-100mb"]
    assert hundred.seconds < 90, hundred.seconds
    for outcome in (five, hundred):
        assert sum(len(line) for line in outcome.stored) < 4 * MAX_LINE
    assert corpus.rss_growth_mb < 150, corpus.rss_growth_mb


def test_a_live_build_login_reaches_its_own_repository_only(corpus: Corpus) -> None:
    scope = corpus.scope
    credential = corpus.outcomes["probe"].credential
    assert credential is not None and scope["alive_after"]
    assert scope["own_grant"] == [f"{credential.repository}:pull,push"]
    assert scope["other_grant"] == []
    pushed, said = scope["push_other"]
    assert not pushed and "denied" in said, said
    pushed, said = scope["push_own"]
    assert pushed, said


def test_every_build_login_ends_with_its_build(corpus: Corpus) -> None:
    assert set(corpus.realm_after) == set(CASES)
    assert set(corpus.realm_after.values()) == {401}
    pushed, said = corpus.push_after
    assert not pushed and "unauthorized" in said.lower(), said
    assert corpus.logins_left == []


def test_a_run_step_gains_nothing(corpus: Corpus) -> None:
    probes = corpus.probes
    assert probes["done"] == RUN and probes["released"] == RUN
    # The engine: no socket in a build container, no TCP port on the node.
    assert probes["docker-socket-file"] == "absent"
    assert probes["docker-socket-connect"].startswith("error FileNotFoundError")
    for port in (2375, 2376):
        assert probes[f"docker-tcp-{port}"].startswith("error ConnectionRefusedError")
        assert not probes[f"docker-http-{port}"].startswith("http")
    # Swarm's manager port answers TLS with client certificates only.
    assert not probes["swarm-manager-2377"].startswith("http 2")
    # Binder's admin API, the hub's API, the registry and Binder's realm: no, without a login.
    assert probes["admin-no-token"] == "http 401"
    assert probes["admin-wrong-token"] == "http 403"
    assert probes["hub-users"] in ("http 401", "http 403")
    assert probes["registry-catalog"] == "http 401"
    assert probes["registry-push-other"] == "http 401"
    assert probes["realm-anonymous-push"] == "http 401"
    # The metadata service: dropped by the DOCKER-USER rule.
    assert probes["metadata"].startswith("error"), probes["metadata"]


def test_the_node_rules_keep_builds_from_the_metadata_service(corpus: Corpus) -> None:
    controls, marker = corpus.controls, corpus.metadata_marker
    # Without the rules, the node and a container on the bridge reach it, as a real one.
    assert controls["node-before"] == marker
    assert controls["container-before"] == marker
    assert controls["node-ruled"].startswith("error")
    assert controls["container-ruled"].startswith("error")
    paths = [request.split(" ", 1)[0] for request in corpus.stand_in]
    assert "/control-node" in paths and "/control-container" in paths
    reached = [p for p in paths if p not in ("/ready", "/control-node", "/control-container")]
    assert reached == [], reached


def test_a_submodule_makes_the_builder_ask_binder_which_refuses(corpus: Corpus) -> None:
    # The builder runs on the node's network: its git asked Binder's admin API, without a
    # token, and got 401 (the access log shows it); the metadata submodule was rejected.
    assert "/api/admin/builds.git/info/refs" in corpus.binder_log
    refused = [
        line for line in corpus.binder_log.splitlines() if "/api/admin/builds.git/info/refs" in line
    ]
    assert refused and all('" 401 ' in line for line in refused), refused
    said = "".join(e.message for e in corpus.outcomes["submodules"].events)
    assert f"unable to access 'http://{METADATA_ADDRESS}/" in said
