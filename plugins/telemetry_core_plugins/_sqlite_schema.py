"""The tables of the ``sqlite`` storage plugin and their migrations.

The plugin keeps its event table and its queue in the client's local SQLite
file, next to the core's tables (configuration, counters, submission log). Their
schema version is recorded in the file under the part name :data:`PART` (see
:meth:`telemetry_core.protocols.SQLiteDatabase.migrate_part`) and brought
forward when a :class:`~telemetry_core_plugins.sqlite_storage.SQLiteQueue` opens.

Up to local schema version 6, telemetry-core's own migrations made these
tables; a file made then has no version recorded for them, and
:func:`adopt` reads it from the tables (each of those migrations made its
tables in one transaction, so the tables tell which ran).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final

from telemetry_core.errors import StorageError

if TYPE_CHECKING:
    from telemetry_core.protocols import SQLiteDatabase

__all__ = ["MIGRATIONS", "PART", "SCHEMA_VERSION", "adopt", "open_tables"]

#: The name the plugin's schema version is recorded under.
PART: Final = "sqlite"

#: Forward-only migrations; step ``n`` (1-based) brings the plugin's tables to
#: version ``n``. Never edit a released step, append a new one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1 (local migration 1 before): events, recorded locally whether or not they
    # are sent. Keyed by the time-ordered UUIDv7 id without a rowid, so a record
    # appends to one b-tree and writes one page. No secondary index: per-type
    # counts and the retention cleanup are rare calls that may scan.
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
    # 2 (the queue of local migration 3 before): the queue (the seed's
    # migration 006 plus leases and dead letters) and its size counter, kept in
    # the core's counters. The rowid is the FIFO order: a plain INTEGER
    # PRIMARY KEY always appends (max + 1), and a fresh entry (next_retry_at =
    # 0, live) is in no secondary index, so enqueueing writes one page. Only
    # the rarer states are indexed: partial indexes hold the entries leased or
    # waiting for a retry, and the dead ones. The queue size is max(id) -
    # queue.holes, where this plugin keeps queue.holes (ids below the max that
    # are free) up to date on every delete, so no counter is written when
    # recording.
    (
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
    # 3 (local migration 5 before): the revised delivery policy (DESIGN §7).
    # ``backoff_step`` is the exponent of the next computed delay: it grows with
    # failures the backoff timed, not with those a server's Retry-After timed
    # (``retry_count`` counts both, for parking). ``dead_context`` is the
    # delivery fingerprint in force when an entry died; a service with another
    # one revives it.
    (
        "ALTER TABLE telemetry_queue ADD COLUMN backoff_step INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE telemetry_queue ADD COLUMN dead_context TEXT",
    ),
    # 4 (local migration 6 before): one durable write per event. A queued event
    # lives in its queue entry (``payload``, ``type``, ``recorded_at``), not in
    # a second table, so that recording appends one row to the queue's rowid
    # b-tree (plus one leaf of the ``event_id`` index, which keeps recording an
    # id twice a no-op), as many pages as a raw one-row insert into a table with
    # a text primary key. The events that are not queued (recorded locally only,
    # delivered, or dropped from a full queue) move to
    # ``telemetry_stored_events``, which keeps only what is queried (id, type,
    # recording time) besides the payload; delivering an entry moves its event
    # there. The view ``telemetry_events`` keeps the old name and columns (read
    # from the payload) for every recorded event. Existing entries take their
    # event's payload along; entries whose event was gone are dropped (they
    # could never be sent) and the size is redone.
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

#: The version of the tables this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

_LAYOUT_SQL: Final = "SELECT 1 FROM telemetry_counters WHERE name = 'queue.holes'"


def adopt(conn: sqlite3.Connection) -> int:
    """The version of tables made by telemetry-core's own migrations (up to
    local version 6), told from the tables: 4 with the stored events (local 6),
    3 with the queue's ``backoff_step`` (local 5), 2 with the queue (local 3 and
    4), 1 with the event table only (local 1 and 2), else 0."""
    kinds = dict(
        conn.execute(
            "SELECT name, type FROM sqlite_master WHERE name IN"
            " ('telemetry_events', 'telemetry_queue', 'telemetry_stored_events')"
        ).fetchall()
    )
    if "telemetry_stored_events" in kinds:
        return 4
    if "telemetry_queue" in kinds:
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(telemetry_queue)")}
        return 3 if "backoff_step" in columns else 2
    return 1 if kinds.get("telemetry_events") == "table" else 0


def open_tables(db: SQLiteDatabase) -> bool:
    """Bring the plugin's tables in ``db`` to :data:`SCHEMA_VERSION`; on a
    read-only store, check that they are at it. Returns False when a read-only
    store has none of them (a file only the core wrote, such as one the CLI's
    ``config`` commands made): nothing is recorded there yet."""
    version = db.migrate_part(PART, MIGRATIONS, adopt)
    if db.read_only and version != SCHEMA_VERSION:
        if version == 0:
            return False
        raise StorageError(
            f"the sqlite storage tables of telemetry database {db.path} have schema version "
            f"{version}, this telemetry-core reads version {SCHEMA_VERSION}; it was left unchanged"
        )
    # Steps 1 and 2 were rewritten before the first release; a file made by an
    # earlier development build has the same version but the old queue layout,
    # which this code would silently miscount.
    try:
        layout = db.connection().execute(_LAYOUT_SQL).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read telemetry database {db.path}: {exc}") from exc
    if layout is None:
        raise StorageError(
            f"telemetry database {db.path} was made by a pre-release build of "
            "telemetry-core with an older queue layout; delete it or run "
            "`telemetry disable --purge`"
        )
    return True
