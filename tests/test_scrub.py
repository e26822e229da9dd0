"""Scrubbing known secrets, in the forms a leak takes, from logs, events, stored logs and the
admin API."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from swarmbinder.admin import AdminService
from swarmbinder.app import config_secrets, scrub_config_secrets
from swarmbinder.buildjob import BuildRequest
from swarmbinder.buildlogs import BuildLogRecorder, record_id
from swarmbinder.buildstatus import BuildStatus
from swarmbinder.buildwatch import Build
from swarmbinder.config import iter_options, load_config
from swarmbinder.events import BuildEvent, Phase
from swarmbinder.handlers.admin import add_admin_routes
from swarmbinder.keys import ADMIN, CONFIG, SCRUBBER
from swarmbinder.metrics import Metrics
from swarmbinder.policy.bans import BanList
from swarmbinder.policy.quotas import Quotas
from swarmbinder.scrub import (
    DEFAULT_SCRUBBER,
    REPLACEMENT,
    Scrubber,
    ScrubFilter,
    install_log_scrubbing,
)
from swarmbinder.store import BuildRecord, Store

# Its base64 has both '+' and '/', so the standard and URL-safe alphabets differ, and it has
# characters that URL and JSON encoding change.
PASSWORD = 'Kq>~9?zP!w-7>>"é'
OTHER = "an0ther-s3cret-value"
TEXT = "Step 3/12 : RUN pip install -r requirements.txt && echo done (exit code 0)"


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def urlsafe_b64(data: str) -> str:
    return base64.urlsafe_b64encode(data.encode()).decode()


def assert_hidden(scrubber: Scrubber, encoded: str, secret: str = PASSWORD) -> None:
    """``encoded`` holds the secret; scrubbed, at most the few characters that share bits with
    its neighbours are left of the secret's part."""
    out = scrubber.scrub(encoded)
    assert REPLACEMENT in out
    removed = len(encoded) - len(out.replace(REPLACEMENT, ""))
    assert removed >= len(secret.encode()) * 4 // 3 - 2, (encoded, out)


@pytest.fixture
def scrubber() -> Scrubber:
    return Scrubber([PASSWORD, OTHER])


def test_the_raw_secret_is_replaced_and_other_text_kept(scrubber: Scrubber) -> None:
    assert scrubber.scrub(f"login with {PASSWORD}, then {OTHER}.") == (
        f"login with {REPLACEMENT}, then {REPLACEMENT}."
    )
    assert scrubber.scrub(TEXT) == TEXT
    assert scrubber.scrub("") == ""


def test_url_encoded_and_json_escaped_forms(scrubber: Scrubber) -> None:
    for form in (quote(PASSWORD, safe=""), quote_plus(PASSWORD), json.dumps(PASSWORD)[1:-1]):
        assert form != PASSWORD
        assert scrubber.scrub(f"https://h/?pw={form}&x=1") == f"https://h/?pw={REPLACEMENT}&x=1"
    line = json.dumps({"message": f"pushing with {PASSWORD}"})
    assert PASSWORD not in json.loads(scrubber.scrub(line))["message"]


def test_base64_of_the_secret_alone(scrubber: Scrubber) -> None:
    standard, urlsafe = b64(PASSWORD), urlsafe_b64(PASSWORD)
    assert standard != urlsafe and standard.endswith("=")
    for form in (standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")):
        assert scrubber.scrub(f"auth={form};") == f"auth={REPLACEMENT};"


@pytest.mark.parametrize("prefix", ["", "x", "xy", "binder:", "user-name:"])
@pytest.mark.parametrize("suffix", ["", "!", "\n tail"])
def test_base64_of_the_secret_inside_a_longer_text(
    scrubber: Scrubber, prefix: str, suffix: str
) -> None:
    # Every prefix length mod 3 (the secret's place in base64's 3-byte groups) is covered.
    assert_hidden(scrubber, b64(prefix + PASSWORD + suffix))
    assert_hidden(scrubber, urlsafe_b64(prefix + PASSWORD + suffix))


def test_basic_auth_header(scrubber: Scrubber) -> None:
    header = f"Authorization: Basic {b64('binder:' + PASSWORD)}"
    out = scrubber.scrub(header)
    assert out.startswith("Authorization: Basic ") and REPLACEMENT in out
    assert_hidden(scrubber, header)


def docker_config(password: str) -> str:
    auth = b64(f"binder:{password}")
    return json.dumps({"auths": {"registry.example.org:5000": {"auth": auth}}})


@pytest.mark.parametrize("before", ["", "a", "ab"])
def test_a_docker_config_json_and_its_base64(scrubber: Scrubber, before: str) -> None:
    config = docker_config(PASSWORD)
    assert REPLACEMENT in scrubber.scrub(config)
    # The whole config.json encoded again, as a Kubernetes secret or a curious build prints it.
    twice = b64(before + config)
    out = scrubber.scrub(twice)
    assert REPLACEMENT in out
    # What is left of the secret one layer down is its base64 core; two layers down, that
    # core's own core.
    inner_core = len(PASSWORD.encode()) * 4 // 3 - 2
    assert len(twice) - len(out.replace(REPLACEMENT, "")) >= inner_core * 4 // 3 - 2


def test_secrets_added_and_discarded_at_run_time() -> None:
    scrubber = Scrubber()
    minted = "build-7f3a-registry-login"
    assert scrubber.scrub(minted) == minted
    scrubber.add(minted)
    assert scrubber.scrub(f"<{minted}>") == f"<{REPLACEMENT}>"
    assert scrubber.scrub(b64(minted)) == REPLACEMENT
    scrubber.add(minted)  # a second owner
    scrubber.discard(minted)
    assert minted in scrubber and scrubber.scrub(minted) == REPLACEMENT
    scrubber.discard(minted)
    assert minted not in scrubber and scrubber.scrub(minted) == minted
    scrubber.discard(minted)  # unknown by now: ignored


def test_empty_none_and_short_secrets() -> None:
    scrubber = Scrubber(["", None, "abc"])
    assert len(scrubber) == 0
    assert scrubber.scrub("abc abc") == "abc abc"
    scrubber.add("abcd")  # long enough as it is, too short for its encodings
    assert scrubber.scrub("abcd YWJjZA==") == f"{REPLACEMENT} YWJjZA=="
    scrubber.discard(None)
    scrubber.discard("")


def test_a_multi_line_secret_is_scrubbed_a_line_at_a_time() -> None:
    body = ["MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oW+VdXo4HiuToAoGCCqGSM49", "AwEHoUQDQgAE"]
    pem = "-----BEGIN EC PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END EC PRIVATE KEY-----\n"
    scrubber = Scrubber([pem])
    assert scrubber.scrub(f"line: {body[0]}") == f"line: {REPLACEMENT}"
    assert scrubber.scrub(f"line: {body[1]}") == f"line: {REPLACEMENT}"
    assert scrubber.scrub("-----BEGIN EC PRIVATE KEY-----") == "-----BEGIN EC PRIVATE KEY-----"


def test_scrub_obj_walks_json_like_values(scrubber: Scrubber) -> None:
    value = {
        "reason": f"push failed: {PASSWORD}",
        "log": ["ok", b64("binder:" + PASSWORD)],
        "pair": (1, OTHER),
        PASSWORD: 3,
        "nested": {"n": None, "f": 1.5, "b": True},
    }
    out = scrubber.scrub_obj(value)
    assert out["reason"] == f"push failed: {REPLACEMENT}"
    assert out["log"][0] == "ok" and REPLACEMENT in out["log"][1]
    assert out["pair"] == (1, REPLACEMENT)
    assert out[PASSWORD] == 3  # keys are the answer's structure
    assert out["nested"] == {"n": None, "f": 1.5, "b": True}
    assert value["reason"] == f"push failed: {PASSWORD}"  # the original is not changed
    assert Scrubber().scrub_obj(value) is value


def test_the_log_filter_scrubs_arguments_and_exceptions(scrubber: Scrubber) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(ScrubFilter(scrubber))
    logger = logging.getLogger("swarmbinder.test_scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("registry login %s failed (%d)", b64("binder:" + PASSWORD), 401)
        try:
            raise RuntimeError(f"cannot push with {PASSWORD}")
        except RuntimeError:
            logger.exception("push of %s failed", "img")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written = stream.getvalue()
    assert PASSWORD not in written and b64("binder:" + PASSWORD)[12:24] not in written
    assert "registry login YmluZGVyO" in written and "failed (401)" in written
    assert f"RuntimeError: cannot push with {REPLACEMENT}" in written
    assert "push of img failed" in written


def test_install_log_scrubbing_is_idempotent(scrubber: Scrubber) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        install_log_scrubbing(scrubber)
        install_log_scrubbing(scrubber)
        ours = [f for f in handler.filters if isinstance(f, ScrubFilter)]
        assert len(ours) == 1 and ours[0].scrubber is scrubber
    finally:
        root.removeHandler(handler)
        for each in root.handlers:
            for f in [f for f in each.filters if isinstance(f, ScrubFilter)]:
                each.removeFilter(f)


@pytest.fixture
def default_secret() -> Iterator[str]:
    DEFAULT_SCRUBBER.add(PASSWORD)
    try:
        yield PASSWORD
    finally:
        DEFAULT_SCRUBBER.discard(PASSWORD)


def test_build_events_are_scrubbed_when_made(default_secret: str) -> None:
    event = BuildEvent(Phase.BUILDING, f"echo {default_secret}\n", {"progress": {"a": "x"}})
    assert event.message == f"echo {REPLACEMENT}\n"
    failed = BuildEvent.failed(f"Build failed: auth {b64('binder:' + default_secret)}")
    assert REPLACEMENT in failed.message
    assert default_secret.encode() not in event.sse_frame
    assert b"[secret]" in event.sse_frame
    parsed = BuildEvent.log(Phase.BUILDING, json.dumps({"secret": default_secret}))
    assert REPLACEMENT in parsed.message and json.loads(parsed.message)["secret"] == REPLACEMENT


def test_metrics_repo_label_is_scrubbed(scrubber: Scrubber) -> None:
    metrics = Metrics(scrub=scrubber.scrub)
    metrics.start_build("Git", f"https://binder:{OTHER}@git.example.org/r.git").finish("success")
    text = generate_latest(metrics.registry).decode()
    assert OTHER not in text and f"https://binder:{REPLACEMENT}@git.example.org/r.git" in text


def test_config_secrets_come_from_the_options_marked_secret() -> None:
    config = load_config(
        env={},
        overrides={
            "hub_api_token": "hub-token-1234",
            "admin_token": "admin-token-1234",
            "registry_username": "binder",
            "registry_password": PASSWORD,
            "github.access_token": "gh-token-1234",
            "github.client_secret": "gh-client-secret",
            "gitlab.private_token": "gl-private-1234",
            "hub_url": "http://hub.example.org/",
        },
    )
    found = config_secrets(config)
    assert sorted(found) == sorted(
        [
            "hub-token-1234",
            "admin-token-1234",
            PASSWORD,
            "gh-token-1234",
            "gh-client-secret",
            "gl-private-1234",
        ]
    )
    assert any(o.secret for o in iter_options())


# -- the stored build log ------------------------------------------------------------------------


def fake_build(name: str = "svc") -> Build:
    request = BuildRequest(
        provider="git",
        spec="u/abc",
        repo_url="http://x/r.git",
        ref="abc",
        build_slug=name,
        image="reg/img:abc",
    )
    return Build(request, BuildStatus.RUNNING, tail_size=10, created=1000.0)


async def test_stored_log_lines_and_reasons_are_scrubbed(scrubber: Scrubber) -> None:
    async with await Store.open(":memory:") as store:
        recorder = BuildLogRecorder(store, scrubber=scrubber)
        await recorder.start()
        try:
            build = fake_build()
            recorder.started(build)
            recorder.log_lines(build.name, ["fine", f'{{"auth": "{b64("binder:" + PASSWORD)}"}}'])
            reason = f"push denied for {PASSWORD}"
            build.finish(BuildStatus.FAILED, BuildEvent.failed("failed"), reason)
            recorder.finished(build)
            await recorder.flush()
        finally:
            await recorder.close()
        lines = await store.build_log(record_id(build))
        record = await store.get_build(record_id(build))
    assert lines[0] == "fine" and REPLACEMENT in lines[1]
    assert b64("binder:" + PASSWORD)[10:20] not in lines[1]
    assert record is not None and record.reason == f"push denied for {REPLACEMENT}"


# -- the admin API -------------------------------------------------------------------------------


ADMIN_TOKEN = "admin-token-for-scrub-tests"


class NoLiveBuilds:
    @property
    def builds(self) -> list[Build]:
        return []

    def get(self, name: str) -> Build | None:
        return None

    def queue_position(self, name: str) -> int | None:
        return None

    async def cancel(self, name: str, reason: str = "") -> bool:
        return False


@pytest.fixture
async def admin_client() -> AsyncIterator[tuple[TestClient[Any, Any], Store]]:
    async with await Store.open(":memory:") as store:
        app = web.Application()
        app[CONFIG] = load_config(
            env={},
            overrides={
                "admin_token": ADMIN_TOKEN,
                "registry_username": "binder",
                "registry_password": PASSWORD,
            },
        )
        # A scrubber of its own, filled from the config as the real app's is.
        app[SCRUBBER] = Scrubber()
        app.cleanup_ctx.append(scrub_config_secrets)
        app[ADMIN] = AdminService(
            builds=NoLiveBuilds(),
            bans=BanList(store=store),
            quotas=Quotas(store=store),
            store=store,
        )
        add_admin_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield client, store


async def test_the_admin_api_answers_scrubbed(
    admin_client: tuple[TestClient[Any, Any], Store],
) -> None:
    client, store = admin_client
    # Written past the recorder, as an older version would have stored it.
    auth = b64("binder:" + PASSWORD)
    await store.record_build(
        BuildRecord(
            build_id="svc@1000.000",
            provider="git",
            spec="u/abc",
            repo_url="http://x/r.git",
            ref="abc",
            image="reg/img:abc",
            node="n1",
            status="failed",
            reason=f"push failed with auth {auth}",
            started_at=1000.0,
            finished_at=1010.0,
        )
    )
    await store.append_build_log("svc@1000.000", ["Step 1/2", f"password is {PASSWORD}"])

    resp = await client.get(
        "/api/admin/builds/svc", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert resp.status == 200
    body = await resp.text()
    assert PASSWORD not in body and json.dumps(PASSWORD)[1:-1] not in body
    assert auth[12:30] not in body
    answer = json.loads(body)
    assert answer["build"]["reason"].startswith("push failed with auth YmluZGVyO")
    assert REPLACEMENT in answer["build"]["reason"]
    assert answer["log"] == ["Step 1/2", f"password is {REPLACEMENT}"]

    resp = await client.get("/api/admin/builds", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200
    assert auth[12:30] not in await resp.text()
