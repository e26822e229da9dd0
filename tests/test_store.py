"""The store's API, on both backends: every test that takes ``place`` or ``store`` runs against
an SQLite file and against a real PostgreSQL server (``pg_support``); the rest are about SQLite's
file in particular."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pg_support import PASSWORD, PgServer

from swarmbinder.errors import SwarmbinderError
from swarmbinder.store import (
    AuditEntry,
    BanRecord,
    BuildRecord,
    QuotaOverride,
    Store,
    StoreClosed,
    StoreError,
)
from swarmbinder.store.schema import SCHEMA_VERSION


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "swarmbinder.sqlite"


@contextmanager
def side_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the file, as another process (the CLI, a backup) would open."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@dataclasses.dataclass
class Place:
    """Where a store lives, reopened as often as a test likes: an SQLite file, or a
    PostgreSQL database. ``sql`` runs a statement from the side, as another process would."""

    backend: str
    where: str
    sql: Callable[[str], list[tuple[str, ...]]]

    async def open(self, clock: Callable[[], float] = time.time) -> Store:
        if self.backend == "sqlite":
            return await Store.open(self.where, clock=clock)
        return await Store.connect_postgres(self.where, PASSWORD, clock=clock, wait_seconds=0)


def _sqlite_sql(path: Path) -> Callable[[str], list[tuple[str, ...]]]:
    def run(statement: str) -> list[tuple[str, ...]]:
        with side_connection(path) as conn:
            return [tuple(str(v) for v in row) for row in conn.execute(statement).fetchall()]

    return run


def _pg_sql(server: PgServer, database: str) -> Callable[[str], list[tuple[str, ...]]]:
    def run(statement: str) -> list[tuple[str, ...]]:
        out = server.psql(statement, database)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    return run


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, db_path: Path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", str(db_path), _sqlite_sql(db_path))
    server: PgServer = request.getfixturevalue("pg_server")
    url: str = request.getfixturevalue("pg_url")
    return Place("postgresql", url, _pg_sql(server, url.rsplit("/", 1)[1]))


@pytest.fixture
async def store(place: Place, clock: Clock) -> AsyncIterator[Store]:
    if place.backend == "sqlite":
        s = await Store.open(":memory:", clock=clock)
    else:
        s = await place.open(clock)
    yield s
    await s.close()


def build(build_id: str = "b1", **changes: object) -> BuildRecord:
    rec = BuildRecord(
        build_id=build_id,
        provider="gh",
        spec="org/repo/main",
        repo_url="https://github.com/org/repo",
        ref="0123abcd",
        image="registry.example/binder-org-2drepo:0123abcd",
        node="node-1",
        status="running",
        reason="",
        started_at=100.0,
        finished_at=None,
    )
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


# -- opening, closing, persistence ------------------------------------------------------------


async def test_open_creates_parent_dirs_wal_and_schema_version(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    with side_connection(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION == 4


async def test_ban_build_and_log_survive_a_restart(place: Place, clock: Clock) -> None:
    store = await place.open(clock)
    ban = await store.add_ban("spec", "^gh/evil/.*", "crypto mining", "alice")
    await store.record_build(build("b1", status="built", finished_at=150.0))
    await store.append_build_log("b1", ["one", "two"])
    await store.set_quota("pod", "", 40, None, "alice")
    await store.close()

    store = await place.open(clock)
    try:
        assert await store.list_bans() == [ban]
        assert await store.get_build("b1") == build("b1", status="built", finished_at=150.0)
        assert await store.build_log("b1") == ["one", "two"]
        assert [q.quota for q in await store.list_quotas(clock.now)] == [40]
        assert [e.action for e in await store.audit()] == ["quota.set", "ban.add"]
    finally:
        await store.close()


async def test_reopen_does_not_migrate_again(place: Place) -> None:
    await (await place.open()).close()
    await (await place.open()).close()
    assert place.sql("SELECT COUNT(*), MAX(version) FROM schema_version") == [
        ("1", str(SCHEMA_VERSION))
    ]


def _everything(place: Place) -> list[Any]:
    tables = ["schema_version", "bans", "quotas", "audit", "builds", "rate_windows"]
    return [place.sql(f"SELECT * FROM {table} ORDER BY 1") for table in tables]


async def test_a_newer_schema_is_refused_and_nothing_is_written(place: Place) -> None:
    store = await place.open()
    await store.add_ban("spec", "^gh/kept/.*", "", "alice")
    await store.close()
    place.sql("UPDATE schema_version SET version = 99")
    before = _everything(place)
    with pytest.raises(StoreError, match="schema version 99") as info:
        await place.open()
    assert place.where in str(info.value)
    assert "refusing to touch it" in str(info.value)
    assert _everything(place) == before


async def test_a_database_of_version_1_is_migrated_and_keeps_its_rows(place: Place) -> None:
    store = await place.open()
    ban = await store.add_ban("spec", "^gh/old/.*", "", "alice")
    await store.close()
    # As swarmbinder left it before version 2: without the tables replicas share (nor the
    # later ones).
    for table in ("rate_windows", "launch_claims", "policy_version", "image_use", "image_nodes"):
        place.sql(f"DROP TABLE {table}")
    place.sql("UPDATE schema_version SET version = 1")
    store = await place.open()
    try:
        assert await store.list_bans() == [ban]
        assert (await store.count_request("10.0.0.1", 3, 60, 1000)).remaining == 2
        assert await store.policy_version() == 0
        assert await store.images_last_used() == {}
        assert await store.image_nodes("reg/binder-a:1") == []
    finally:
        await store.close()
    assert place.sql("SELECT version FROM schema_version") == [(str(SCHEMA_VERSION),)]


async def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        await Store.open(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, SwarmbinderError)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for\n" * 200)
    with pytest.raises(StoreError, match="not a database") as info:
        await Store.open(path)
    assert str(path) in str(info.value)


async def test_a_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    path = tmp_path / "plain" / "store.sqlite"
    with pytest.raises(StoreError) as info:
        await Store.open(path)
    assert str(path) in str(info.value)


async def test_close_twice_and_use_after_close(store: Store) -> None:
    await store.close()
    await store.close()
    assert store.closed
    with pytest.raises(StoreClosed, match="used after close") as info:
        await store.list_bans()
    assert store.path in str(info.value)
    assert isinstance(info.value, StoreError)


async def test_close_finishes_calls_already_made(place: Place) -> None:
    store = await place.open()
    await store.record_build(build("b1"))
    append = asyncio.create_task(store.append_build_log("b1", ["last words"]))
    await asyncio.sleep(0)  # let the task submit its call
    await asyncio.gather(store.close(), store.close())
    await append
    async with await place.open() as reopened:
        assert await reopened.build_log("b1") == ["last words"]
    assert reopened.closed


# -- builds and logs --------------------------------------------------------------------------


async def test_record_and_get_build(store: Store) -> None:
    assert await store.get_build("nope") is None
    await store.record_build(build("b1"))
    assert await store.get_build("b1") == build("b1")


async def test_record_build_upserts_and_keeps_the_log(store: Store) -> None:
    await store.record_build(build("b1"))
    await store.append_build_log("b1", ["step 1"])
    done = build("b1", status="failed", reason="exit 1", finished_at=200.0)
    await store.record_build(done)
    assert await store.get_build("b1") == done
    assert await store.build_log("b1") == ["step 1"]
    assert len(await store.recent_builds()) == 1


async def test_record_build_rejects_an_unknown_status(store: Store) -> None:
    with pytest.raises(ValueError, match="status"):
        await store.record_build(build("b1", status="exploded"))


async def test_recent_builds_newest_first_and_limited(store: Store) -> None:
    for i, started in enumerate([300.0, 100.0, 200.0]):
        await store.record_build(build(f"b{i}", started_at=started))
    assert [b.build_id for b in await store.recent_builds()] == ["b0", "b2", "b1"]
    assert [b.build_id for b in await store.recent_builds(limit=2)] == ["b0", "b2"]
    assert await store.recent_builds(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await store.recent_builds(limit=-1)


async def test_builds_for_image(store: Store) -> None:
    await store.record_build(build("a1", image="img:a", started_at=1.0))
    await store.record_build(build("b1", image="img:b"))
    await store.record_build(build("a2", image="img:a", started_at=2.0))
    assert [b.build_id for b in await store.builds_for_image("img:a")] == ["a2", "a1"]
    assert await store.builds_for_image("img:none") == []


async def test_builds_with_id_prefix(store: Store) -> None:
    await store.record_build(build("svc-a@1.000", started_at=1.0))
    await store.record_build(build("svc-a@2.000", started_at=2.0))
    await store.record_build(build("svc-ab@3.000", started_at=3.0))
    await store.record_build(build("svc-b@4.000", started_at=4.0))
    found = await store.builds_with_id_prefix("svc-a@")
    assert [b.build_id for b in found] == ["svc-a@2.000", "svc-a@1.000"]
    assert [b.build_id for b in await store.builds_with_id_prefix("svc-a@", limit=1)] == [
        "svc-a@2.000"
    ]
    # no wildcards: % and _ are plain characters
    assert await store.builds_with_id_prefix("svc_a") == []
    assert await store.builds_with_id_prefix("%") == []


async def test_build_log_in_order_across_appends_and_tail(store: Store) -> None:
    await store.record_build(build("b1"))
    await store.append_build_log("b1", ['{"phase": "building", "message": "Step 1"}\n', "two"])
    await store.append_build_log("b1", ["three", "four", "five"])
    assert await store.build_log("b1") == [
        '{"phase": "building", "message": "Step 1"}\n',
        "two",
        "three",
        "four",
        "five",
    ]
    assert await store.build_log("b1", tail=2) == ["four", "five"]
    assert await store.build_log("b1", tail=99) == await store.build_log("b1")
    assert await store.build_log("b1", tail=0) == []
    assert await store.build_log("unknown") == []
    with pytest.raises(ValueError, match="tail"):
        await store.build_log("b1", tail=-1)


async def test_append_build_log_needs_a_record_and_a_sequence(store: Store) -> None:
    with pytest.raises(KeyError, match="ghost"):
        await store.append_build_log("ghost", ["boo"])
    await store.record_build(build("b1"))
    with pytest.raises(TypeError, match="not a str"):
        await store.append_build_log("b1", "one line")
    await store.append_build_log("b1", [])
    assert await store.build_log("b1") == []


async def test_ten_thousand_lines_append_in_one_transaction(place: Place) -> None:
    lines = [f'{{"phase": "building", "message": "line {i}"}}' for i in range(10_000)]
    bad_line = "Error binding parameter" if place.backend == "sqlite" else "invalid input"
    async with await place.open() as store:
        await store.record_build(build("big"))
        # A batch whose last line cannot be stored leaves nothing behind: the lines before it
        # were not committed one by one (a commit per line takes seconds for a build's log).
        with pytest.raises(StoreError, match=bad_line):
            await store.append_build_log("big", [*lines, object()])  # type: ignore[list-item]
        assert await store.build_log("big") == []
        await store.append_build_log("big", lines)
        assert await store.build_log("big") == lines
        assert await store.build_log("big", tail=3) == lines[-3:]


async def test_concurrent_appends_keep_each_writers_order(store: Store) -> None:
    build_ids = [f"b{i}" for i in range(6)]
    for build_id in build_ids:
        await store.record_build(build(build_id))

    async def writer(build_id: str, writer_id: int) -> None:
        for chunk in range(15):
            await store.append_build_log(build_id, [f"{writer_id}:{chunk}:{j}" for j in range(4)])

    await asyncio.gather(*(writer(b, w) for b in build_ids for w in range(3)))

    for build_id in build_ids:
        log = await store.build_log(build_id)
        assert len(log) == 3 * 15 * 4
        for w in range(3):
            mine = [line for line in log if line.startswith(f"{w}:")]
            assert mine == [f"{w}:{c}:{j}" for c in range(15) for j in range(4)]
        # One call's lines are never split by another writer's.
        for start in range(0, len(log), 4):
            assert len({line.rsplit(":", 1)[0] for line in log[start : start + 4]}) == 1


async def test_prune_deletes_old_finished_builds_and_their_logs(store: Store) -> None:
    await store.record_build(build("old", status="built", finished_at=100.0))
    await store.record_build(build("old-failed", status="failed", finished_at=199.0))
    await store.record_build(build("recent", status="built", finished_at=300.0))
    await store.record_build(build("running", started_at=50.0))
    for build_id in ["old", "old-failed", "recent", "running"]:
        await store.append_build_log(build_id, [f"{build_id} log"])

    assert await store.prune(older_than=200.0) == 2

    assert await store.get_build("old") is None
    assert await store.get_build("old-failed") is None
    assert await store.build_log("old") == []
    assert await store.build_log("recent") == ["recent log"]
    assert await store.build_log("running") == ["running log"]
    # A build recorded again under a pruned id does not inherit the old log.
    await store.record_build(build("old"))
    assert await store.build_log("old") == []
    assert await store.prune(older_than=200.0) == 0


# -- bans -------------------------------------------------------------------------------------


async def test_bans_add_list_remove_with_audit(store: Store, clock: Clock) -> None:
    spec_ban = await store.add_ban("spec", "^gh/evil/.*", "mining", "alice")
    clock.now += 10
    net_ban = await store.add_ban("network", "10.0.0.0/8", "abuse", "bob")
    assert spec_ban == BanRecord(spec_ban.ban_id, "spec", "^gh/evil/.*", "mining", "alice", 1e6)
    assert net_ban.created_at == 1e6 + 10
    assert await store.list_bans() == [spec_ban, net_ban]

    clock.now += 10
    assert await store.remove_ban(spec_ban.ban_id, "carol") is True
    assert await store.remove_ban(spec_ban.ban_id, "carol") is False
    assert await store.list_bans() == [net_ban]

    entries = await store.audit()
    assert [(e.actor, e.action) for e in entries] == [
        ("carol", "ban.remove"),
        ("bob", "ban.add"),
        ("alice", "ban.add"),
    ]
    assert entries[0].at == 1e6 + 20
    assert entries[0].detail == {
        "ban_id": spec_ban.ban_id,
        "kind": "spec",
        "pattern": "^gh/evil/.*",
        "reason": "mining",
    }


async def test_ban_ids_are_not_reused(store: Store) -> None:
    first = await store.add_ban("spec", "a", "", "alice")
    await store.remove_ban(first.ban_id, "alice")
    second = await store.add_ban("spec", "b", "", "alice")
    assert second.ban_id > first.ban_id


async def test_an_unknown_ban_kind_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="ban kind"):
        await store.add_ban("user", "x", "", "alice")  # type: ignore[arg-type]
    assert await store.audit() == []


async def test_patterns_are_stored_unvalidated(store: Store) -> None:
    ban = await store.add_ban("network", "not a cidr [", "", "alice")
    assert (await store.list_bans())[0].pattern == ban.pattern == "not a cidr ["


# -- quotas -----------------------------------------------------------------------------------


async def test_set_quota_upserts_and_clear_quota(store: Store, clock: Clock) -> None:
    first = await store.set_quota("repo", "^gh/big/.*", 10, None, "alice")
    assert first == QuotaOverride("repo", "^gh/big/.*", 10, None, "alice", 1e6)
    clock.now += 5
    await store.set_quota("repo", "^gh/big/.*", 20, 2e6, "bob")
    await store.set_quota("pod", "", 100, None, "bob")
    assert await store.list_quotas(clock.now) == [
        QuotaOverride("pod", "", 100, None, "bob", 1e6 + 5),
        QuotaOverride("repo", "^gh/big/.*", 20, 2e6, "bob", 1e6 + 5),
    ]

    assert await store.clear_quota("repo", "^gh/big/.*", "carol") is True
    assert await store.clear_quota("repo", "^gh/big/.*", "carol") is False
    assert [q.scope for q in await store.list_quotas(clock.now)] == ["pod"]

    entries = await store.audit()
    assert [e.action for e in entries] == ["quota.clear", "quota.set", "quota.set", "quota.set"]
    assert entries[0].detail == {
        "scope": "repo",
        "key": "^gh/big/.*",
        "quota": 20,
        "expires_at": 2e6,
    }
    assert entries[2].detail["previous"] == 10
    assert entries[3].detail["previous"] is None


async def test_quota_arguments_are_checked(store: Store) -> None:
    with pytest.raises(ValueError, match="scope"):
        await store.set_quota("node", "x", 1, None, "alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pod quota has no key"):
        await store.set_quota("pod", "x", 1, None, "alice")
    with pytest.raises(ValueError, match="spec pattern"):
        await store.set_quota("repo", "", 1, None, "alice")
    with pytest.raises(ValueError, match="non-negative"):
        await store.set_quota("pod", "", -1, None, "alice")
    with pytest.raises(ValueError, match="scope"):
        await store.clear_quota("node", "x", "alice")  # type: ignore[arg-type]
    assert await store.audit() == []


async def test_expired_quotas_are_hidden_then_deleted(store: Store, clock: Clock) -> None:
    await store.set_quota("repo", "^gh/short/.*", 5, 1e6 + 60, "alice")
    await store.set_quota("repo", "^gh/long/.*", 7, 1e6 + 3600, "alice")
    await store.set_quota("pod", "", 50, None, "alice")

    assert len(await store.list_quotas(1e6 + 59)) == 3
    # Asking about the past does not delete anything either.
    assert len(await store.list_quotas(1e6)) == 3
    in_force = await store.list_quotas(1e6 + 60)
    assert [q.key for q in in_force] == ["", "^gh/long/.*"]

    # Deleted, not just filtered: an earlier "now" no longer brings it back.
    assert [q.key for q in await store.list_quotas(1e6)] == ["", "^gh/long/.*"]
    expiry = (await store.audit(limit=1))[0]
    assert (expiry.actor, expiry.action) == ("system", "quota.expire")
    assert expiry.detail["key"] == "^gh/short/.*"
    assert expiry.detail["set_by"] == "alice"


# -- audit ------------------------------------------------------------------------------------


async def test_add_audit_and_read_newest_first(store: Store, clock: Clock) -> None:
    first = await store.add_audit("alice", "build.cancel", {"build_id": "b1", "why": ["stuck"]})
    assert first == AuditEntry(first.entry_id, 1e6, "alice", "build.cancel", first.detail)
    assert first.detail == {"build_id": "b1", "why": ["stuck"]}
    for i in range(5):
        clock.now += 1
        await store.add_audit("bob", "build.cancel", {"n": i})
    entries = await store.audit(limit=3)
    assert [e.detail["n"] for e in entries] == [4, 3, 2]
    assert [e.at for e in entries] == [1e6 + 5, 1e6 + 4, 1e6 + 3]
    assert (await store.audit())[-1] == first


async def test_a_detail_that_is_not_json_writes_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.add_audit("alice", "odd", {"when": object()})
    with pytest.raises(ValueError):
        await store.add_audit("alice", "odd", {"ratio": float("nan")})
    assert await store.audit() == []


# -- transactions -----------------------------------------------------------------------------


@contextmanager
def failing_audit(place: Place) -> Iterator[None]:
    """Make every audit insert fail inside the database, after the change it records has run."""
    if place.backend == "sqlite":
        place.sql(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'audit disk on fire'); END"
        )
    else:
        place.sql(
            "CREATE FUNCTION audit_fails() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'audit disk on fire'; END $$;"
            " CREATE TRIGGER audit_fails BEFORE INSERT ON audit"
            " FOR EACH ROW EXECUTE FUNCTION audit_fails()"
        )
    try:
        yield
    finally:
        if place.backend == "sqlite":
            place.sql("DROP TRIGGER audit_fails")
        else:
            place.sql("DROP TRIGGER audit_fails ON audit; DROP FUNCTION audit_fails()")


async def test_a_failed_audit_row_undoes_the_change(place: Place, clock: Clock) -> None:
    store = await place.open(clock)
    try:
        kept_ban = await store.add_ban("spec", "^gh/keep/.*", "", "alice")
        await store.set_quota("pod", "", 10, None, "alice")
        version = await store.policy_version()
        with failing_audit(place):
            with pytest.raises(StoreError, match="audit disk on fire") as info:
                await store.add_ban("spec", "^gh/new/.*", "", "mallory")
            assert place.where in str(info.value)
            with pytest.raises(StoreError):
                await store.remove_ban(kept_ban.ban_id, "mallory")
            with pytest.raises(StoreError):
                await store.set_quota("pod", "", 99, None, "mallory")
            with pytest.raises(StoreError):
                await store.clear_quota("pod", "", "mallory")
            with pytest.raises(StoreError):
                await store.add_audit("mallory", "build.cancel", {})

        assert await store.list_bans() == [kept_ban]
        assert [q.quota for q in await store.list_quotas(clock.now)] == [10]
        assert [e.actor for e in await store.audit()] == ["alice", "alice"]
        # Nor did the other replicas hear of a change.
        assert await store.policy_version() == version
        # The store is still usable after the rollbacks.
        assert (await store.add_ban("spec", "^gh/new/.*", "", "alice")).pattern == "^gh/new/.*"
    finally:
        await store.close()


async def test_a_failed_expiry_audit_keeps_the_quota(place: Place, clock: Clock) -> None:
    store = await place.open(clock)
    try:
        await store.set_quota("repo", "^gh/x/.*", 3, 1e6 + 1, "alice")
        with failing_audit(place), pytest.raises(StoreError):
            await store.list_quotas(1e6 + 2)
        assert place.sql("SELECT COUNT(*) FROM quotas") == [("1",)]
        assert await store.list_quotas(1e6 + 2) == []
    finally:
        await store.close()


# -- the event loop ---------------------------------------------------------------------------


async def test_a_call_waiting_on_the_database_does_not_block_the_loop(db_path: Path) -> None:
    store = await Store.open(db_path)
    try:
        with side_connection(db_path) as other:
            # Another process holds the write lock, so add_ban waits in SQLite's busy handler.
            other.execute("BEGIN IMMEDIATE")
            add = asyncio.create_task(store.add_ban("spec", "^gh/x/.*", "", "alice"))
            ticks = 0
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                await asyncio.sleep(0)
                ticks += 1
            waiting = not add.done()
            other.execute("COMMIT")
        ban = await add
    finally:
        await store.close()
    assert waiting
    assert ticks > 100
    assert ban.pattern == "^gh/x/.*"


# -- shared state -----------------------------------------------------------------------------


async def test_rate_windows_count_down_reset_and_are_forgotten(store: Store) -> None:
    first = await store.count_request("10.0.0.1", 2, 60, 1000)
    assert (first.remaining, first.reset) == (1, 1060)
    assert (await store.count_request("10.0.0.1", 2, 60, 1030)).remaining == 0
    # Refused requests keep counting; the window does not slide.
    assert (await store.count_request("10.0.0.1", 2, 60, 1060)).remaining == -1
    fresh = await store.count_request("10.0.0.1", 2, 60, 1061)
    assert (fresh.remaining, fresh.reset) == (1, 1121)
    await store.count_request("10.0.0.2", 2, 60, 1000)
    assert await store.forget_rate_windows(1100) == 1
    assert (await store.count_request("10.0.0.2", 2, 60, 1101)).remaining == 1


async def test_the_counters_skip_postgresqls_write_ahead_log(place: Place) -> None:
    await (await place.open()).close()
    if place.backend == "sqlite":
        pytest.skip("SQLite has no unlogged tables")
    persistence = place.sql(
        "SELECT relname, relpersistence FROM pg_class WHERE relname IN"
        " ('rate_windows', 'launch_claims', 'bans', 'policy_version') ORDER BY relname"
    )
    # Per-request counters need no disk flush; bans and the policy version do.
    assert persistence == [
        ("bans", "p"),
        ("launch_claims", "u"),
        ("policy_version", "p"),
        ("rate_windows", "u"),
    ]


async def test_image_use_never_moves_back_and_is_forgotten(place: Place) -> None:
    store = await place.open()
    try:
        await store.touch_images(["reg/binder-a:1"], 700.0)
        await store.touch_images(["reg/binder-a:1", "reg/binder-b:2"], 500.0)
        assert await store.images_last_used() == {
            "reg/binder-a:1": 700.0,  # an older time never replaces a later one
            "reg/binder-b:2": 500.0,
        }
        await store.touch_images(["reg/binder-b:2"], 900.0)
        await store.forget_images(["reg/binder-a:1"])
        assert await store.images_last_used() == {"reg/binder-b:2": 900.0}
    finally:
        await store.close()


async def test_image_nodes_survive_a_restart_newest_first_and_are_forgotten(place: Place) -> None:
    store = await place.open()
    try:
        await store.note_image_nodes([("reg/binder-a:1", "node2")], 500.0)
        seen = [("reg/binder-a:1", "node3"), ("reg/binder-b:2", "node2")]
        await store.note_image_nodes(seen, 600.0)
        await store.note_image_nodes([("reg/binder-a:1", "node3")], 550.0)  # never moves back
    finally:
        await store.close()
    store = await place.open()
    try:
        assert await store.image_nodes("reg/binder-a:1") == ["node3", "node2"]
        assert await store.image_nodes("reg/binder-a") == []  # the whole name, no prefix
        assert await store.forget_image_nodes(seen_before=550.0) == 1
        assert await store.image_nodes("reg/binder-a:1") == ["node3"]
        await store.forget_images(["reg/binder-a:1"])  # deleted from the registry
        assert await store.image_nodes("reg/binder-a:1") == []
        assert await store.image_nodes("reg/binder-b:2") == ["node2"]
    finally:
        await store.close()
