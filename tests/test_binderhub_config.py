"""BinderHub's own config files, read as they are: the setup guide's examples, the mapping of
each section onto our options, what is ignored with a warning, and every refusal."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import clean_env, free_port, get_json, one_error_line, swarmbinder

from swarmbinder.buildjob import git_logins_from_config
from swarmbinder.config import Config, load_config
from swarmbinder.config.binderhub import (
    DEFAULT_REPO_PROVIDERS,
    SECTIONS,
    scoped_pattern,
)
from swarmbinder.config.sections import OPTIONS
from swarmbinder.errors import ConfigError
from swarmbinder.logsetup import BinderHubFormatter, configure_logging, effective_level
from swarmbinder.policy.canonical import RepoIdentity
from swarmbinder.policy.specpolicy import SpecPolicy

FIXTURES = Path(__file__).parent / "config"


def fixture(name: str) -> Config:
    return load_config(FIXTURES / name, env={})


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, env={})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the setup guide's examples ----------------------------------------------------------------


def test_gcr_registry_example() -> None:
    config = fixture("binderhub_gcr.yaml")
    assert config.registry.use_registry is True
    assert config.registry.image_prefix == "gcr.io/my-project-123/binder-dev-"
    assert config.ignored_binderhub_options == ()


def test_docker_hub_example() -> None:
    config = fixture("binderhub_dockerhub.yaml")
    assert config.registry.image_prefix == "my-docker-id/binder-prod-"


def test_custom_registry_example_takes_the_login_and_warns_of_the_token_url() -> None:
    config = fixture("binderhub_custom_registry.yaml")
    assert config.registry.image_prefix == "your-registry.io/binder-"
    assert (config.registry.registry_username, config.registry.registry_password) == (
        "xxx",
        "yyy",
    )
    # the registry's own challenge names its token endpoint; the chart's url keys config.json
    assert config.ignored_binderhub_options == ("registry.url", "config.DockerRegistry.token_url")


def test_docker_hub_registry_urls_example() -> None:
    config = fixture("binderhub_dockerhub_registry.yaml")
    assert config.registry.registry_url == "https://registry.hub.docker.com"
    assert config.ignored_binderhub_options == (
        "registry.url",
        "config.DockerRegistry.auth_config_url",
        "config.DockerRegistry.token_url",
    )


def test_secret_yaml_example_gives_the_hub_token_the_registry_key_and_github_token() -> None:
    config = fixture("binderhub_secret.yaml")
    assert config.hub.hub_api_token.startswith("3b2c6f0e")
    # the chart's login for a gcr.io JSON key, when none is given
    assert config.registry.registry_username == "_json_key"
    assert '"project_id": "my-project-123"' in str(config.registry.registry_password)
    assert config.providers.github.access_token == "gh-test-token"
    assert config.ignored_binderhub_options == ("jupyterhub.proxy", "registry.url")


def test_hub_url_example() -> None:
    assert fixture("binderhub_hub_url.yaml").hub.hub_url == "http://203.0.113.10/"


def test_gitlab_private_token_example() -> None:
    assert fixture("binderhub_gitlab.yaml").providers.gitlab.private_token == "gl-test-token"


def test_private_repository_logins_land_on_their_own_hosts() -> None:
    config = fixture("binderhub_private_repos.yaml")
    github, gitlab = config.providers.github, config.providers.gitlab
    assert (github.access_token, github.client_id) == ("ghp-test-token-1234", "binder-app")
    assert github.client_secret == "gh-client-secret-5678"
    assert github.api_base_url == "https://github.example.org/api/v3"
    assert github.git_credentials == "username=binder-bot\npassword=ghp-clone-token-9012"
    assert gitlab.private_token == "glpat-test-token-3456"
    assert config.ignored_binderhub_options == ()

    logins = git_logins_from_config(config)
    cases = {
        "https://github.example.org/org/private": ("binder-bot", "ghp-clone-token-9012"),
        "https://gitlab.example.org/group/private.git": ("binderhub", "glpat-clone-token-7890"),
        "https://git.example.org/team/repo.git": ("reader", "git-clone-secret-2468"),
    }
    for url, (username, password) in cases.items():
        login = logins.for_url(url)
        assert login is not None, url
        assert (login.username, login.password) == (username, password)
    # a login is its host's only: github.com, another host and plain http get none
    for url in (
        "https://github.com/org/private",
        "https://evil.example.net/x.git",
        "http://git.example.org/team/repo.git",
    ):
        assert logins.for_url(url) is None


def test_without_git_credentials_the_tokens_make_the_login_as_binderhub() -> None:
    config = fixture("binderhub_secret.yaml")  # GitHubRepoProvider.access_token only
    login = git_logins_from_config(config).for_url("https://github.com/org/private")
    assert login is not None
    assert (login.username, login.password) == ("gh-test-token", "x-oauth-basic")
    config = fixture("binderhub_gitlab.yaml")  # GitLabRepoProvider.private_token only
    login = git_logins_from_config(config).for_url("https://gitlab.com/group/private")
    assert login is not None
    assert (login.username, login.password) == ("binderhub", "gl-test-token")


def test_a_git_login_for_every_host_is_refused_naming_both_options(tmp_path: Path) -> None:
    """BinderHub hands GitRepoProvider's login to whatever host a spec names; here it must
    say which host it is for, and the refusal never repeats the password."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "config:\n  GitRepoProvider:\n"
        '    git_credentials: "username=reader\\npassword=git-secret-1357"\n'
    )
    line = one_error_line(swarmbinder("check-config", str(path)))
    assert line.startswith("swarmbinder: error: config option 'git.git_credentials': ")
    assert "host=" in line
    assert line.endswith("(set by BinderHub's config.GitRepoProvider.git_credentials)")
    assert "git-secret-1357" not in line


def test_mixed_file_of_binderhub_sections_and_our_options() -> None:
    config = fixture("binderhub_mixed.yaml")
    assert config.hub.hub_url == "https://hub.example.org/"
    assert config.server.debug is True
    assert config.server.log_format == "[%(name)s]%(highlevel)s %(message)s"
    assert config.server.log_datefmt == "%H:%M:%S"
    assert dict(config.server.repo_providers) == {
        "gh": "GitHubRepoProvider",
        "git": "GitRepoProvider",
    }
    assert dict(config.pages.extra_header_html) == {
        "analytics": '<meta name="x-test" content="head">'
    }
    assert config.pages.default_opengraph_title == "Our Binder"
    assert config.quotas.pod_quota == 40
    assert config.builds.build_memory_limit == 2 * 1024**3
    # a Kubernetes node label becomes a Swarm node label constraint
    assert dict(config.builds.build_node_selector) == {"node.labels.binder-builds": "true"}
    assert (config.quotas.rate_limit, config.quotas.rate_limit_period) == (5, 600)
    assert config.providers.git.allowed_protocols == ("https",)
    assert config.registry.registry_url == "http://registry:5000"
    assert config.ignored_binderhub_options == (
        "config.BinderHub.build_namespace",
        "config.KubernetesBuildExecutor.namespace",
    )


def test_sections_may_stand_at_the_top_level(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "BinderHub:\n  per_repo_quota: 3\nLaunchQuota:\n  total_quota: 9\n"
    )
    assert (config.quotas.per_repo_quota, config.quotas.pod_quota) == (3, 9)


def test_every_mapped_trait_names_a_real_option() -> None:
    for name, info in SECTIONS.items():
        for trait, spec in info.traits.items():
            if spec.option and spec.option != "git_credentials":
                assert spec.option in OPTIONS, f"{name}.{trait} -> {spec.option}"
            if not spec.option:
                assert spec.why, f"{name}.{trait} is not applicable without saying why"


# --- a provider's spec lists -------------------------------------------------------------------


def test_a_providers_banned_specs_apply_to_its_launches_only() -> None:
    config = fixture("binderhub_mixed.yaml")
    policy = SpecPolicy.from_config(
        banned_specs=config.bans.banned_specs, high_quota_specs=config.quotas.high_quota_specs
    )
    assert policy.is_banned(
        RepoIdentity("gh", "evil-org/repo/HEAD", "https://github.com/evil-org/repo")
    )
    # the same user's gist is not GitHubRepoProvider's business, as in BinderHub...
    assert not policy.is_banned(
        RepoIdentity("gist", "evil-org/abc123", "https://gist.github.com/evil-org/abc123.git")
    )
    # ...while our own top-level pattern, written with its prefix, still applies
    assert policy.is_banned(RepoIdentity("gl", "any%2Fthing/HEAD", "https://gitlab.com/any/thing"))
    assert policy.has_higher_quota(RepoIdentity("gh", "jupyterlab/lab/HEAD"))
    assert not policy.has_higher_quota(RepoIdentity("gist", "jupyterlab/0a1b"))


def test_a_providers_allowed_specs_hold_its_launches_only(tmp_path: Path) -> None:
    """GitHubRepoProvider.allowed_specs: other GitHub repositories are refused, GitLab and git
    launches are not GitHub's business (BinderHub's rule); RepoProvider's holds every one."""
    config = load_text(
        tmp_path,
        "config:\n  GitHubRepoProvider:\n    allowed_specs: ['^our-org/.*']\n",
    )
    policy = SpecPolicy.from_config(allowed_specs=config.bans.allowed_specs)
    assert not policy.is_banned(
        RepoIdentity("gh", "our-org/x/HEAD", "https://github.com/our-org/x")
    )
    assert policy.is_banned(RepoIdentity("gh", "other/x/HEAD", "https://github.com/other/x"))
    # the same organisation's name after another prefix is not GitHub's list either
    assert policy.is_banned(RepoIdentity("gh", "x/our-org/HEAD", "https://github.com/x/our-org"))
    assert not policy.is_banned(RepoIdentity("gl", "other%2Fx/HEAD", "https://gitlab.com/other/x"))
    assert not policy.is_banned(
        RepoIdentity("git", "https%3A%2F%2Fexample.org%2Fr.git/HEAD", "https://example.org/r.git")
    )
    everyone = load_text(tmp_path, "config:\n  RepoProvider:\n    allowed_specs: ['^our-org/.*']\n")
    held = SpecPolicy.from_config(allowed_specs=everyone.bans.allowed_specs)
    assert held.is_banned(RepoIdentity("gl", "other%2Fx/HEAD", "https://gitlab.com/other/x"))


@pytest.mark.parametrize(
    ("pattern", "spec", "matches"),
    [
        ("^org/.*", "gh/org/repo/HEAD", True),
        ("^org/.*", "gh/other/org/HEAD", False),
        ("a|^b", "gh/b/x", True),
        ("a|^b", "gh/xb/x", False),
        (r"\Aorg", "gh/org/x", True),
        ("[^x]rg/", "gh/org/x", True),  # a negated class is not an anchor
        (r"\^org", "gh/^org", True),
        ("(?i)ORG/", "gh/org/x", True),
        ("^org/.*", "gl/org/x", False),
    ],
)
def test_scoped_patterns_match_as_binderhub_matches_the_providers_specs(
    pattern: str, spec: str, matches: bool
) -> None:
    scoped = scoped_pattern("gh", pattern)
    assert (re.match(scoped, spec, re.IGNORECASE) is not None) is matches
    if spec.startswith("gh/"):
        assert (re.match(pattern, spec[3:], re.IGNORECASE) is not None) is matches


# --- refusals ----------------------------------------------------------------------------------


def test_wrong_type_names_the_binderhub_option_and_ours(tmp_path: Path) -> None:
    message = refused(tmp_path, "config:\n  BinderHub:\n    per_repo_quota: ten\n")
    assert message.startswith("config option 'per_repo_quota': ")
    assert "config.BinderHub.per_repo_quota" in message


def test_unknown_trait_suggests_the_closest(tmp_path: Path) -> None:
    message = refused(tmp_path, "config:\n  BinderHub:\n    per_repo_qouta: 1\n")
    assert message == (
        "config option 'config.BinderHub.per_repo_qouta': unknown BinderHub option "
        "(did you mean 'per_repo_quota'?)"
    )


def test_unknown_section_suggests_the_closest(tmp_path: Path) -> None:
    message = refused(tmp_path, "config:\n  GithubRepoProvider:\n    access_token: x\n")
    assert "unknown BinderHub section (did you mean 'GitHubRepoProvider'?)" in message


def test_chart_values_are_only_read_beside_a_config_block(tmp_path: Path) -> None:
    message = refused(tmp_path, "jupyterhub:\n  hub: {}\n")
    assert message.startswith("config option 'jupyterhub': unknown option")


@pytest.mark.parametrize(
    ("text", "places"),
    [
        ("pod_quota: 1\nconfig:\n  BinderHub:\n    pod_quota: 2\n", "config.BinderHub.pod_quota"),
        (
            "config:\n  BinderHub:\n    pod_quota: 1\n  LaunchQuota:\n    total_quota: 2\n",
            "config.BinderHub.pod_quota and by config.LaunchQuota.total_quota",
        ),
        (
            "hub_api_token: a\njupyterhub:\n  hub:\n    services:\n      binder:\n"
            "        apiToken: b\nconfig: {}\n",
            "jupyterhub.hub.services.binder.apiToken",
        ),
    ],
)
def test_an_option_set_twice_names_both_places(tmp_path: Path, text: str, places: str) -> None:
    message = refused(tmp_path, text)
    assert "set twice" in message and places in message


def test_spec_lists_of_several_sections_add_up(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "banned_specs: [^gh/a/]\nconfig:\n  RepoProvider:\n    banned_specs: [^b/]\n"
        "  GitLabRepoProvider:\n    banned_specs: [^c/]\n",
    )
    assert config.bans.banned_specs == ("^gh/a/", "^b/", "gl/(?:(?<=^gl/)c/)")


@pytest.mark.parametrize(
    ("providers", "problem"),
    [
        ("{}", "must offer at least one provider"),
        ("{gh: mymodule.MyProvider}", "'mymodule.MyProvider' is not one of BinderHub's"),
        ("{gh: GitHubRepoProvder}", "did you mean 'GitHubRepoProvider'?"),
        ("{github: GitHubRepoProvider}", "offered under its own prefix 'gh' only"),
    ],
)
def test_bad_repo_providers(tmp_path: Path, providers: str, problem: str) -> None:
    message = refused(tmp_path, f"config:\n  BinderHub:\n    repo_providers: {providers}\n")
    assert problem in message and "config.BinderHub.repo_providers" in message


def test_repo_providers_default_is_every_provider() -> None:
    assert dict(Config().server.repo_providers) == dict(DEFAULT_REPO_PROVIDERS)


def test_log_level_may_be_a_number_as_in_binderhub(tmp_path: Path) -> None:
    assert load_text(tmp_path, "BinderHub:\n  log_level: 10\n").server.log_level == "DEBUG"
    assert "is not a logging level" in refused(tmp_path, "BinderHub:\n  log_level: 12\n")


def test_log_format_must_format(tmp_path: Path) -> None:
    message = refused(tmp_path, "config:\n  BinderHub:\n    log_format: '%(nosuchfield)s'\n")
    assert "is not a %-style logging format" in message and "'nosuchfield'" in message


# --- logging -----------------------------------------------------------------------------------


def test_binderhub_and_jupyterhub_format_fields() -> None:
    formatter = BinderHubFormatter("%(color)s[%(name)s]%(highlevel)s %(message)s%(end_color)s")
    record = logging.makeLogRecord(
        {"name": "x", "msg": "m", "levelno": logging.WARNING, "levelname": "WARNING"}
    )
    assert formatter.format(record) == "[x] WARNING | m"
    record = logging.makeLogRecord({"name": "x", "msg": "m", "levelno": 20, "levelname": "INFO"})
    assert formatter.format(record) == "[x] m"


def test_debug_means_debug_whatever_log_level_says() -> None:
    assert effective_level(debug=True, log_level="WARNING") == "DEBUG"
    assert effective_level(debug=False, log_level="WARNING") == "WARNING"


def test_configure_logging_sets_level_format_and_date_format() -> None:
    class Lines:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    root = logging.getLogger()
    level = root.level
    stream = Lines()
    handler = configure_logging("DEBUG", "%(asctime)s|%(levelname)s|%(message)s", "%Y", stream)  # type: ignore[arg-type]
    try:
        logging.getLogger("swarmbinder.test").debug("hello")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert stream.text == f"{time.strftime('%Y')}|DEBUG|hello\n"


# --- the real command --------------------------------------------------------------------------


def test_check_config_warns_once_of_what_it_ignores() -> None:
    proc = swarmbinder("check-config", str(FIXTURES / "binderhub_mixed.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ok: {FIXTURES / 'binderhub_mixed.yaml'}\n"
    assert proc.stderr.splitlines() == [
        "warning: BinderHub options that mean nothing on Docker Swarm were ignored "
        "(docs/config.md says why): config.BinderHub.build_namespace, "
        "config.KubernetesBuildExecutor.namespace"
    ]


def test_check_config_refuses_a_wrong_type_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("config:\n  RateLimiter:\n    limit: lots\n")
    line = one_error_line(swarmbinder("check-config", str(path)))
    assert line.startswith("swarmbinder: error: config option 'rate_limit': ")
    assert line.endswith("(set by BinderHub's config.RateLimiter.limit)")


def test_serve_with_a_helm_config_block(tmp_path: Path) -> None:
    """``serve`` takes the chart's block: debug lines in BinderHub's log format, one warning
    line naming the Kubernetes options, and the pages' head and title as configured."""
    config = tmp_path / "config.yaml"
    config.write_text(
        (FIXTURES / "binderhub_mixed.yaml").read_text()
        + f"store_path: {tmp_path / 's.db'}\nbuild_image: example.org/r2d:1\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmbinder", "serve", "--config", str(config)]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        get_json(f"http://127.0.0.1:{port}/versions", time.monotonic() + 30, proc)
        page = _get_text(f"http://127.0.0.1:{port}/")
        providers = get_json(
            f"http://127.0.0.1:{port}/api/repoproviders", time.monotonic() + 5, proc
        )
        blocked = _build_status(f"http://127.0.0.1:{port}/build/gh/org/repo/HEAD", "curl/8.5.0")
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    warnings = [line for line in lines if "BinderHub options that mean nothing" in line]
    assert warnings == [
        "[swarmbinder] WARNING | BinderHub options that mean nothing on Docker Swarm were "
        "ignored (docs/config.md says why): config.BinderHub.build_namespace, "
        "config.KubernetesBuildExecutor.namespace"
    ]
    # debug: true logs at DEBUG, although log_level stays INFO
    assert any(line.startswith("[swarmbinder] options in effect: {") for line in lines)
    assert '"hub_api_token": ""' in stderr and "debug" in stderr
    assert '<meta name="x-test" content="head">' in page
    assert '<meta property="og:title" content="Our Binder">' in page
    assert [p["id"] for p in providers] == ["gh", "git"]
    # BinderHub's block_build_user_agents: refused before anything else is looked at
    assert blocked[0] == 403 and "Bots not allowed" in blocked[1]


def _build_status(url: str, user_agent: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, headers={"User-Agent": user_agent, "Accept": "text/event-stream"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(4096).decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _get_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text
