"""``block_build_user_agents``: /build refuses self-declared bots with 403 and says why.

Hostile clients write their own User-Agent: none at all, a huge one, one built to make a
backtracking regex run for ever. The rule is matched on a capped length, and a regex that does
not compile stops the start (one line naming the option, exit 2)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_build_handler import SSE, FakeAdmission, FakeFlow, make_app
from test_cli import one_error_line, swarmbinder

from swarmbinder.config import load_config
from swarmbinder.errors import ConfigError
from swarmbinder.events import BuildEvent, parse_sse
from swarmbinder.policy.useragents import MATCHED_LENGTH, UserAgentBlock, UserAgentBlocked

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)",
    "Sogou web spider/4.0",
    "my-CRAWLER",
)


def test_binderhubs_default_refuses_bots_and_lets_browsers_through() -> None:
    block = UserAgentBlock(load_config(env={}).bans.block_build_user_agents)
    for bot in BOTS:
        with pytest.raises(UserAgentBlocked) as info:
            block.check({"User-Agent": bot})
        assert info.value.status_code == 403
        assert info.value.user_message.startswith("Bots not allowed")
    block.check({"User-Agent": CHROME})
    block.check({"User-Agent": "Python/3.12 aiohttp/3.10"})
    block.check({})  # no header: the empty string, which the default lets through


def test_matched_from_the_start_case_insensitively_as_binderhub() -> None:
    block = UserAgentBlock(["curl/", "^$"])
    with pytest.raises(UserAgentBlocked):
        block.check({"User-Agent": "CURL/8.5.0"})
    block.check({"User-Agent": "not curl/8.5.0"})  # re.match: from the start only
    with pytest.raises(UserAgentBlocked):
        block.check({})  # ^$ refuses clients that send no User-Agent
    with pytest.raises(UserAgentBlocked):
        block.check({"User-Agent": ""})


def test_an_empty_list_lets_everyone_build() -> None:
    UserAgentBlock([]).check({"User-Agent": "Googlebot"})


def test_only_the_first_characters_of_a_huge_header_are_matched() -> None:
    # A regex that backtracks quadratically when no "z" comes: on a 100 kB header it would
    # take minutes (10^10 steps), on the capped length a millisecond.
    block = UserAgentBlock([r".*.*z"])
    started = time.monotonic()
    block.check({"User-Agent": "x" * 100_000})
    assert time.monotonic() - started < 1.0
    # the default rules on a huge header: linear, and a "bot" past the cap is not seen
    default = UserAgentBlock(load_config(env={}).bans.block_build_user_agents)
    started = time.monotonic()
    default.check({"User-Agent": "x" * 100_000 + "bot"})
    assert time.monotonic() - started < 0.5
    with pytest.raises(UserAgentBlocked):
        default.check({"User-Agent": "x" * (MATCHED_LENGTH - 3) + "bot"})


def test_a_regex_that_does_not_compile_names_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={"block_build_user_agents": [".*bot.*", "(unclosed"]})
    message = str(info.value)
    assert "'block_build_user_agents'" in message and "(unclosed" in message
    assert "\n" not in message


def test_check_config_exits_2_on_a_bad_regex_in_binderhubs_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("config:\n  BinderHub:\n    block_build_user_agents: ['[bot']\n")
    line = one_error_line(swarmbinder("check-config", str(path)))
    assert line.startswith("swarmbinder: error: config option 'block_build_user_agents': ")
    assert line.endswith("(set by BinderHub's config.BinderHub.block_build_user_agents)")


def test_binderhubs_section_sets_the_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("config:\n  BinderHub:\n    block_build_user_agents: ['^curl/', '.*bot.*']\n")
    config = load_config(path, env={})
    assert config.bans.block_build_user_agents == ("^curl/", ".*bot.*")
    assert config.ignored_binderhub_options == ()


# --- over HTTP: a real aiohttp server and client ---------------------------------------------


async def _get(client: TestClient[Any, Any], user_agent: str | None) -> tuple[int, list[Any]]:
    headers = dict(SSE)
    if user_agent is not None:
        headers["User-Agent"] = user_agent
    # skip_auto_headers: without a User-Agent of ours, aiohttp would send its own
    response = await client.get(
        "/build/gh/org/repo/main", headers=headers, skip_auto_headers=["User-Agent"]
    )
    return response.status, parse_sse(await response.read())


async def test_build_refuses_a_blocked_user_agent_with_403_and_a_failed_event(
    aiohttp_client: Any,
) -> None:
    flow = FakeFlow([BuildEvent.waiting()])
    admission = FakeAdmission()
    app = make_app(flow, admission, block_build_user_agents=[".*bot.*", "^$"])
    client: TestClient[Any, Any] = await aiohttp_client(app)

    status, events = await _get(client, BOTS[0])
    assert status == 403
    assert events == [
        {
            "phase": "failed",
            "status_code": 403,
            "message": "Bots not allowed: this client's User-Agent may not start builds. "
            "Open the launch link in a web browser.\n",
        }
    ]
    status, _ = await _get(client, None)  # no header at all, refused by ^$
    assert status == 403
    status, _ = await _get(client, "B" * 7000 + "bot")  # past the cap: not matched
    assert status == 200
    # refused before the Accept check, admission and the flow, as BinderHub orders them
    response = await client.get("/build/gh/org/repo/main", headers={"User-Agent": "Googlebot"})
    assert response.status == 403
    assert len(admission.calls) == 1 and len(flow.requests) == 1

    status, events = await _get(client, CHROME)
    assert status == 200 and events[0]["phase"] == "waiting"
