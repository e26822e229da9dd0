"""``swarmbinder backup``'s and ``restore``'s PostgreSQL part for real: ``pg_dump`` and
``pg_restore`` through ``docker exec`` in a container of the stack's PostgreSQL image (the
fixture of test_postgres_image.py: its own network and volume, removed afterwards)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_postgres_image import PASSWORD, image, psql, server  # noqa: F401 (fixtures)

from swarmbinder.stackctl.backup import dump_database, restore_database

pytestmark = pytest.mark.swarm


def test_a_database_round_trips_through_dump_and_restore(
    server: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    psql(server, PASSWORD, "create table bans (pattern text); insert into bans values ('kept/.*')")
    dump = tmp_path / "binder.pgdump"
    assert dump_database(server["name"], "binder", dump) > 0
    assert dump.stat().st_mode & 0o777 == 0o600
    # What happens after the backup (a ban removed, a table added) is undone by the restore.
    psql(server, PASSWORD, "delete from bans; create table later (x int)")
    restore_database(server["name"], "binder", dump)
    assert psql(server, PASSWORD, "select pattern from bans") == "kept/.*"
    # The dump's tables are back; one made after it stays (pg_restore drops only its own).
    assert psql(server, PASSWORD, "select count(*) from later") == "0"
