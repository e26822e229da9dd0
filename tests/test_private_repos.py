"""Private repositories: a git host's login reaches the clone of its own private repositories,
and nothing else.

The private host is the project's own git server (stack/gitserver.py) with HTTP basic
authentication, on 127.0.0.1; a second one stands for "another host". Resolution and the probe
run real git; the builds run for real on the test ground's swarm with repo2docker.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from build_fixtures import _git, collect, docker, free_port, service_json
from hostile_support import Link

from swarmbinder.buildjob import BuildRequest, BuildSettings, job_spec
from swarmbinder.builds import BuildManager
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import LogSummary, failure_reason
from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError, ProviderUnavailable, RefNotFound
from swarmbinder.events import Phase, parse_repo2docker_line
from swarmbinder.gitcredentials import (
    BUILDER_GIT_LOGIN,
    GitCredentials,
    GitLogin,
    GitLoginRefused,
    helper_env,
    parse_descriptions,
    readable_anonymously,
    refused_host,
)
from swarmbinder.labels import KIND_GIT_LOGIN, LABEL_KIND
from swarmbinder.launch_flow import LaunchFlow, LaunchRequest
from swarmbinder.outbound import OutboundPolicy, guarded_session
from swarmbinder.providers import GitHubRepoProvider, GitLabRepoProvider, GitRepoProvider
from swarmbinder.resolve import (
    Resolved,
    policy_from_config,
    provider_session,
    providers_from_config,
    resolve,
)
from swarmbinder.scrub import Scrubber
from swarmbinder.swarm import SwarmClient

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = OutboundPolicy.from_cidrs(["127.0.0.0/8"])
USER = "reader"
#: The password the second git host refuses, in the builds' wrong-login case.
WRONG_PASSWORD = f"wrong-{secrets.token_hex(8)}"


# -- the login format -----------------------------------------------------------------------


def test_binderhubs_forms_give_one_login_per_host() -> None:
    logins = GitCredentials.from_options(
        github_access_token="ghp_token1234",
        gitlab_hostname="gitlab.example.org",
        gitlab_credentials=r"username=bot\npassword=glpat-secret",
        git_credentials="host=git.example.org:8443\nusername=u\npassword=p4ssword\n\n"
        "protocol=http\nhost=intranet\nusername=v\npassword=w0rdpass",
    )
    github = logins.for_url("https://github.com/org/private")
    assert github == GitLogin("https", "github.com", "ghp_token1234", "x-oauth-basic")
    gitlab = logins.for_url("https://gitlab.example.org/group/project.git")
    assert gitlab is not None and (gitlab.username, gitlab.password) == ("bot", "glpat-secret")
    assert logins.for_url("https://git.example.org:8443/r.git") is not None
    assert logins.for_url("http://intranet/r.git") is not None
    # Another port, another protocol, another host: no login.
    assert logins.for_url("https://git.example.org/r.git") is None
    assert logins.for_url("https://intranet/r.git") is None
    assert logins.for_url("https://github.com.evil.example/org/private") is None
    assert logins.for_url("git://github.com/org/private") is None
    assert sorted(logins.secrets()) == sorted(
        ["ghp_token1234", "glpat-secret", "p4ssword", "w0rdpass"]
    )


def test_a_client_id_makes_the_token_a_password_as_binderhub_does() -> None:
    logins = GitCredentials.from_options(github_access_token="tok123456", github_client_id="app")
    assert logins.for_url("https://github.com/o/r") == GitLogin(
        "https", "github.com", "app", "tok123456"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("username=u\npassword=p", "must name its host="),
        ("host=h\nusername=u", "needs a username= and a password="),
        ("protocol=ssh\nhost=h\nusername=u\npassword=p", "protocol must be https or http"),
        ("host=h; rm -rf /\nusername=u\npassword=p", "is not a host name"),
        ("host=h\nuser=u\npassword=p", "git's credential format"),
    ],
)
def test_a_login_that_could_go_astray_is_refused_at_start_up(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_descriptions("git.git_credentials", text)
    assert info.value.option == "git.git_credentials"
    config = tmp_path / "binder.yaml"
    config.write_text(json.dumps({"git": {"git_credentials": text}}))
    with pytest.raises(ConfigError, match=problem) as loaded:
        load_config(config, env={})
    assert loaded.value.option == "git.git_credentials"
    assert "password=p" not in str(loaded.value)


def test_the_configs_logins_are_masked_and_scrubbed(tmp_path: Path) -> None:
    from swarmbinder.app import config_secrets

    config = tmp_path / "binder.yaml"
    config.write_text(
        json.dumps({"git": {"git_credentials": "host=h\nusername=u\npassword=hunter22"}})
    )
    loaded = load_config(config, env={})
    assert loaded.as_dict(mask_secrets=True)["git"]["git_credentials"] == "***"
    scrubber = Scrubber()
    scrubber.update(config_secrets(loaded))
    assert "hunter22" not in scrubber.scrub("fatal: auth failed for hunter22")


def _r2d_line(message: str, phase: str) -> str:
    return json.dumps({"message": message, "phase": phase})


def test_a_refused_clone_login_is_the_builds_failure_reason() -> None:
    """repo2docker's log of a clone whose login the server turned down, as the builder
    printed it (the stack's builder image against stack/gitserver.py with a wrong password)."""
    lines = [
        _r2d_line("Cloning into '/tmp/repo2dockerx'...\n", "fetching"),
        _r2d_line("fatal: Authentication failed for 'http://127.0.0.1:8480/p.git/'\n", "fetching"),
        _r2d_line("Error during build: Failed to clone repository from http://127.0.0.1:8480/"
                  "priv.git (ref main).", "failed"),
    ]  # fmt: skip
    summary = LogSummary()
    for line in lines:
        summary.add(line, parse_repo2docker_line(line))
    reason = failure_reason(summary.lines(), None)
    assert reason.startswith("authentication failed for 127.0.0.1:8480: ")
    # A build step printing the same words is the repository talking, not git: not believed.
    forged = _r2d_line("fatal: Authentication failed for 'https://victim.example/x'\n", "building")
    assert parse_repo2docker_line(forged).phase is Phase.BUILDING
    assert failure_reason([forged, lines[2]], None).startswith("Error during build")


def test_the_refused_host_never_carries_a_login() -> None:
    assert refused_host("fatal: Authentication failed for 'https://u:pw@git.example.org/r/'") == (
        "git.example.org"
    )
    assert refused_host("fatal: Authentication failed for 'http://[::1]:8443/r'") == "[::1]:8443"
    assert refused_host("fatal: Authentication failed for 'https://a b/<img>'") is None
    assert refused_host("fatal: repository not found") is None


# -- real git against real servers -----------------------------------------------------------


@dataclass(frozen=True)
class GitHost:
    """A git server on 127.0.0.1 serving ``root``; with ``password`` every repo is private."""

    root: Path
    port: int
    password: str | None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{self.host}/{name}.git"

    def login(self) -> GitLogin:
        assert self.password is not None
        return GitLogin("http", self.host, USER, self.password)


def _serve(root: Path, password: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, str(REPO_ROOT / "stack" / "gitserver.py"), str(root), str(port)]
    if password is not None:
        args += ["--basic-auth", f"{USER}:{password}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60  # a Python start-up: seconds on a loaded machine
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the git server did not start")


def _bare_repo(root: Path, name: str, files: dict[str, str | Link]) -> str:
    with tempfile.TemporaryDirectory(prefix="sbtest-private-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        for path, content in files.items():
            target = work / path
            if isinstance(content, Link):
                target.symlink_to(content.target)
            else:
                target.write_text(content)
        _git(["init", "-q", "-b", "main"], work, Path(tmp))
        _git(["config", "core.symlinks", "true"], work, Path(tmp))
        _git(["add", "-A"], work, Path(tmp))
        _git(["commit", "-q", "-m", "private test repository"], work, Path(tmp))
        _git(["clone", "-q", "--bare", str(work), str(root / f"{name}.git")], Path(tmp), Path(tmp))
        return _git(["rev-parse", "HEAD"], work, Path(tmp))


@pytest.fixture(scope="module")
def git_hosts() -> Iterator[tuple[GitHost, GitHost]]:
    """A private host and another private host with another password."""
    procs = []
    hosts = []
    with tempfile.TemporaryDirectory(prefix="sbtest-githosts-") as tmp:
        for index in range(2):
            root = Path(tmp) / f"host{index}"
            root.mkdir()
            password = f"pw-{secrets.token_hex(12)}"
            proc, port = _serve(root, password)
            procs.append(proc)
            hosts.append(GitHost(root, port, password))
        try:
            yield hosts[0], hosts[1]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


def _spec(url: str, ref: str = "main") -> str:
    return url.replace(":", "%3A").replace("/", "%2F") + f"/{ref}"


async def test_git_gives_the_login_to_its_own_host_only(git_hosts: tuple[GitHost, GitHost]) -> None:
    """``git credential fill`` through the helper: the login's host gets it, others nothing."""
    mine, other = git_hosts
    login = mine.login()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"} | helper_env(
        login, 'printf "%s" "$SWARMBINDER_GIT_LOGIN"'
    )
    env["SWARMBINDER_GIT_LOGIN"] = login.credential_text().decode()

    def fill(protocol: str, host: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "credential", "fill"],
            input=f"protocol={protocol}\nhost={host}\n\n",
            env=env, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip

    answer = fill("http", mine.host)
    assert answer.returncode == 0 and f"password={mine.password}" in answer.stdout
    for protocol, host in (("http", other.host), ("https", mine.host), ("http", "127.0.0.1")):
        refused = fill(protocol, host)
        assert refused.returncode != 0 and "password=" not in refused.stdout, (protocol, host)


async def test_a_private_git_repository_resolves_with_its_hosts_login_only(
    git_hosts: tuple[GitHost, GitHost],
) -> None:
    mine, other = git_hosts
    name = f"resolve-{uuid.uuid4().hex[:8]}"
    head = _bare_repo(mine.root, name, {"README.md": "private\n"})
    logins = GitCredentials([mine.login()])
    provider = GitRepoProvider(_spec(mine.url(name)), outbound=LOOPBACK, logins=logins)
    assert await provider.get_resolved_ref() == head
    # No login: the host answers 401, which reads as "does not exist or is not public".
    anonymous = GitRepoProvider(_spec(mine.url(name)), outbound=LOOPBACK)
    with pytest.raises(RefNotFound, match="does not exist or is not public"):
        await anonymous.get_resolved_ref()
    # The other host's repository: this login is not given to it.
    _bare_repo(other.root, name, {"README.md": "private too\n"})
    elsewhere = GitRepoProvider(_spec(other.url(name)), outbound=LOOPBACK, logins=logins)
    with pytest.raises(RefNotFound):
        await elsewhere.get_resolved_ref()
    assert not await readable_anonymously(mine.url(name))


async def test_a_login_the_host_refuses_fails_the_launch_naming_the_host_only(
    git_hosts: tuple[GitHost, GitHost],
) -> None:
    """Resolution (``git ls-remote``) with the operator's login for the host, and a wrong
    password: the launch's ``failed`` event says whose authentication failed, and nothing of
    the login."""
    _, other = git_hosts
    name = f"refused-{uuid.uuid4().hex[:8]}"
    _bare_repo(other.root, name, {"README.md": "private\n"})
    wrong = f"wrong-{secrets.token_hex(8)}"
    config = load_config(
        env={},
        overrides={
            "git.git_credentials": f"protocol=http\nhost={other.host}\n"
            f"username={USER}\npassword={wrong}",
            "allowed_outbound_networks": ["127.0.0.0/8"],
        },
    )
    async with provider_session(config) as session:
        providers = providers_from_config(config, session)

        async def resolve_path(path: str) -> Resolved:
            return await resolve(
                path, providers=providers, policy=policy_from_config(config), image_prefix="r/"
            )

        async def never(*args: Any) -> Any:
            raise AssertionError("nothing may happen after a refused resolve")

        flow = LaunchFlow(
            resolve=resolve_path,
            image_exists=never,
            builds=None,  # type: ignore[arg-type]
            launcher=None,
            check_quota=never,
        )
        # main: the login's refusal is not "no such branch", so no HEAD fallback either
        request = LaunchRequest(
            provider_prefix="git", spec=_spec(other.url(name)), launch_host="http://b/"
        )
        events = [event.to_wire() async for event in flow.run(request)]
    assert [e["phase"] for e in events] == ["failed"]
    assert events[0]["status_code"] == 403
    assert events[0]["message"].startswith(f"authentication failed for {other.host}: ")
    wire = json.dumps(events)
    assert wrong not in wire and USER not in wire and str(other.password) not in wire
    # the provider says the same, by type
    provider = GitRepoProvider(
        _spec(other.url(name)),
        outbound=LOOPBACK,
        logins=GitCredentials([GitLogin("http", other.host, USER, wrong)]),
    )
    with pytest.raises(GitLoginRefused):
        await provider.get_resolved_ref()


async def test_github_and_gitlab_refusing_their_token_say_whose_authentication_failed(
    aiohttp_server: Any,
) -> None:
    """An API that answers 401 to the configured token, as GitHub and GitLab do for a revoked
    one: the launch is told which host, and never the token."""

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"message": "Bad credentials"}, status=401)

    app = web.Application()
    app.router.add_get("/{tail:.*}", refuse)
    api = str((await aiohttp_server(app)).make_url(""))
    token = f"tok-{secrets.token_hex(8)}"
    async with guarded_session(LOOPBACK) as session:
        providers = [
            GitHubRepoProvider(
                "org/private/main", hostname="github.example.org", api_base_url=api,
                access_token=token, session=session, outbound=LOOPBACK,
            ),
            GitLabRepoProvider(
                "group%2Fprivate/main", hostname="gitlab.example.org", api_base_url=api,
                private_token=token, session=session, outbound=LOOPBACK,
            ),
        ]  # fmt: skip
        hosts = ("github.example.org", "gitlab.example.org")
        for provider, host in zip(providers, hosts, strict=True):
            with pytest.raises(ProviderUnavailable) as info:
                await provider.get_resolved_ref()
            assert info.value.user_message.startswith(f"authentication failed for {host}: ")
            assert token not in info.value.user_message + str(info.value)


# -- builds on the real swarm ----------------------------------------------------------------


@dataclass
class BuiltCase:
    request: BuildRequest
    status: BuildStatus
    text: str  # every event's message and fields, and the stored-log equivalent
    service: dict[str, Any] | None  # the build service as `docker service inspect` saw it


def _request(ground: dict[str, Any], url: str, sha: str, label: str) -> BuildRequest:
    slug = f"private-{label}-{uuid.uuid4().hex[:8]}"
    return BuildRequest(
        provider="git",
        spec=_spec(url, sha),
        repo_url=url,
        ref=sha,
        build_slug=slug,
        image=f"{ground['registry']}/sbtest-{slug}:{sha}",
    )


async def _build(
    manager: BuildManager, request: BuildRequest
) -> tuple[BuildStatus, str, dict[str, Any] | None]:
    build = await manager.request(request)
    service = service_json(request.service_name)
    events = await collect(build)
    text = "\n".join(json.dumps(e.to_wire()) for e in events)
    return build.status, text, service


async def _run_builds(
    ground: dict[str, Any], requests: dict[str, BuildRequest], logins: GitCredentials
) -> dict[str, BuiltCase]:
    builder = ground["images"]["builder"]
    settings = BuildSettings(
        builder_image=builder, sticky=True, cleanup_interval=3600, git_logins=logins
    )
    swarm = SwarmClient.connect()
    manager = BuildManager(swarm, settings)
    bare = BuildManager(swarm, BuildSettings(builder_image=builder, cleanup_interval=3600))
    cases: dict[str, BuiltCase] = {}
    try:
        for label, request in requests.items():
            # The last one goes to a Binder with no logins at all.
            status, text, service = await _build(bare if label == "no-login" else manager, request)
            cases[label] = BuiltCase(request, status, text, service)
    finally:
        await manager.close()
        await bare.close()
        for request in requests.values():
            await swarm.remove_service(request.service_name)
        await swarm.close()
    return cases


@pytest.fixture(scope="module")
def private_builds(
    testground: dict[str, Any], git_hosts: tuple[GitHost, GitHost]
) -> Iterator[dict[str, BuiltCase]]:
    mine, other = git_hosts
    singleuser = testground["images"]["singleuser"]
    probe = "cat /run/secrets/* 2>&1; env; git credential fill </dev/null 2>&1; true"
    repos: dict[str, dict[str, str | Link]] = {
        "private": {"Dockerfile": f"FROM {singleuser}\nRUN echo private build ok\n"},
        # Private repositories of the same host that go for the login: repo2docker reads
        # apt.txt in the builder, where the login is mounted (every line of git's credential
        # format passes its package-name check, so none is quoted; a scrubbed one would read
        # [secret]); the builder's environment, quoted whole; a RUN step looking everywhere.
        "hostile-apt": {"apt.txt": Link(BUILDER_GIT_LOGIN)},
        "hostile-environ": {"apt.txt": Link("/proc/self/environ")},
        "hostile-run": {"Dockerfile": f"FROM {singleuser}\nRUN sh -c '{probe}'\n"},
    }
    requests = {}
    for label, files in repos.items():
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        sha = _bare_repo(mine.root, name, files)
        requests[label] = _request(testground, mine.url(name), sha, label)
    public = testground["repos"]["binder-dockerfile"]
    requests["public"] = _request(testground, public["url"], public["head"], "public")
    # The other host's private repository, with a login its server refuses.
    refused = f"refused-{uuid.uuid4().hex[:8]}"
    refused_sha = _bare_repo(other.root, refused, {"Dockerfile": f"FROM {singleuser}\n"})
    requests["wrong-login"] = _request(testground, other.url(refused), refused_sha, "wronglogin")
    private = requests["private"]
    requests["no-login"] = _request(testground, private.repo_url, private.ref, "nologin")
    # A login for the public repository's host too: the probe finds it readable without.
    public_host = GitLogin("http", public["url"].split("/")[2], USER, "never-sent-" + "x" * 8)
    wrong_login = GitLogin("http", other.host, USER, WRONG_PASSWORD)
    logins = GitCredentials([mine.login(), public_host, wrong_login])
    try:
        yield asyncio.run(_run_builds(testground, requests, logins))
    finally:
        for line in docker(
            "secret", "ls", "-q", "--filter", f"label={LABEL_KIND}={KIND_GIT_LOGIN}"
        ).split():
            subprocess.run(["docker", "secret", "rm", line], capture_output=True, check=False)


def _mounted_secrets(service: dict[str, Any] | None) -> list[str]:
    assert service is not None
    container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
    return [s["File"]["Name"] for s in container.get("Secrets") or []]


@pytest.mark.swarm
def test_a_private_repository_builds_with_its_hosts_login(
    private_builds: dict[str, BuiltCase], git_hosts: tuple[GitHost, GitHost]
) -> None:
    case = private_builds["private"]
    assert case.status is BuildStatus.BUILT, case.text[-2000:]
    assert "private build ok" in case.text
    assert _mounted_secrets(case.service) == [BUILDER_GIT_LOGIN]
    # The image's config and layers' commands name the repository, never its login.
    password = git_hosts[0].password
    assert password is not None
    image = docker("image", "inspect", case.request.image)
    history = docker("history", "--no-trunc", case.request.image)
    assert case.request.repo_url in image and password not in image + history


@pytest.mark.swarm
def test_without_a_login_the_clone_fails_clearly(private_builds: dict[str, BuiltCase]) -> None:
    case = private_builds["no-login"]
    assert case.status is BuildStatus.FAILED
    assert '"phase": "failed"' in case.text
    assert _mounted_secrets(case.service) == []


@pytest.mark.swarm
def test_a_clone_whose_login_is_refused_fails_naming_the_host_only(
    private_builds: dict[str, BuiltCase], git_hosts: tuple[GitHost, GitHost]
) -> None:
    case = private_builds["wrong-login"]
    assert case.status is BuildStatus.FAILED
    assert _mounted_secrets(case.service) == [BUILDER_GIT_LOGIN]  # it was sent, and refused
    failed = [json.loads(line) for line in case.text.splitlines()][-1]
    assert failed["phase"] == "failed"
    assert failed["message"].startswith(
        f"Build failed: authentication failed for {git_hosts[1].host}: "
    )
    assert WRONG_PASSWORD not in case.text + json.dumps(case.service)


@pytest.mark.swarm
def test_a_public_repository_on_a_host_with_a_login_gets_none(
    private_builds: dict[str, BuiltCase],
) -> None:
    case = private_builds["public"]
    assert case.status is BuildStatus.BUILT, case.text[-2000:]
    assert _mounted_secrets(case.service) == []


@pytest.mark.swarm
def test_no_login_in_events_logs_labels_env_or_image(
    private_builds: dict[str, BuiltCase], git_hosts: tuple[GitHost, GitHost]
) -> None:
    password = git_hosts[0].password
    assert password is not None
    for label in ("hostile-apt", "hostile-environ", "hostile-run"):
        # The hostile repositories are private ones of that host: they clone with the login.
        assert _mounted_secrets(private_builds[label].service) == [BUILDER_GIT_LOGIN], label
    for label, case in private_builds.items():
        # Nothing any build says, nor its service, holds it.
        assert password not in case.text, label
        assert password not in json.dumps(case.service), label
    # The environment was read and quoted, and holds the helper, not the login.
    assert "GIT_CONFIG_VALUE_1" in private_builds["hostile-environ"].text
    run = private_builds["hostile-run"]
    assert run.status is BuildStatus.BUILT, run.text[-2000:]
    assert "swarmbinder-git-login" not in run.text  # a RUN step sees no builder secret


def test_the_job_spec_carries_the_helper_but_never_the_login() -> None:
    login = GitLogin("https", "git.example.org", "u", "s3cret-password")
    from swarmbinder.buildjob import GitLoginMount
    from swarmbinder.jobspec import SecretMount

    request = BuildRequest("git", "x/main", "https://git.example.org/r.git", "a" * 40, "s", "i:1")
    spec = job_spec(
        request,
        BuildSettings(builder_image="b"),
        status=BuildStatus.RUNNING,
        node="",
        now=0,
        build_nodes_only=False,
        git_login=GitLoginMount(login, SecretMount("id", "name", BUILDER_GIT_LOGIN, 0o400)),
    )
    assert [s.target for s in spec.secrets] == [BUILDER_GIT_LOGIN]
    assert "s3cret-password" not in json.dumps(spec.env) + json.dumps(spec.labels)
    assert 'host=*) h="${l#host=}"' in spec.env["GIT_CONFIG_VALUE_1"]
    assert spec.env["GIT_CONFIG_VALUE_2"] == "false"  # no redirects to another host
