"""The store's schema, as the migrations that build it.

``schema_version`` in the file holds its version; :data:`MIGRATIONS` lists the statements that
bring version ``n`` to ``n + 1``, and :mod:`swarmbinder.store` runs the ones a file lacks when it
opens it. Migrations are forward only and never edited once released: a file written by a newer
swarmbinder is refused rather than guessed at, and a change is a new migration appended here.

The ``CHECK`` of ``builds.status`` spells the values of
:class:`~swarmbinder.buildstatus.BuildStatus` as they were when it was written.
"""

from __future__ import annotations

#: ``MIGRATIONS[n]`` brings the schema from version ``n`` to ``n + 1``. Append only.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE builds (
            build_id    TEXT PRIMARY KEY,
            provider    TEXT NOT NULL,
            spec        TEXT NOT NULL,
            repo_url    TEXT NOT NULL,
            ref         TEXT NOT NULL,
            image       TEXT NOT NULL,
            node        TEXT NOT NULL,
            status      TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'built', 'failed', 'cancelled')),
            reason      TEXT NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL
        )
        """,
        "CREATE INDEX builds_by_started ON builds (started_at)",
        "CREATE INDEX builds_by_image ON builds (image, started_at)",
        "CREATE INDEX builds_by_finished ON builds (finished_at) WHERE finished_at IS NOT NULL",
        # Clustered by (build_id, seq): reading one build's log is one range scan.
        """
        CREATE TABLE build_logs (
            build_id TEXT NOT NULL REFERENCES builds (build_id) ON DELETE CASCADE,
            seq      INTEGER NOT NULL,
            line     TEXT NOT NULL,
            PRIMARY KEY (build_id, seq)
        ) WITHOUT ROWID
        """,
        # AUTOINCREMENT so a removed ban's id is never reused: audit rows refer to it.
        """
        CREATE TABLE bans (
            ban_id     INTEGER PRIMARY KEY AUTOINCREMENT,
            kind       TEXT NOT NULL CHECK (kind IN ('spec', 'network')),
            pattern    TEXT NOT NULL,
            reason     TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE quotas (
            scope      TEXT NOT NULL CHECK (scope IN ('repo', 'pod')),
            key        TEXT NOT NULL,
            quota      INTEGER NOT NULL CHECK (quota >= 0),
            expires_at REAL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (scope, key)
        )
        """,
        """
        CREATE TABLE audit (
            entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
            at       REAL NOT NULL,
            actor    TEXT NOT NULL,
            action   TEXT NOT NULL,
            detail   TEXT NOT NULL
        )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
