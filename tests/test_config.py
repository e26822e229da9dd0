"""Config loading: sources and their precedence, every rejection, secrets, masking, docs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from swarmbinder.config import (
    BuildConfig,
    Config,
    iter_options,
    load_config,
    render_markdown,
)
from swarmbinder.errors import ConfigError

HERE = Path(__file__).parent
EXAMPLE = HERE / "config" / "test.yaml"
DOCS = HERE.parent / "docs" / "config.md"


def load_yaml(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, env=env or {})


def rejected(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError that loading ``text`` raises; its message must be one line."""
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, text, env)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"config option {info.value.option!r}: ")
    return info.value


# --- defaults and the example file -----------------------------------------------------------


def test_no_sources_gives_binderhubs_defaults() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.server.port == 8585
    assert config.server.base_url == "/"
    assert config.server.log_level == "INFO"
    assert config.quotas.pod_quota is None
    assert config.quotas.per_repo_quota == 0
    assert (config.quotas.rate_limit, config.quotas.rate_limit_period) == (10, 3600)
    assert config.builds.concurrent_build_limit == 32
    assert config.builds.build_max_age == 14400
    assert config.builds.build_cleanup_interval == 60
    assert config.builds.log_tail_lines == 100
    assert config.builds.build_network == "host"
    assert config.builds.docker_host is None
    assert config.registry.use_registry is True
    assert config.tokens.build_token_expires_seconds == 300
    assert config.tokens.build_token_check_origin is True
    assert config.providers.github.api_base_url == "https://api.github.com"
    assert config.providers.gitlab.hostname == "gitlab.com"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "# nothing set yet\n") == Config()


def test_example_file_loads_into_sections() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.hub.hub_url == "https://hub.example.org/"
    assert config.hub.local_url == "http://jupyterhub:8000/"
    assert config.server.base_url == "/binder/"
    assert config.registry.image_prefix == "127.0.0.1:5000/binder-"
    assert config.builds.build_memory_limit == 2 * 1024**3
    assert config.builds.build_node_selector == {"node.labels.binder-builds": "true"}
    assert config.quotas.pod_quota == 100
    assert config.quotas.spec_config == (
        {"pattern": "^gh/example/slow-repo/.*", "config": {"quota": 2}},
    )
    assert config.bans.ban_networks == {"10.66.0.0/16": "scraper farm"}
    assert config.bans.banned_specs == ("^gh/evil/.*",)
    assert config.providers.github.access_token == "gh-token"
    assert config.providers.gitlab.hostname == "gitlab.example.org"


def test_config_is_frozen_all_the_way_down() -> None:
    config = load_config(EXAMPLE, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.quotas.pod_quota = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.bans.ban_networks["0.0.0.0/0"] = "everyone"  # type: ignore[index]
    assert isinstance(config.bans.banned_specs, tuple)


def test_hub_url_local_falls_back_to_hub_url(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "hub_url: https://hub.example.org/\n")
    assert config.hub.hub_url_local == ""
    assert config.hub.local_url == "https://hub.example.org/"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pod_quota: 7\n")
    config = load_config(None, env={"SWARMBINDER_CONFIG": str(path)})
    assert config.quotas.pod_quota == 7


def test_sections_validate_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="'concurrent_build_limit': must be 0 or more"):
        BuildConfig(concurrent_build_limit=-1)


# --- unknown keys --------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_option(tmp_path: Path) -> None:
    error = rejected(tmp_path, "pod_qouta: 100\n")
    assert str(error) == "config option 'pod_qouta': unknown option (did you mean 'pod_quota'?)"


def test_unknown_key_without_a_close_option(tmp_path: Path) -> None:
    error = rejected(tmp_path, "frobnicate: 1\n")
    assert str(error) == "config option 'frobnicate': unknown option"


def test_unknown_provider_key_suggests_within_the_section(tmp_path: Path) -> None:
    error = rejected(tmp_path, "github:\n  acces_token: x\n")
    assert error.option == "github.acces_token"
    assert "did you mean 'github.access_token'?" in str(error)


def test_dotted_keys_are_not_a_second_spelling_in_yaml(tmp_path: Path) -> None:
    assert rejected(tmp_path, "github.hostname: example.org\n").option == "github.hostname"


def test_provider_section_must_be_a_mapping(tmp_path: Path) -> None:
    error = rejected(tmp_path, "github: ghe.example.org\n")
    assert error.option == "github"
    assert "expected a mapping" in str(error)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'prot': unknown option \\(did you mean 'port'\\?\\)"):
        load_config(None, env={}, overrides={"prot": 1})


# --- types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "option", "problem"),
    [
        ("port: '8585'", "port", "expected an integer, got '8585' (string)"),
        ("pod_quota: true", "pod_quota", "expected an integer, got True (boolean)"),
        ("per_repo_quota: 1.5", "per_repo_quota", "expected an integer, got 1.5 (number)"),
        ("use_registry: 'yes'", "use_registry", "expected a boolean, got 'yes' (string)"),
        ("sticky_builds: 1", "sticky_builds", "expected a boolean, got 1 (integer)"),
        ("hub_url: 42", "hub_url", "expected a string, got 42 (integer)"),
        ("banned_specs: ^gh/evil/.*", "banned_specs", "mappings, got '^gh/evil/.*' (string)"),
        (
            "banned_specs: [1]",
            "banned_specs",
            "item 0: expected a regex or a {pattern, reason} mapping",
        ),
        (
            "allowed_specs: [1]",
            "allowed_specs",
            "item 0: expected a regex or a {pattern, provider} mapping, got 1 (integer)",
        ),
        (
            "allowed_specs: [{pattern: '^a/', provider: 'G H'}]",
            "allowed_specs",
            "item 0: provider must be a provider prefix such as gh or git, got 'G H'",
        ),
        ("ban_networks: [10.0.0.0/8]", "ban_networks", "expected a mapping, got ['10.0.0.0/8']"),
        ("build_node_selector: {a: 1}", "build_node_selector", "key 'a': expected a string"),
        ("log_level: 20", "log_level", "expected a string, got 20 (integer)"),
        ("build_memory_limit: lots", "build_memory_limit", "a size like '512M', got 'lots'"),
        ("spec_config: {pattern: x}", "spec_config", "expected a list of {pattern, config}"),
        ("spec_config: [{pattern: x}]", "spec_config", "item 0: expected a mapping with keys"),
        ("spec_config: [{pattern: 1, config: {}}]", "spec_config", "pattern must be a string"),
        ("spec_config: [{pattern: x, config: 1}]", "spec_config", "config must be a mapping"),
        ("github: {hostname: [a]}", "github.hostname", "expected a string"),
        ("service_log_max_size: 1k", "service_log_max_size", "must be 65536 or more"),
        ("service_log_max_files: 0", "service_log_max_files", "must be 1 or more"),
        ("image_retention_days: 0", "image_retention_days", "must be 1 or more"),
        ("image_retention_days: -3", "image_retention_days", "must be 1 or more"),
        ("image_retention_days: 1.5", "image_retention_days", "expected an integer"),
    ],
)
def test_wrong_types_are_rejected(tmp_path: Path, text: str, option: str, problem: str) -> None:
    error = rejected(tmp_path, text + "\n")
    assert error.option == option
    assert problem in str(error)


def test_null_is_allowed_only_for_optional_options(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "pod_quota: null\n").quotas.pod_quota is None
    assert "got None (null)" in str(rejected(tmp_path, "per_repo_quota: null\n"))


def test_template_variables_take_any_values(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "template_variables: {title: T, links: [a, b], n: 1}\n")
    assert config.pages.template_variables == {"title": "T", "links": ["a", "b"], "n": 1}


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        "pod_quota",
        "per_repo_quota",
        "per_repo_quota_higher",
        "concurrent_build_limit",
        "log_tail_lines",
        "build_memory_limit",
        "build_max_age",
        "build_cleanup_interval",
        "build_pending_timeout",
        "launch_timeout",
        "rate_limit",
        "rate_limit_period",
        "build_token_expires_seconds",
    ],
)
def test_negative_quotas_limits_and_intervals_are_rejected(tmp_path: Path, option: str) -> None:
    error = rejected(tmp_path, f"{option}: -1\n")
    assert error.option == option
    assert "or more, got -1" in str(error)


@pytest.mark.parametrize("option", ["build_cleanup_interval", "rate_limit_period", "build_max_age"])
def test_intervals_must_be_positive(tmp_path: Path, option: str) -> None:
    assert "must be 1 or more, got 0" in str(rejected(tmp_path, f"{option}: 0\n"))


def test_zero_quotas_are_allowed(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "pod_quota: 0\nper_repo_quota: 0\nconcurrent_build_limit: 0\n")
    assert config.quotas.pod_quota == 0


@pytest.mark.parametrize("port", [0, 65536])
def test_port_out_of_range(tmp_path: Path, port: int) -> None:
    assert rejected(tmp_path, f"port: {port}\n").option == "port"


@pytest.mark.parametrize(
    ("text", "option", "problem"),
    [
        ("ban_networks: {1.2.3.400/32: x}", "ban_networks", "'1.2.3.400/32' is not a network"),
        ("ban_networks: {10.0.0.1/8: x}", "ban_networks", "has host bits set"),
        ("trusted_proxies: [10.0.0.0/33]", "trusted_proxies", "'10.0.0.0/33' is not a network"),
        ("trusted_proxies: [proxy]", "trusted_proxies", "'proxy' is not a network"),
    ],
)
def test_bad_cidrs_are_rejected(tmp_path: Path, text: str, option: str, problem: str) -> None:
    error = rejected(tmp_path, text + "\n")
    assert error.option == option
    assert problem in str(error)


def test_good_cidrs_load(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        "ban_networks: {'2001:db8::/32': doc, 1.2.3.4/32: one}\ntrusted_proxies: ['::1/128']\n",
    )
    assert set(config.bans.ban_networks) == {"2001:db8::/32", "1.2.3.4/32"}
    assert config.server.trusted_proxies == ("::1/128",)


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("banned_specs: ['^gh/(evil']", "banned_specs"),
        ("allowed_specs: ['[a-']", "allowed_specs"),
        ("high_quota_specs: ['*big']", "high_quota_specs"),
        ("spec_config: [{pattern: '(', config: {quota: 1}}]", "spec_config"),
    ],
)
def test_bad_regexes_are_rejected(tmp_path: Path, text: str, option: str) -> None:
    error = rejected(tmp_path, text + "\n")
    assert error.option == option
    assert "is not a valid regular expression" in str(error)


def test_banned_specs_may_carry_a_reason(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path, "banned_specs:\n  - ^gh/a/.*\n  - {pattern: ^gh/b/.*, reason: Mining.}\n"
    )
    assert config.bans.banned_specs == ("^gh/a/.*", {"pattern": "^gh/b/.*", "reason": "Mining."})


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("{pattern: x, why: y}", "item 0: expected a mapping with keys pattern (optional reason)"),
        ("{reason: y}", "item 0: expected a mapping with keys pattern"),
        ("{pattern: x, reason: [y]}", "item 0: reason must be a string"),
        ("{pattern: '(', reason: y}", "item 0: '(' is not a valid regular expression"),
    ],
)
def test_bad_banned_spec_mappings(tmp_path: Path, item: str, problem: str) -> None:
    error = rejected(tmp_path, f"banned_specs: [{item}]\n")
    assert error.option == "banned_specs"
    assert problem in str(error)


@pytest.mark.parametrize("quota", ["-1", "true", "'5'"])
def test_spec_config_quota_must_be_a_count(tmp_path: Path, quota: str) -> None:
    error = rejected(tmp_path, f"spec_config: [{{pattern: x, config: {{quota: {quota}}}}}]\n")
    assert error.option == "spec_config"
    assert "item 0: quota must be an integer, 0 or more" in str(error)


def test_registry_credentials_go_together(tmp_path: Path) -> None:
    error = rejected(tmp_path, "registry_username: builder\n")
    assert str(error) == (
        "config option 'registry_password': registry_username and registry_password go together"
    )
    assert rejected(tmp_path, "registry_password: pw\n").option == "registry_username"
    error = rejected(tmp_path, "registry_username: 'a:b'\nregistry_password: pw\n")
    assert error.option == "registry_username"
    config = load_yaml(tmp_path, "registry_username: builder\nregistry_password: pw\n")
    assert (config.registry.registry_username, config.registry.registry_password) == (
        "builder",
        "pw",
    )


@pytest.mark.parametrize(
    ("given", "effective"), [("/", "/"), ("binder", "/binder/"), ("/a/b", "/a/b/"), ("c/", "/c/")]
)
def test_base_url_starts_and_ends_with_a_slash(tmp_path: Path, given: str, effective: str) -> None:
    assert load_yaml(tmp_path, f"base_url: '{given}'\n").server.base_url == effective


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("hub_url: ftp://hub.example.org", "hub_url"),
        ("hub_url: hub.example.org", "hub_url"),
        ("hub_url_local: jupyterhub:8000", "hub_url_local"),
        ("registry_url: registry:5000", "registry_url"),
        ("badge_base_url: 'javascript:alert(1)'", "badge_base_url"),
        ("github: {api_base_url: api.github.com}", "github.api_base_url"),
    ],
)
def test_urls_must_be_http(tmp_path: Path, text: str, option: str) -> None:
    error = rejected(tmp_path, text + "\n")
    assert error.option == option
    assert "is not an http:// or https:// URL" in str(error)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("store_url: mysql://db/binder", "is not a postgresql://USER@HOST[:PORT]/DATABASE URL"),
        ("store_url: postgresql://binder@db:99999/binder", "has an invalid port"),
        ("store_url: postgresql://binder@db/", "names no database"),
        ("store_url: postgresql://binder:hunter2@db/binder", "must not contain a password"),
    ],
)
def test_store_url_must_be_postgresql_without_password(
    tmp_path: Path, text: str, problem: str
) -> None:
    error = rejected(tmp_path, text + "\n")
    assert error.option == "store_url"
    assert problem in str(error)
    assert "hunter2" not in str(error)


def test_store_password_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = load_yaml(
        tmp_path,
        f"store_url: postgresql://binder@db/binder\nstore_password_file: {tmp_path / 'pw'}\n",
    )
    assert config.server.store_url == "postgresql://binder@db/binder"
    assert config.server.store_password == "s3cret"


def test_hub_and_badge_urls_get_a_trailing_slash(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "hub_url: http://hub:8000/hub\nbadge_base_url: https://b.org\n")
    assert config.hub.hub_url == "http://hub:8000/hub/"
    assert config.pages.badge_base_url == "https://b.org/"


def test_github_api_base_url_expands_hostname(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path, "github: {hostname: ghe.example.org, api_base_url: 'https://{hostname}/api/v3'}\n"
    )
    assert config.providers.github.api_base_url == "https://ghe.example.org/api/v3"


@pytest.mark.parametrize("prefix", ["Registry:5000/binder-", "registry:5000/my binder-"])
def test_image_prefix_rejects_upper_case_and_spaces(tmp_path: Path, prefix: str) -> None:
    error = rejected(tmp_path, f"image_prefix: '{prefix}'\n")
    assert error.option == "image_prefix"
    assert "must be lower case without spaces" in str(error)


def test_log_level_must_name_a_level(tmp_path: Path) -> None:
    error = rejected(tmp_path, "log_level: verbose\n")
    assert error.option == "log_level"
    assert "'verbose' is not a logging level name" in str(error)
    assert load_yaml(tmp_path, "log_level: debug\n").server.log_level == "DEBUG"


def test_docker_host_must_be_an_engine_url(tmp_path: Path) -> None:
    error = rejected(tmp_path, "docker_host: /var/run/docker.sock\n")
    assert error.option == "docker_host"
    config = load_yaml(tmp_path, "docker_host: unix:///var/run/docker.sock\n")
    assert config.builds.docker_host == "unix:///var/run/docker.sock"


def test_build_token_secret_must_be_hex(tmp_path: Path) -> None:
    error = rejected(tmp_path, "build_token_secret: not-hex\n")
    assert error.option == "build_token_secret"
    assert "must be a hex string" in str(error)


@pytest.mark.parametrize(
    ("given", "size"), [("0", 0), ("1024", 1024), ("512M", 512 * 1024**2), ("'1.5G'", 3 * 2**29)]
)
def test_build_memory_limit_takes_sizes(tmp_path: Path, given: str, size: int) -> None:
    config = load_yaml(tmp_path, f"build_memory_limit: {given}\n")
    assert config.builds.build_memory_limit == size


# --- the file itself -----------------------------------------------------------------------


def test_yaml_that_does_not_parse(tmp_path: Path) -> None:
    error = rejected(tmp_path, "pod_quota: 1\nbanned_specs: [a, b\n")
    assert error.option == "config_file"
    assert "is not valid YAML" in str(error)
    assert "line 3" in str(error)


@pytest.mark.parametrize("text", ["- pod_quota: 1\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    error = rejected(tmp_path, text)
    assert error.option == "config_file"
    assert "must hold a mapping of option names to values" in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'config_file': '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


# --- secrets from files --------------------------------------------------------------------


def test_secret_file_in_yaml_is_read_without_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "hub_api_token"
    secret.write_text("s3cret\n")
    config = load_yaml(tmp_path, f"hub_api_token_file: {secret}\n")
    assert config.hub.hub_api_token == "s3cret"


def test_provider_secret_file_in_yaml(tmp_path: Path) -> None:
    secret = tmp_path / "gh"
    secret.write_text("gh-from-file")
    config = load_yaml(tmp_path, f"github:\n  access_token_file: {secret}\n")
    assert config.providers.github.access_token == "gh-from-file"


def test_secret_file_from_environment(tmp_path: Path) -> None:
    secret = tmp_path / "admin"
    secret.write_text("admin-from-file\n")
    env = {"SWARMBINDER_ADMIN_TOKEN_FILE": str(secret)}
    assert load_config(None, env=env).admin.admin_token == "admin-from-file"
    env = {"SWARMBINDER_GITLAB_PRIVATE_TOKEN_FILE": str(secret)}
    assert load_config(None, env=env).providers.gitlab.private_token == "admin-from-file"


def test_missing_secret_file_is_rejected(tmp_path: Path) -> None:
    error = rejected(tmp_path, "registry_password_file: /run/secrets/no-such-secret\n")
    assert str(error) == (
        "config option 'registry_password_file': "
        "secret file '/run/secrets/no-such-secret' does not exist"
    )
    with pytest.raises(ConfigError, match="'build_token_secret_file': secret file"):
        load_config(None, env={"SWARMBINDER_BUILD_TOKEN_SECRET_FILE": str(tmp_path / "no")})


def test_value_and_file_together_are_rejected(tmp_path: Path) -> None:
    secret = tmp_path / "t"
    secret.write_text("x")
    error = rejected(tmp_path, f"hub_api_token: a\nhub_api_token_file: {secret}\n")
    assert "set either hub_api_token or hub_api_token_file, not both" in str(error)
    env = {"SWARMBINDER_HUB_API_TOKEN": "a", "SWARMBINDER_HUB_API_TOKEN_FILE": str(secret)}
    with pytest.raises(ConfigError, match="set either SWARMBINDER_HUB_API_TOKEN or"):
        load_config(None, env=env)


def test_only_secrets_come_from_files(tmp_path: Path) -> None:
    assert rejected(tmp_path, "port_file: /etc/port\n").option == "port_file"
    with pytest.raises(ConfigError, match="'port': SWARMBINDER_PORT_FILE: only secrets"):
        load_config(None, env={"SWARMBINDER_PORT_FILE": "/etc/port"})


# --- the environment and precedence --------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "text", "option", "value"),
    [
        ("SWARMBINDER_POD_QUOTA", "12", "pod_quota", 12),
        ("SWARMBINDER_POD_QUOTA", "", "pod_quota", None),
        ("SWARMBINDER_USE_REGISTRY", "false", "use_registry", False),
        ("SWARMBINDER_USE_REGISTRY", "0", "use_registry", False),
        ("SWARMBINDER_STICKY_BUILDS", "True", "sticky_builds", True),
        ("SWARMBINDER_STICKY_BUILDS", "1", "sticky_builds", True),
        ("SWARMBINDER_BANNER_MESSAGE", "yes", "banner_message", "yes"),
        (
            "SWARMBINDER_BANNED_SPECS",
            '["^gh/a/.*", "^gh/b/.*"]',
            "banned_specs",
            ("^gh/a/.*", "^gh/b/.*"),
        ),
        ("SWARMBINDER_BAN_NETWORKS", "{10.0.0.0/8: lab}", "ban_networks", {"10.0.0.0/8": "lab"}),
        ("SWARMBINDER_BUILD_MEMORY_LIMIT", "1G", "build_memory_limit", 1024**3),
        ("SWARMBINDER_GITHUB_HOSTNAME", "ghe.example.org", "github.hostname", "ghe.example.org"),
    ],
)
def test_environment_values_parse_by_type(var: str, text: str, option: str, value: Any) -> None:
    assert load_config(None, env={var: text}).value(option) == value


@pytest.mark.parametrize(
    ("var", "text", "problem"),
    [
        ("SWARMBINDER_PORT", "eighty", "'port': SWARMBINDER_PORT='eighty' is not an integer"),
        ("SWARMBINDER_AUTH_ENABLED", "maybe", "SWARMBINDER_AUTH_ENABLED='maybe' is not a boolean"),
        ("SWARMBINDER_BANNED_SPECS", "[a, b", "SWARMBINDER_BANNED_SPECS is not valid YAML or JSON"),
        ("SWARMBINDER_BANNED_SPECS", "^gh/a", "'banned_specs': expected a list"),
        ("SWARMBINDER_CONCURRENT_BUILD_LIMIT", "-3", "must be 0 or more, got -3"),
    ],
)
def test_bad_environment_values_are_rejected(var: str, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={var: text})
    assert problem in str(info.value)


def test_misspelt_environment_variable_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"SWARMBINDER_POD_QOUTA": "3"})
    assert info.value.option == "pod_qouta"
    assert "did you mean 'SWARMBINDER_POD_QUOTA'?" in str(info.value)


def test_other_tools_variables_are_ignored() -> None:
    env = {"SWARMBINDER_TESTGROUND_DIR": "/tmp/x", "SWARMBINDER_EXTRA_CA": "", "PORT": "1"}
    assert load_config(None, env=env) == Config()


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 1001\npod_quota: 5\nhub_url: https://file.example.org\n")
    env = {"SWARMBINDER_PORT": "1002", "SWARMBINDER_POD_QUOTA": "6"}

    from_file = load_config(path, env={})
    assert (from_file.server.port, from_file.quotas.pod_quota) == (1001, 5)

    from_env = load_config(path, env=env)
    assert (from_env.server.port, from_env.quotas.pod_quota) == (1002, 6)
    assert from_env.hub.hub_url == "https://file.example.org/"  # untouched by env
    assert from_env.builds.concurrent_build_limit == 32  # untouched by either

    from_flag = load_config(path, env=env, overrides={"port": 1003})
    assert (from_flag.server.port, from_flag.quotas.pod_quota) == (1003, 6)


def test_environment_secret_file_beats_file_value(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-env-file\n")
    path = tmp_path / "c.yaml"
    path.write_text("hub_api_token: from-yaml\n")
    config = load_config(path, env={"SWARMBINDER_HUB_API_TOKEN_FILE": str(secret)})
    assert config.hub.hub_api_token == "from-env-file"


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="'port': must be 1 or more, got -5"):
        load_config(None, env={}, overrides={"port": -5})


# --- show-config's view --------------------------------------------------------------------


def test_as_dict_masks_secrets_that_are_set() -> None:
    shown = load_config(EXAMPLE, env={"SWARMBINDER_ADMIN_TOKEN": "adm"}).as_dict(mask_secrets=True)
    assert shown["hub_api_token"] == "***"
    assert shown["build_token_secret"] == "***"
    assert shown["admin_token"] == "***"
    assert shown["github"]["access_token"] == "***"
    # unset secrets show as unset, not as a mask that suggests a value
    assert shown["registry_password"] is None
    assert shown["gitlab"]["private_token"] == ""
    assert "0123456789abcdef" not in json.dumps(shown)
    assert shown["hub_url"] == "https://hub.example.org/"


def test_as_dict_round_trips_through_a_config_file(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, env={})
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.as_dict(mask_secrets=False)))
    assert load_config(path, env={}) == config


# --- documentation -------------------------------------------------------------------------


def test_every_option_is_documented() -> None:
    names = [option.name for option in iter_options()]
    assert len(names) == len(set(names))
    assert set(Config().as_dict(mask_secrets=False)) == {name.split(".")[0] for name in names}
    for option in iter_options():
        assert option.help.strip(), option.name
        assert option.type_name, option.name


def test_docs_config_md_is_up_to_date() -> None:
    assert DOCS.read_text() == render_markdown(), (
        "docs/config.md is stale: run `python -m swarmbinder.config > docs/config.md`"
    )
