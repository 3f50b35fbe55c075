"""The write side of the embedded collector store: one SQLite connection that
creates the schema and commits groups of batches.

:class:`SQLiteWriter` is what :class:`~telemetry_core.collector.sqlite_store.SQLiteStore`
hands its groups to, on its writer thread or, under ``telemetry-collector serve``, in a
process of its own (:mod:`telemetry_core.collector.sqlite_writer_process`): SQLite's
work and the aggregation then run on another core than the event loop instead of
sharing one interpreter lock with it. Both use this class, so the tables, the
statements and the semantics are one.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from telemetry_core.collector.aggregation import add_outcomes
from telemetry_core.collector.store_sql import (
    BACKFILL_DAY_TABLES,
    Dedupe,
    Increments,
    day_rollup_rows,
    plan_increments,
    update_day_percentiles,
)
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

__all__ = ["LAST_COMMIT", "Group", "SQLiteWriter", "has_day_tables"]

#: A group's batches: each batch's events and its reception time in ms.
Group = Sequence[tuple[Sequence[Event], int]]

#: The number of the last commit that recorded one (see :meth:`SQLiteWriter.commit`).
LAST_COMMIT = "SELECT last_commit FROM writer_state WHERE id = 1"
_RECORD_COMMIT = (
    "INSERT INTO writer_state (id, last_commit) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET last_commit = excluded.last_commit"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    install_id TEXT NOT NULL,
    session_id TEXT,
    app_version TEXT,
    duration_ms REAL,
    success INTEGER,
    properties TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_received ON events (received_ms);
CREATE TABLE IF NOT EXISTS rollups (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms INTEGER NOT NULL,
    count INTEGER NOT NULL, success INTEGER NOT NULL, failure INTEGER NOT NULL,
    PRIMARY KEY (app, type, hour_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_hour ON rollups (hour_ms);
CREATE TABLE IF NOT EXISTS rollup_buckets (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (app, type, hour_ms, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_buckets_hour ON rollup_buckets (hour_ms);
CREATE TABLE IF NOT EXISTS installs (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms INTEGER NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, type, hour_ms, install_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS installs_hour ON installs (hour_ms);
CREATE TABLE IF NOT EXISTS counters (
    hour_ms INTEGER NOT NULL, name TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (hour_ms, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writer_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), last_commit INTEGER NOT NULL
);
"""

#: The day tables: the hourly rollups, buckets and install sets summed per UTC
#: day, written in the same transactions. Created after the tables above, and
#: filled from them when they are new (a database of an earlier collector).
_DAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS day_rollups (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms INTEGER NOT NULL,
    count INTEGER NOT NULL, success INTEGER NOT NULL, failure INTEGER NOT NULL,
    installs INTEGER NOT NULL,
    p50_bucket INTEGER, p95_bucket INTEGER, p99_bucket INTEGER,
    PRIMARY KEY (app, type, day_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS day_rollups_day ON day_rollups (day_ms);
CREATE TABLE IF NOT EXISTS day_rollup_buckets (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (app, type, day_ms, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS day_rollup_buckets_day ON day_rollup_buckets (day_ms);
CREATE TABLE IF NOT EXISTS day_installs (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms INTEGER NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, type, day_ms, install_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS day_installs_day ON day_installs (day_ms);
CREATE TABLE IF NOT EXISTS day_app_installs (
    app TEXT NOT NULL, day_ms INTEGER NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, day_ms, install_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS day_app_installs_day ON day_app_installs (day_ms);
"""

#: The table created last by :data:`_DAY_SCHEMA`: present once the day tables are.
_LAST_DAY_TABLE = "day_app_installs"

_INSERT_EVENT = """
INSERT INTO events (id, app, type, timestamp_ms, received_ms, install_id, session_id,
                    app_version, duration_ms, success, properties)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
"""
#: Events per multi-row INSERT: one statement step (one release of the GIL)
#: per chunk instead of one per row, far below SQLite's 32 766 parameters.
_ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_events_sql(rows: int) -> str:
    head, _, tail = _INSERT_EVENT.partition("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    return head + "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows) + tail


_UPSERT_ROLLUP = """
INSERT INTO rollups (app, type, hour_ms, count, success, failure) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (app, type, hour_ms) DO UPDATE SET count = count + excluded.count,
    success = success + excluded.success, failure = failure + excluded.failure
"""
_UPSERT_BUCKET = """
INSERT INTO rollup_buckets (app, type, hour_ms, bucket, count) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (app, type, hour_ms, bucket) DO UPDATE SET count = count + excluded.count
"""
_INSERT_INSTALL = """
INSERT INTO installs (app, type, hour_ms, install_id) VALUES (?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
_UPSERT_DAY_ROLLUP = """
INSERT INTO day_rollups (app, type, day_ms, count, success, failure, installs)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (app, type, day_ms) DO UPDATE SET count = count + excluded.count,
    success = success + excluded.success, failure = failure + excluded.failure,
    installs = installs + excluded.installs
"""
_UPSERT_DAY_BUCKET = """
INSERT INTO day_rollup_buckets (app, type, day_ms, bucket, count) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (app, type, day_ms, bucket) DO UPDATE SET count = count + excluded.count
"""
_INSERT_DAY_APP_INSTALL = """
INSERT INTO day_app_installs (app, day_ms, install_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING
"""
#: Day install rows per multi-row INSERT (4 parameters each).
_DAY_INSTALLS_PER_INSERT = 200


@functools.lru_cache(maxsize=8)
def _insert_day_installs_sql(rows: int) -> str:
    # RETURNING gives back only the rows inserted, not those DO NOTHING skipped.
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO day_installs (app, type, day_ms, install_id) VALUES {values} "
        "ON CONFLICT DO NOTHING RETURNING app, type, day_ms"
    )


#: Day rollup keys per percentile update (3 parameters each).
_DAY_KEYS_PER_UPDATE = 300


@functools.lru_cache(maxsize=8)
def _update_day_percentiles_sql(keys: int) -> str:
    # A join, not "(app, type, day_ms) IN (VALUES ...)", which SQLite answers
    # with a scan of the whole table.
    values = ", ".join(["(?, ?, ?)"] * keys)
    return update_day_percentiles(
        "(SELECT b.app AS app, b.type AS type, b.day_ms AS day_ms, b.bucket AS bucket, "
        f"b.count AS count FROM (VALUES {values}) AS k JOIN day_rollup_buckets AS b "
        "ON b.app = k.column1 AND b.type = k.column2 AND b.day_ms = k.column3) AS h"
    )


_UPSERT_COUNTER = """
INSERT INTO counters (hour_ms, name, count) VALUES (?, ?, ?)
ON CONFLICT (hour_ms, name) DO UPDATE SET count = count + excluded.count
"""


class SQLiteWriter:
    """One connection to the collector's SQLite file that writes it.

    Opening creates the tables (and fills new day tables from the hourly ones).
    ``synchronous`` is the SQLite ``synchronous`` pragma (``FULL``: a commit
    survives power loss). Raises :class:`StorageError` when the file cannot be
    opened or set up.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.executescript(_SCHEMA)
            _create_day_tables(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open collector database {path}: {exc}") from exc

    def commit(
        self,
        batches: Group,
        counters: Mapping[tuple[int, str], int],
        *,
        sequence: int | None = None,
    ) -> list[tuple[bool, ...]]:
        """Store ``batches`` and add ``counters`` (with the duplicates found) in one
        transaction; return, per batch, which events were new. Any error rolls the
        whole transaction back and is raised as it came. ``sequence``, when given,
        is recorded in the same transaction (:data:`LAST_COMMIT` reads it back), so
        whoever asked for the commit can tell after a crash whether it happened."""
        conn = self._conn
        written = dict(counters)
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = self.write_group(batches, written)
            conn.executemany(
                _UPSERT_COUNTER, [(hour, name, n) for (hour, name), n in written.items()]
            )
            if sequence is not None:
                conn.execute(_RECORD_COMMIT, (sequence,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def write_group(
        self, batches: Group, counters: dict[tuple[int, str], int]
    ) -> list[tuple[bool, ...]]:
        """Write every batch of one transaction with a few set-wise statements.

        The ids already stored are read in one query; the writer holds the write
        lock (``BEGIN IMMEDIATE``), so the rest are new unless repeated in the
        group, where the first one wins. New events go in multi-row INSERTs: the
        sqlite3 module releases the GIL around each statement step, and under
        load every reacquisition waits for the event loop, so one step per
        ``_ROWS_PER_INSERT`` rows instead of one per row keeps the writer from
        stalling. Rollups, buckets and installs are summed over the whole group
        before their upserts.
        """
        conn = self._conn
        ids = [e.id.lower() for events, _ in batches for e in events]
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM events WHERE id IN (SELECT value FROM json_each(?))",
                (msgspec.json.encode(ids),),
            )
        }
        dedupe = Dedupe(stored)
        rows: list[tuple[Any, ...]] = []
        new: list[Event] = []
        outcomes: list[tuple[bool, ...]] = []
        position = 0
        for events, received_ms in batches:
            batch_ids = ids[position : position + len(events)]
            position += len(events)
            inserted = dedupe.verdicts(batch_ids)
            for event_id, event, is_new in zip(batch_ids, events, inserted, strict=True):
                if is_new:
                    new.append(event)
                    rows.append(_event_row(event_id, event, received_ms))
            add_outcomes(counters, duplicates=inserted.count(False), received_ms=received_ms)
            outcomes.append(tuple(inserted))
        before = conn.total_changes
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            conn.execute(_insert_events_sql(len(chunk)), [v for row in chunk for v in row])
        if conn.total_changes - before != len(rows):
            raise sqlite3.IntegrityError("an event id appeared while the write lock was held")
        increments = plan_increments(new)
        conn.executemany(_UPSERT_ROLLUP, increments.rollups)
        conn.executemany(_UPSERT_BUCKET, increments.buckets)
        conn.executemany(_INSERT_INSTALL, increments.installs)
        _write_days(conn, increments)
        return outcomes

    def delete_before(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` raw events received before ``before_ms`` (one
        transaction); return how many went."""
        return self._conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_ms < ? LIMIT ?)",
            (before_ms, limit),
        ).rowcount

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _create_day_tables(conn: sqlite3.Connection) -> None:
    """Create the day tables; when they are new, fill them from the hourly
    ones in the same transaction (a crash leaves neither)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        fresh = not has_day_tables(conn)
        for statement in _DAY_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if fresh:
            for statement in BACKFILL_DAY_TABLES:
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def has_day_tables(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_LAST_DAY_TABLE,)
        ).fetchone()
        is not None
    )


def _write_days(conn: sqlite3.Connection, increments: Increments) -> None:
    """Add the group's day rows: the install sets first, whose newly inserted
    rows count into the ``installs`` column of the day rollups."""
    added: list[tuple[Any, ...]] = []
    rows = increments.day_installs
    for start in range(0, len(rows), _DAY_INSTALLS_PER_INSERT):
        chunk = rows[start : start + _DAY_INSTALLS_PER_INSERT]
        sql = _insert_day_installs_sql(len(chunk))
        added += conn.execute(sql, [v for row in chunk for v in row]).fetchall()
    conn.executemany(_UPSERT_DAY_ROLLUP, day_rollup_rows(increments.day_rollups, added))
    conn.executemany(_UPSERT_DAY_BUCKET, increments.day_buckets)
    conn.executemany(_INSERT_DAY_APP_INSTALL, increments.day_app_installs)
    # The percentiles of every day whose histogram grew, from its whole histogram.
    keys = increments.grown_days
    for start in range(0, len(keys), _DAY_KEYS_PER_UPDATE):
        some = keys[start : start + _DAY_KEYS_PER_UPDATE]
        conn.execute(_update_day_percentiles_sql(len(some)), [v for key in some for v in key])


def _event_row(event_id: str, e: Event, received_ms: int) -> tuple[Any, ...]:
    """The ``events`` row of a new event (``success`` as 0/1, properties as JSON)."""
    return (
        event_id,
        e.app,
        e.type,
        e.timestamp,
        received_ms,
        e.install_id,
        e.session_id,
        e.app_version,
        e.duration_ms,
        None if e.success is None else int(e.success),
        msgspec.json.encode(e.properties).decode(),
    )
