"""The layout telemetry-core wrote up to local schema version 6, frozen.

Until then the core's own migrations (``PRAGMA user_version`` 1 to 6) made the
event and queue tables too; they are now the ``sqlite`` storage plugin's, with
a version of their own. Tests build files "made by the previous layout" at each
of those versions from this copy, which never changes with the code under test.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["LEGACY_MIGRATIONS", "advance", "make_legacy_file"]

#: The statements of local migrations 1 to 6 as released (not to be edited).
LEGACY_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: events, recorded locally whether or not they are sent. Keyed by the
    # time-ordered UUIDv7 id without a rowid, so a record appends to one b-tree
    # and writes one page. No secondary index: per-type counts and the
    # retention cleanup are rare calls that may scan.
    (
        """CREATE TABLE telemetry_events (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            session_id TEXT,
            duration_ms REAL,
            success INTEGER,
            app TEXT NOT NULL,
            app_version TEXT,
            install_id TEXT NOT NULL,
            schema INTEGER NOT NULL,
            properties TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 2: stored configuration (read by config.read_stored_config).
    (
        """CREATE TABLE telemetry_config (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
    ),
    # 3: counters, and the queue (the seed's migration 006 plus leases and dead
    # letters). The rowid is the FIFO order: a plain INTEGER PRIMARY KEY always
    # appends (max + 1), and a fresh entry (next_retry_at = 0, live) is in no
    # secondary index, so enqueueing writes one page. Only the rarer states are
    # indexed: partial indexes hold the entries leased or waiting for a retry,
    # and the dead ones. The queue size is max(id) - queue.holes, where the
    # storage plugin keeps queue.holes (ids below the max that are free) up to
    # date on every delete, so no counter is written when recording.
    (
        """CREATE TABLE telemetry_counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO telemetry_counters(name, value) VALUES ('queue.holes', 0)",
        """CREATE TABLE telemetry_queue (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            retry_count INTEGER NOT NULL DEFAULT 0,
            next_retry_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            lease_owner TEXT,
            lease_expires_at REAL,
            dead INTEGER NOT NULL DEFAULT 0
        )""",
        # Live entries not due at once (leased, or waiting for a retry).
        """CREATE INDEX idx_telemetry_queue_next_retry_at
            ON telemetry_queue(next_retry_at, lease_expires_at)
            WHERE dead = 0 AND next_retry_at > 0""",
        "CREATE INDEX idx_telemetry_queue_dead ON telemetry_queue(id) WHERE dead = 1",
    ),
    # 4: the submission log.
    (
        """CREATE TABLE telemetry_submissions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            latency_ms REAL NOT NULL,
            batch_size INTEGER NOT NULL,
            accepted INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            status INTEGER,
            error TEXT,
            retry INTEGER NOT NULL DEFAULT 0,
            network_error INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # 5: the revised delivery policy (DESIGN §7). ``backoff_step`` is the
    # exponent of the next computed delay: it grows with failures the backoff
    # timed, not with those a server's Retry-After timed (``retry_count`` counts
    # both, for parking). ``dead_context`` is the delivery fingerprint in force
    # when an entry died; a service with another one revives it.
    (
        "ALTER TABLE telemetry_queue ADD COLUMN backoff_step INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE telemetry_queue ADD COLUMN dead_context TEXT",
    ),
    # 6: one durable write per event. A queued event lives in its queue entry
    # (``payload``, ``type``, ``recorded_at``), not in a second table, so that
    # recording appends one row to the queue's rowid b-tree (plus one leaf of the
    # ``event_id`` index, which keeps recording an id twice a no-op), as many
    # pages as a raw one-row insert into a table with a text primary key. The
    # events that are not queued (recorded locally only, delivered, or dropped
    # from a full queue) move to ``telemetry_stored_events``, which keeps only
    # what is queried (id, type, recording time) besides the payload; delivering
    # an entry moves its event there. The view ``telemetry_events`` keeps the old
    # name and columns (read from the payload) for every recorded event.
    # Existing entries take their event's payload along; entries whose event
    # was gone are dropped (they could never be sent) and the size is redone.
    (
        "ALTER TABLE telemetry_queue ADD COLUMN type TEXT",
        "ALTER TABLE telemetry_queue ADD COLUMN recorded_at REAL",
        "ALTER TABLE telemetry_queue ADD COLUMN payload BLOB",
        """DELETE FROM telemetry_queue WHERE NOT EXISTS
            (SELECT 1 FROM telemetry_events AS e WHERE e.id = telemetry_queue.event_id)""",
        """UPDATE telemetry_queue SET (type, recorded_at, payload) =
            (SELECT e.type, e.created_at, e.payload FROM telemetry_events AS e
             WHERE e.id = telemetry_queue.event_id)""",
        """UPDATE telemetry_counters
            SET value = (SELECT coalesce(max(id), 0) - count(*) FROM telemetry_queue)
            WHERE name = 'queue.holes'""",
        "CREATE UNIQUE INDEX idx_telemetry_queue_event_id ON telemetry_queue(event_id)",
        """CREATE TABLE telemetry_stored_events (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            payload BLOB NOT NULL
        ) WITHOUT ROWID""",
        """INSERT INTO telemetry_stored_events(id, type, created_at, payload)
            SELECT id, type, created_at, payload FROM telemetry_events AS e WHERE NOT EXISTS
            (SELECT 1 FROM telemetry_queue AS q WHERE q.event_id = e.id) ORDER BY id""",
        "DROP TABLE telemetry_events",
        """CREATE VIEW telemetry_events AS
            SELECT id, type, json_extract(p, '$.timestamp') AS timestamp,
                   json_extract(p, '$.session_id') AS session_id,
                   json_extract(p, '$.duration_ms') AS duration_ms,
                   json_extract(p, '$.success') AS success, json_extract(p, '$.app') AS app,
                   json_extract(p, '$.app_version') AS app_version,
                   json_extract(p, '$.install_id') AS install_id,
                   json_extract(p, '$.schema') AS schema,
                   json_extract(p, '$.properties') AS properties, payload, created_at
            FROM (SELECT id, type, payload, created_at, CAST(payload AS TEXT) AS p
                  FROM telemetry_stored_events
                  UNION ALL
                  SELECT event_id, type, payload, coalesce(recorded_at, created_at),
                         CAST(payload AS TEXT) FROM telemetry_queue)""",
    ),
)

#: The schema version this code writes.


def make_legacy_file(path: Path, version: int) -> sqlite3.Connection:
    """A file at ``user_version = version`` made by the previous layout; the
    returned autocommit connection may add rows and :func:`advance` it (close it
    before opening the file with the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    advance(conn, version)
    return conn


def advance(conn: sqlite3.Connection, version: int) -> None:
    """Apply the previous layout's migrations up to ``version``, as it did."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for step in LEGACY_MIGRATIONS[current:version]:
        conn.execute("BEGIN IMMEDIATE")
        for statement in step:
            conn.execute(statement)
        current += 1
        conn.execute(f"PRAGMA user_version = {current}")
        conn.execute("COMMIT")
