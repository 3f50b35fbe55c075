"""The embedded collector store: one SQLite file in WAL mode, one writer thread.

Requests hand their batches to a bounded queue; the writer takes every batch
waiting, writes them in one transaction (group commit: one fsync for many
requests) and resolves each request's future only after that commit. Reads
(stats) open their own connections, which WAL lets run beside the writer.
See :mod:`telemetry_core.collector.store` for the tables and the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec

from telemetry_core.collector.aggregation import DAY_MS, add_outcomes, build_stats
from telemetry_core.collector.store import (
    IngestOutcome,
    PendingWork,
    StatsData,
    StatsQuery,
    StoreUnavailable,
)
from telemetry_core.collector.store_sql import (
    BACKFILL_DAY_TABLES,
    SQLITE,
    Dedupe,
    Increments,
    day_rollup_rows,
    plan_increments,
    read_stats_data,
    update_day_percentiles,
)
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

__all__ = ["CLEANUP_CHUNK", "SQLiteStore", "read_stats_file"]

log = logging.getLogger("telemetry_core.collector")

#: Raw events deleted per retention transaction; batches waiting commit between chunks.
CLEANUP_CHUNK = 5000

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

_STOP = object()
#: How long a stats read waits for the buffered outcome counters (seconds).
_FLUSH_WAIT: Final = 2.0


@attrs.define
class _Batch:
    events: Sequence[Event]
    received_ms: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[IngestOutcome]


@attrs.define
class _Cleanup:
    before_ms: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]
    chunk: int
    deleted: int = 0


@attrs.define
class _Flush:
    """A reader waiting for the buffered outcome counters to be committed."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class SQLiteStore(PendingWork):
    """A :class:`~telemetry_core.collector.store.CollectorStore` on one SQLite file.

    ``max_pending_events`` bounds the events waiting for the writer; past it,
    :meth:`ingest` raises :class:`StoreOverloaded`. ``max_group_batches`` bounds
    how many batches one transaction commits together. ``synchronous`` is the
    SQLite ``synchronous`` pragma (``FULL``: a commit survives power loss).
    ``cleanup_chunk`` is how many raw events one retention transaction deletes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending_events: int = 50_000,
        max_group_batches: int = 64,
        synchronous: str = "FULL",
        cleanup_chunk: int = CLEANUP_CHUNK,
    ) -> None:
        self.path = Path(path)
        self._cleanup_chunk = cleanup_chunk
        super().__init__(max_pending_events)
        self._max_group = max_group_batches
        self._counters: dict[tuple[int, str], int] = defaultdict(int)
        self._wake_queued = False
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.executescript(_SCHEMA)
            _create_day_tables(self._conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open collector database {self.path}: {exc}") from exc
        self._writer = threading.Thread(target=self._run, name="collector-sqlite-writer")
        self._writer.daemon = True
        self._writer.start()

    # -- the CollectorStore interface ------------------------------------------

    async def ingest(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        """Store ``events`` exactly once; return after their transaction committed."""
        if self._closed:
            raise StorageError("the store is closed")
        if not events:
            return IngestOutcome(inserted=())
        self._admit(len(events), "the writer is behind; try again shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestOutcome] = loop.create_future()
        self._queue.put(_Batch(events, received_ms, loop, future))
        # shield: a cancelled request must not cancel the batch's future, which the
        # writer resolves; the commit happens either way.
        return await asyncio.shield(future)

    async def record_outcomes(
        self, *, rejected: Mapping[str, int], throttled: int, received_ms: int
    ) -> None:
        """Buffer outcome counters; they are written with the next transaction."""
        with self._lock:
            add_outcomes(
                self._counters, rejected=rejected, throttled=throttled, received_ms=received_ms
            )
            wake = not self._wake_queued
            self._wake_queued = True
        if wake:  # one wake-up at a time, so a flood of 429s cannot grow the queue
            self._queue.put(None)

    async def cleanup(self, retention_days: int, now_ms: int) -> int:
        """Delete raw events received more than ``retention_days`` before ``now_ms``.

        The writer deletes ``cleanup_chunk`` rows per transaction and commits the
        batches that arrived meanwhile between chunks, so ingest never waits for
        the whole deletion.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._closed:
            raise StorageError("the store is closed")
        self._queue.put(
            _Cleanup(now_ms - retention_days * DAY_MS, loop, future, self._cleanup_chunk)
        )
        return await future

    async def stats(self, query: StatsQuery) -> dict[str, Any]:
        """Return the stats document for ``query``, read on a separate connection
        after the buffered outcome counters are committed, so it counts every
        refusal already answered."""
        await self._flush_outcomes()
        data = await asyncio.to_thread(self.read_stats_data, query)
        return build_stats(query, data)

    async def _flush_outcomes(self) -> None:
        # Through the writer's queue even when nothing is buffered: the writer may
        # hold counters it took and has not committed yet; it handles the queue in
        # order, so the flush resolves after that commit.
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Flush(loop, future))
        # Bounded: behind a slow commit or a cleanup chunk the read goes ahead
        # without the latest counters rather than keep the admin waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), _FLUSH_WAIT)

    async def close(self) -> None:
        """Commit every pending batch, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._writer.join)
        self._conn.close()

    # -- reads ------------------------------------------------------------------

    def read_stats_data(self, query: StatsQuery) -> StatsData:
        """Read the rollup rows for ``query`` (blocking; callable from any thread)."""
        return _read_stats_data(self.path, query)

    # -- the writer thread ------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < self._max_group:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in items):
                stopping = True
                # drain whatever else was queued before the stop
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            batches = [i for i in items if isinstance(i, _Batch)]
            cleanups = [i for i in items if isinstance(i, _Cleanup)]
            self._commit_group(batches)
            for flush in (i for i in items if isinstance(i, _Flush)):
                with contextlib.suppress(RuntimeError):  # loop already closed
                    flush.loop.call_soon_threadsafe(_resolve, flush.future, None, None)
            for job in cleanups:
                self._run_cleanup(job, finish=stopping)

    def _take_counters(self) -> dict[tuple[int, str], int]:
        with self._lock:
            self._wake_queued = False
            counters = dict(self._counters)
            self._counters.clear()
        return counters

    def _restore_counters(self, counters: Mapping[tuple[int, str], int]) -> None:
        with self._lock:
            for key, n in counters.items():
                self._counters[key] += n

    def _commit_group(self, batches: list[_Batch]) -> None:
        counters = self._take_counters()
        if not batches and not counters:
            return
        started = time.perf_counter()
        outcomes: list[IngestOutcome] = []
        error: BaseException | None = None
        n_events = sum(len(b.events) for b in batches)
        # _write_group adds the group's duplicates to this copy; a failed commit
        # gives back only the buffered counters, the duplicates were never stored.
        written = dict(counters)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = self._write_group(batches, written)
                self._conn.executemany(
                    _UPSERT_COUNTER, [(hour, name, n) for (hour, name), n in written.items()]
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = StorageError(f"commit failed: {exc}")
        except Exception:
            # Any other failure must not end the writer thread: every waiting
            # ingest would hang. The log names the failure, never event data.
            log.exception("collector writer failed to commit batches=%d", len(batches))
            error = StorageError("commit failed: internal error in the writer")
        if error is not None:
            outcomes = []
            self._restore_counters(counters)
        elapsed = time.perf_counter() - started
        self._release(n_events)
        if error is None:
            self._notify_observers(elapsed, n_events)
        for i, batch in enumerate(batches):
            value = outcomes[i] if error is None else None
            with contextlib.suppress(RuntimeError):  # loop already closed
                batch.loop.call_soon_threadsafe(_resolve, batch.future, value, error)

    def _write_group(
        self, batches: list[_Batch], counters: dict[tuple[int, str], int]
    ) -> list[IngestOutcome]:
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
        ids = [e.id.lower() for batch in batches for e in batch.events]
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
        outcomes: list[IngestOutcome] = []
        position = 0
        for batch in batches:
            batch_ids = ids[position : position + len(batch.events)]
            position += len(batch.events)
            inserted = dedupe.verdicts(batch_ids)
            for event_id, event, is_new in zip(batch_ids, batch.events, inserted, strict=True):
                if is_new:
                    new.append(event)
                    rows.append(_event_row(event_id, event, batch.received_ms))
            add_outcomes(counters, duplicates=inserted.count(False), received_ms=batch.received_ms)
            outcomes.append(IngestOutcome(inserted=inserted))
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

    def _run_cleanup(self, job: _Cleanup, *, finish: bool) -> None:
        """Delete one chunk; queue the job again behind waiting batches while rows
        remain (or, when ``finish``, at stop, keep deleting here)."""
        error: BaseException | None = None
        # Bounded: each round deletes a full chunk or ends; the cap guards the stop path.
        for _ in range(1_000_000):
            try:
                count = self._conn.execute(
                    "DELETE FROM events WHERE id IN "
                    "(SELECT id FROM events WHERE received_ms < ? LIMIT ?)",
                    (job.before_ms, job.chunk),
                ).rowcount
            except sqlite3.Error as exc:
                error = StorageError(f"cleanup failed: {exc}")
                break
            except Exception:
                log.exception("collector writer failed to run retention")
                error = StorageError("cleanup failed: internal error in the writer")
                break
            job.deleted += count
            if count < job.chunk:
                break
            if not finish:
                self._queue.put(job)
                return
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_resolve, job.future, job.deleted, error)


def read_stats_file(path: str | Path, query: StatsQuery) -> dict[str, Any]:
    """Return the stats document for ``query`` from a collector database file,
    read-only (what ``telemetry-collector stats --db`` uses)."""
    if not Path(path).exists():
        raise StorageError(f"no collector database at {path}")
    return build_stats(query, _read_stats_data(Path(path), query))


def _create_day_tables(conn: sqlite3.Connection) -> None:
    """Create the day tables; when they are new, fill them from the hourly
    ones in the same transaction (a crash leaves neither)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        fresh = not _has_day_tables(conn)
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


def _has_day_tables(conn: sqlite3.Connection) -> bool:
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


def _read_stats_data(path: Path, query: StatsQuery) -> StatsData:
    # as_uri() percent-encodes '?', '#' and '%' so they stay part of the path.
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read stats: {exc}") from exc
    try:
        # A file of an earlier collector not opened by this one since has no day tables.
        return read_stats_data(
            lambda sql, args: conn.execute(sql, args).fetchall(),
            query,
            SQLITE,
            day_tables=_has_day_tables(conn),
        )
    except sqlite3.OperationalError as exc:  # locked, unreadable
        raise StoreUnavailable(f"cannot read stats: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read stats: {exc}") from exc
    finally:
        conn.close()


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
