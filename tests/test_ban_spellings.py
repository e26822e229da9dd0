"""One banned repository, a corpus of its spellings, through the whole app: every one refused.

The real app (``create_app``) with its engine, registry and hub pointing nowhere: bans are
matched before anything is asked of them, so a refusal needs none of them, and a spec that gets
past the bans fails later, at the registry, which is how the test tells the two apart. Paths
are sent byte for byte (``encoded=True``): the client must not tidy a spelling up first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from swarmbinder.app import create_app
from swarmbinder.config import load_config
from swarmbinder.events import SSEDecoder

SSE = {"Accept": "text/event-stream"}
TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOWHERE = "http://127.0.0.1:9"
SHA = "0123456789abcdef0123456789abcdef01234567"
#: One pattern for every scheme git may use: the canonical URL keeps the scheme.
BAN = r"^[a-z+]+://github\.com/org/repo$"
REFUSAL = "is not allowed to launch. Please contact admins for more info! (abuse)"

#: Spellings of https://github.com/org/repo that pass every check before the bans.
BANNED_SPELLINGS = [
    "gh/org/repo/HEAD",
    "gh/ORG/REPO/HEAD",
    "gh/Org/Repo.git/main",
    "gh/org/repo/HEAD/",
    f"gh/org/repo/{SHA}",
    "git/https%3A%2F%2Fgithub.com%2Forg%2Frepo/HEAD",
    "git/HTTPS%3A%2F%2FGitHub.COM.%2Forg%2Frepo.git%2F/HEAD",
    "git/https%3A%2F%2Fgithub.com%3A443%2Forg%2Frepo/HEAD",
    "git/http%3A%2F%2Fgithub.com%3A80%2Forg%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Forg%2F%2572epo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2F%256F%2572%2567%2Frepo/main",
    "git/https%3A%2F%2Fsomeone%40github.com%2Forg%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Forg%2Frepo%2F/HEAD",
    "git/https%3A%2F%2Fgithub.com%2F%2Forg%2Frepo.git/HEAD",
    "git/git%40github.com%3Aorg%2Frepo.git/HEAD",
    "git/ssh%3A%2F%2Fgit%40github.com%3A22%2Forg%2Frepo/HEAD",
    f"git/git%3A%2F%2Fgithub.com%3A9418%2Forg%2Frepo.git/{SHA}",
]

#: Spellings that cannot be resolved anyway: refused with 400 before any ban is consulted,
#: never let through.
UNRESOLVABLE_SPELLINGS = [
    "git/https%3A%2F%2Fgithub.com%2Forg%2F.%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Fa%2F..%2Forg%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Fa%2F%2e%2e%2Forg%2Frepo/HEAD",
    "gh/a/../org/repo/HEAD",
    "gh/org/./repo/HEAD",
    "gh/org/%72epo/HEAD",
    # escaped twice: the git provider decodes once, and the server would decode the rest
    "git/https%3A%2F%2Fgithub.com%2Fx%2F%252e%252e%2Forg%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Forg%2F%252E%2Frepo/HEAD",
    "git/https%3A%2F%2Fgithub.com%2Fx%2F%25252e%25252E%2Forg%2Frepo/HEAD",
]

#: Not the banned repository: gets past the bans (a full sha needs no lookup) to the registry.
UNRELATED = [
    f"git/https%3A%2F%2Fgithub.com%2Forg%2Frepo2/{SHA}",
    f"git/https%3A%2F%2Fgithub.com%2Forg%2Frepo%2Fmore/{SHA}",
    f"git/https%3A%2F%2Fgitlab.com%2Forg%2Frepo/{SHA}",
]


@pytest.fixture
async def binder(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = {
        "registry_url": NOWHERE,
        "hub_url": NOWHERE,
        "hub_api_token": "h" * 32,
        "docker_host": f"unix://{tmp_path}/no-engine.sock",
        "store_path": str(tmp_path / "store.sqlite"),
        "rate_limit": 0,
        "admin_token": TOKEN,
        "banned_specs": [{"pattern": BAN, "reason": "abuse"}],
    }
    async with TestClient(TestServer(create_app(load_config(env={}, overrides=config)))) as c:
        yield c


async def last_event(client: TestClient[Any, Any], route: str, path: str) -> dict[str, Any]:
    """The final event of one request to ``route`` + ``path``, sent exactly as written."""
    url = URL(str(client.make_url("/")) + route + path, encoded=True)
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    async with client.session.get(url, headers=SSE) as resp:
        async for chunk in resp.content.iter_any():
            events.extend(decoder.feed(chunk))
            if events and events[-1]["phase"] in ("ready", "failed"):
                break
    assert events, path
    return events[-1]


@pytest.mark.parametrize("path", BANNED_SPELLINGS)
async def test_every_spelling_of_a_banned_repository_is_refused(
    binder: TestClient[Any, Any], path: str
) -> None:
    event = await last_event(binder, "build/", path)
    assert event["phase"] == "failed", event
    assert event["status_code"] == 403, event
    assert REFUSAL in event["message"], event


@pytest.mark.parametrize("path", UNRESOLVABLE_SPELLINGS)
async def test_a_spelling_that_does_not_resolve_is_a_400_not_a_launch(
    binder: TestClient[Any, Any], path: str
) -> None:
    event = await last_event(binder, "build/", path)
    assert event["phase"] == "failed", event
    assert event["status_code"] == 400, event


async def test_dot_segments_get_the_same_400_on_build_as_on_v2(
    binder: TestClient[Any, Any],
) -> None:
    path = "git/https%3A%2F%2Fgithub.com%2Fa%2F..%2Forg%2Frepo/HEAD"
    event = await last_event(binder, "build/", path)
    page = await binder.session.get(
        URL(str(binder.make_url("/")) + "v2/" + path, encoded=True), headers={"Accept": "text/html"}
    )
    assert page.status == 400
    assert event["message"].startswith("Spec must not contain '.' or '..' path segments")
    assert "Spec must not contain &#39;.&#39; or &#39;..&#39; path segments" in await page.text()


@pytest.mark.parametrize("path", UNRELATED)
async def test_an_unrelated_repository_is_not_refused(
    binder: TestClient[Any, Any], path: str
) -> None:
    event = await last_event(binder, "build/", path)
    # It got as far as the registry, which is not there.
    assert event["phase"] == "failed", event
    assert "not allowed to launch" not in event["message"], event
    assert event["status_code"] != 403, event


async def test_an_admin_ban_with_the_provider_prefix_matches(
    binder: TestClient[Any, Any],
) -> None:
    # The console's form suggests this form; matched only after the prefix, it never applied.
    resp = await binder.post(
        "/api/admin/bans",
        json={"kind": "spec", "pattern": "^git/.*minimal.*", "reason": "mining"},
        headers=AUTH,
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert "canonical repository URL" in body["spec_patterns"]
    for path in (
        f"git/https%3A%2F%2Fgit.example.org%2Fminimal.git/{SHA}",
        f"git/HTTPS%3A%2F%2Fgit.example.org%2FMinimal/{SHA}",
    ):
        event = await last_event(binder, "build/", path)
        assert event["status_code"] == 403, (path, event)
        assert "(mining)" in event["message"]
    # Matched against the spec as written, such a pattern misses an escaped spelling; one
    # written against the canonical URL does not (docs/admin.md says which to use).
    escaped = f"git/https%3A%2F%2Fgit.example.org%2F%256Dinimal/{SHA}"
    assert (await last_event(binder, "build/", escaped))["status_code"] == 503
    await binder.post(
        "/api/admin/bans",
        json={"kind": "spec", "pattern": r"https://git\.example\.org/minimal$"},
        headers=AUTH,
    )
    assert (await last_event(binder, "build/", escaped))["status_code"] == 403
    listed = await (await binder.get("/api/admin/bans", headers=AUTH)).json()
    assert [b["pattern"] for b in listed["bans"]] == [
        BAN,
        "^git/.*minimal.*",
        r"https://git\.example\.org/minimal$",
    ]
    assert "with it (gh/org/repo/HEAD)" in listed["spec_patterns"]


async def test_a_refused_spec_ban_says_which_forms_a_pattern_takes(
    binder: TestClient[Any, Any],
) -> None:
    resp = await binder.post(
        "/api/admin/bans", json={"kind": "spec", "pattern": "org/(repo"}, headers=AUTH
    )
    assert resp.status == 400
    body = await resp.json()
    assert "not a valid regular expression" in body["message"]
    assert "without the provider prefix" in body["help"]
    network = await binder.post(
        "/api/admin/bans", json={"kind": "network", "pattern": "10.0.0.1/8"}, headers=AUTH
    )
    assert network.status == 400
    assert "help" not in await network.json()
