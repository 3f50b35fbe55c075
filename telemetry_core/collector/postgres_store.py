"""The scale-out collector store: one PostgreSQL database shared by many collectors.

Several stateless collector processes may point at the same database; the
primary key ``(app, id)`` of ``event_ids`` makes ingestion exactly-once across
all of them. Each batch is one transaction: one statement, whose only parameter
is the batch as JSON, claims the keys in ``event_ids`` (``ON CONFLICT DO
NOTHING RETURNING``) and stores the raw rows of the keys it claimed in
``events``, partitioned by day of reception so that retention drops whole
partitions; only the keys that come back update the rollups, histogram buckets
and install sets with upserts. Every statement
touches its rows in sorted key order and the tables in a fixed order, so two
collectors writing overlapping batches wait for each other instead of
deadlocking; deadlocks and serialization failures are retried all the same.

The store uses psycopg 3 with a synchronous ``psycopg_pool.ConnectionPool``;
the async interface runs each transaction on a dedicated thread pool sized like
the connection pool. The connection string may hold a password: it is never
logged, never shown in ``repr`` and never put in an exception message
(:func:`redact_url` gives a printable form). See
:mod:`telemetry_core.collector.store` for the tables and the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import msgspec
import msgspec.structs
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

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
    POSTGRES,
    Dedupe,
    Increments,
    plan_increments,
    read_stats_data,
    update_day_percentiles,
)
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

log = logging.getLogger("telemetry_core.collector")

__all__ = ["SCHEMA_LOCK_KEY", "PostgresStore", "read_stats_database", "redact_url"]

T = TypeVar("T")

#: Key of the advisory lock held while the schema is created, so collectors that
#: start together do not race on ``CREATE TABLE IF NOT EXISTS`` (which is not
#: safe under concurrency: both may try to create the same catalog rows).
SCHEMA_LOCK_KEY: Final = 0x7E1E_C011  # "telecoll"

#: Transactions that fail with a deadlock or serialization failure are retried
#: this many times in all, with a short jittered pause between attempts.
MAX_ATTEMPTS: Final = 5

#: Raw events deleted per statement by :meth:`PostgresStore.cleanup`, to keep
#: each transaction (and its locks and WAL) small on a busy table.
CLEANUP_CHUNK: Final = 10_000

#: Days of ``events`` partitions created ahead of today, at start-up and by
#: every retention run (hourly), so ingest never waits for a partition; a
#: batch whose day has none (a stepped clock) creates it on the spot.
PARTITIONS_AHEAD_DAYS: Final = 7

#: How ``pg_get_expr`` prints the bounds of one of our range partitions.
_BOUNDS: Final = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS event_ids (
    app TEXT NOT NULL,
    id UUID NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (app, id)
);
CREATE INDEX IF NOT EXISTS event_ids_received ON event_ids (received_ms);
CREATE TABLE IF NOT EXISTS events (
    app TEXT NOT NULL,
    id UUID NOT NULL,
    type TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    install_id TEXT NOT NULL,
    session_id TEXT,
    app_version TEXT,
    duration_ms DOUBLE PRECISION,
    success BOOLEAN,
    properties JSONB NOT NULL
) PARTITION BY RANGE (received_ms);
CREATE TABLE IF NOT EXISTS rollups (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms BIGINT NOT NULL,
    count BIGINT NOT NULL, success BIGINT NOT NULL, failure BIGINT NOT NULL,
    PRIMARY KEY (app, type, hour_ms)
);
CREATE INDEX IF NOT EXISTS rollups_hour ON rollups (hour_ms);
CREATE TABLE IF NOT EXISTS rollup_buckets (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms BIGINT NOT NULL,
    bucket INTEGER NOT NULL, count BIGINT NOT NULL,
    PRIMARY KEY (app, type, hour_ms, bucket)
);
CREATE INDEX IF NOT EXISTS rollup_buckets_hour ON rollup_buckets (hour_ms);
CREATE TABLE IF NOT EXISTS installs (
    app TEXT NOT NULL, type TEXT NOT NULL, hour_ms BIGINT NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, type, hour_ms, install_id)
);
CREATE INDEX IF NOT EXISTS installs_hour ON installs (hour_ms);
CREATE TABLE IF NOT EXISTS counters (
    hour_ms BIGINT NOT NULL, name TEXT NOT NULL, count BIGINT NOT NULL,
    PRIMARY KEY (hour_ms, name)
);
"""

#: The day tables: the hourly rollups, buckets and install sets summed per UTC
#: day, written in the same transactions. Filled from the hourly tables when
#: they are new (a database of an earlier collector), under the schema lock.
_DAY_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS day_rollups (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms BIGINT NOT NULL,
    count BIGINT NOT NULL, success BIGINT NOT NULL, failure BIGINT NOT NULL,
    installs BIGINT NOT NULL,
    p50_bucket INTEGER, p95_bucket INTEGER, p99_bucket INTEGER,
    PRIMARY KEY (app, type, day_ms)
);
CREATE INDEX IF NOT EXISTS day_rollups_day ON day_rollups (day_ms);
CREATE TABLE IF NOT EXISTS day_rollup_buckets (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms BIGINT NOT NULL,
    bucket INTEGER NOT NULL, count BIGINT NOT NULL,
    PRIMARY KEY (app, type, day_ms, bucket)
);
CREATE INDEX IF NOT EXISTS day_rollup_buckets_day ON day_rollup_buckets (day_ms);
CREATE TABLE IF NOT EXISTS day_installs (
    app TEXT NOT NULL, type TEXT NOT NULL, day_ms BIGINT NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, type, day_ms, install_id)
);
CREATE INDEX IF NOT EXISTS day_installs_day ON day_installs (day_ms);
CREATE TABLE IF NOT EXISTS day_app_installs (
    app TEXT NOT NULL, day_ms BIGINT NOT NULL, install_id TEXT NOT NULL,
    PRIMARY KEY (app, day_ms, install_id)
);
CREATE INDEX IF NOT EXISTS day_app_installs_day ON day_app_installs (day_ms);
"""

# One statement per table per batch: arrays in, unnest, sorted, upsert.
#: One statement, one parameter: the batch travels as one JSON document (encoded
#: by msgspec, parsed by the server; binding ten arrays of 100 values cost the
#: collector more CPU than everything else it does per event). Each (app, id)
#: is claimed in ``event_ids``; only the pairs claimed now are stored in
#: ``events`` and come back.
_INSERT_BATCH: Final = """
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS u(
        app text, id uuid, type text, timestamp bigint, install_id text, session_id text,
        app_version text, duration_ms float8, success boolean, properties jsonb)
), claimed AS (
    INSERT INTO event_ids (app, id, received_ms)
    SELECT app, id, %(received)s FROM batch ORDER BY app, id
    ON CONFLICT (app, id) DO NOTHING
    RETURNING app, id
), stored AS (
    INSERT INTO events (app, id, type, timestamp_ms, received_ms, install_id, session_id,
                        app_version, duration_ms, success, properties)
    SELECT b.app, b.id, b.type, b.timestamp, %(received)s, b.install_id, b.session_id,
           b.app_version, b.duration_ms, b.success, b.properties
    FROM batch b JOIN claimed c ON c.app = b.app AND c.id = b.id
)
SELECT app, id::text FROM claimed
"""
_UPSERT_ROLLUPS: Final = """
INSERT INTO rollups (app, type, hour_ms, count, success, failure)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],
                     %s::bigint[]) AS u(app, type, hour_ms, count, success, failure)
ORDER BY app, type, hour_ms
ON CONFLICT (app, type, hour_ms) DO UPDATE SET count = rollups.count + EXCLUDED.count,
    success = rollups.success + EXCLUDED.success, failure = rollups.failure + EXCLUDED.failure
"""
_UPSERT_BUCKETS: Final = """
INSERT INTO rollup_buckets (app, type, hour_ms, bucket, count)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::integer[], %s::bigint[])
     AS u(app, type, hour_ms, bucket, count)
ORDER BY app, type, hour_ms, bucket
ON CONFLICT (app, type, hour_ms, bucket) DO UPDATE
    SET count = rollup_buckets.count + EXCLUDED.count
"""
_INSERT_INSTALLS: Final = """
INSERT INTO installs (app, type, hour_ms, install_id)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[])
     AS u(app, type, hour_ms, install_id)
ORDER BY app, type, hour_ms, install_id
ON CONFLICT DO NOTHING
"""
#: A batch's day rows in one statement. The day install rows inserted now come
#: back from ``added`` and count into the ``installs`` column of their day
#: rollup (a row another transaction holds, committed or not, waits for it and
#: then does not come back). The two inserts no statement reads run after the
#: main one, in their order, so every batch takes its locks table by table in
#: the same order.
_WRITE_DAYS: Final = """
WITH added AS (
    INSERT INTO day_installs (app, type, day_ms, install_id)
    SELECT * FROM unnest(%(i_app)s::text[], %(i_type)s::text[], %(i_day)s::bigint[],
                         %(i_install)s::text[]) AS u(app, type, day_ms, install_id)
    ORDER BY app, type, day_ms, install_id
    ON CONFLICT DO NOTHING
    RETURNING app, type, day_ms
), fresh AS (
    SELECT app, type, day_ms, count(*) AS n FROM added GROUP BY app, type, day_ms
), app_installs AS (
    INSERT INTO day_app_installs (app, day_ms, install_id)
    SELECT * FROM unnest(%(a_app)s::text[], %(a_day)s::bigint[], %(a_install)s::text[])
         AS u(app, day_ms, install_id)
    ORDER BY app, day_ms, install_id
    ON CONFLICT DO NOTHING
), buckets AS (
    INSERT INTO day_rollup_buckets (app, type, day_ms, bucket, count)
    SELECT * FROM unnest(%(b_app)s::text[], %(b_type)s::text[], %(b_day)s::bigint[],
                         %(b_bucket)s::integer[], %(b_count)s::bigint[])
         AS u(app, type, day_ms, bucket, count)
    ORDER BY app, type, day_ms, bucket
    ON CONFLICT (app, type, day_ms, bucket) DO UPDATE
        SET count = day_rollup_buckets.count + EXCLUDED.count
)
INSERT INTO day_rollups (app, type, day_ms, count, success, failure, installs)
SELECT u.app, u.type, u.day_ms, u.count, u.success, u.failure, COALESCE(f.n, 0)
FROM unnest(%(r_app)s::text[], %(r_type)s::text[], %(r_day)s::bigint[], %(r_count)s::bigint[],
            %(r_success)s::bigint[], %(r_failure)s::bigint[])
     AS u(app, type, day_ms, count, success, failure)
LEFT JOIN fresh f ON f.app = u.app AND f.type = u.type AND f.day_ms = u.day_ms
ORDER BY u.app, u.type, u.day_ms
ON CONFLICT (app, type, day_ms) DO UPDATE SET count = day_rollups.count + EXCLUDED.count,
    success = day_rollups.success + EXCLUDED.success,
    failure = day_rollups.failure + EXCLUDED.failure,
    installs = day_rollups.installs + EXCLUDED.installs
"""
#: The percentiles of the days whose histogram grew, from their whole
#: histograms, in a statement of its own: it sees what the batch and every
#: transaction committed before it wrote, and the batch holds its day rollup
#: rows by now, so a concurrent batch of the same days recomputes after it.
_UPDATE_DAY_PERCENTILES: Final = update_day_percentiles(
    "(SELECT b.app, b.type, b.day_ms, b.bucket, b.count "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS k(app, type, day_ms) "
    "JOIN day_rollup_buckets b ON b.app = k.app AND b.type = k.type "
    "AND b.day_ms = k.day_ms) AS h"
)
_UPSERT_COUNTERS: Final = """
INSERT INTO counters (hour_ms, name, count)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS u(hour_ms, name, count)
ORDER BY hour_ms, name
ON CONFLICT (hour_ms, name) DO UPDATE SET count = counters.count + EXCLUDED.count
"""

#: Whether this connection can read every day table: a database of an earlier
#: collector not opened by one since has none, and a reader role set up before
#: them may not be granted them; either reads the hourly tables alone.
_DAY_TABLES_READABLE: Final = """
SELECT bool_and(COALESCE(has_table_privilege(to_regclass(t), 'SELECT'), false))
FROM unnest(ARRAY['day_rollups', 'day_rollup_buckets', 'day_installs', 'day_app_installs']) AS t
"""

_RETRYABLE: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

#: Whether libpq has pipeline mode (14 and later; the binary wheels bundle one that
#: has). Without it a batch's statements each take their round trip, as before.
_PIPELINE: Final = psycopg.Pipeline.is_supported()


#: Connection parameters whose values are secrets.
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})

#: libpq's words for a connection failure that waiting will not fix: the
#: database or role does not exist, or the server refused the credentials.
_PERMANENT_CONNECT_ERRORS: Final = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "password is required",
    "invalid connection option",
    "invalid integer value",
    "invalid sslmode value",
)

#: Failures of a working database that has gone away or is busy: wait and retry.
_UNAVAILABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def redact_url(database_url: str) -> str:
    """Return ``database_url`` for display, as ``key=value`` connection
    parameters with every secret (``password``, ``sslpassword``) masked.

    It is parsed with libpq's own rules (``conninfo_to_dict``), so a URL, a
    percent-encoded password, spaces around ``=`` and quoted values are all
    masked; what libpq cannot parse is not shown at all.
    """
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.Error:
        return "<unparseable database url>"
    shown = {k: "***" if k in _SECRET_PARAMS else v for k, v in params.items()}
    return make_conninfo("", **shown)


def _permanent(exc: psycopg.Error) -> bool:
    text = str(exc).lower()
    return any(words in text for words in _PERMANENT_CONNECT_ERRORS)


def _probe(database_url: str, connect_timeout: float) -> None:
    """Connect once, so a permanent failure (unknown database, refused
    credentials, a bad option) is reported at once with libpq's message
    instead of after the pool's retries; transient ones are left to the pool."""
    try:
        psycopg.connect(database_url, connect_timeout=max(1, round(connect_timeout))).close()
    except psycopg.ProgrammingError as exc:  # the connection string itself is malformed
        raise StorageError(f"invalid PostgreSQL connection string: {_describe(exc)}") from None
    except psycopg.Error as exc:
        if _permanent(exc):
            raise StorageError(
                f"cannot connect to PostgreSQL ({redact_url(database_url)}): {_libpq_message(exc)}"
            ) from None


def _libpq_message(exc: BaseException) -> str:
    """libpq's message without the "connection failed: ..." preamble, on one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    _, fatal, rest = text.partition("FATAL:")
    return f"FATAL: {rest.strip()}" if fatal else text


def read_stats_database(
    database_url: str, query: StatsQuery, *, connect_timeout: float = 10.0
) -> dict[str, Any]:
    """Return the stats document for ``query``, read on one read-only
    connection (what ``telemetry-collector stats --database-url`` uses): it
    creates nothing, so a role with only ``SELECT`` on the collector's tables
    can read."""
    return build_stats(query, _read_database(database_url, query, connect_timeout))


def _read_database(database_url: str, query: StatsQuery, connect_timeout: float) -> StatsData:
    _probe(database_url, connect_timeout)
    try:
        with psycopg.connect(database_url, connect_timeout=max(1, round(connect_timeout))) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_DAY_TABLES_READABLE)
                row = cur.fetchone()
                days = bool(row and row[0])
                return read_stats_data(_fetcher(cur), query, POSTGRES, day_tables=days)
    except psycopg.errors.UndefinedTable:
        raise StorageError(
            f"no collector tables in {redact_url(database_url)} (has a collector run on it?)"
        ) from None
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot read stats: {_describe(exc)}") from exc
    except psycopg.Error as exc:
        raise StorageError(f"cannot read stats: {_describe(exc)}") from exc


def _fetcher(cur: psycopg.Cursor[Any]) -> Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]:
    def fetch(sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur.execute(sql, args)
        return cur.fetchall()

    return fetch


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def _storable(event: Event) -> Event:
    """``event`` with NUL characters replaced, which PostgreSQL text and JSONB refuse.

    Without this, one such value would fail its whole batch on every retry.
    """
    fields = (event.app, event.install_id, event.session_id or "", event.app_version or "")
    values = [v for v in event.properties.values() if isinstance(v, str)]
    if not any("\x00" in v for v in (*fields, *values)):
        return event
    return msgspec.structs.replace(
        event,
        app=_no_nul(event.app),
        install_id=_no_nul(event.install_id),
        session_id=None if event.session_id is None else _no_nul(event.session_id),
        app_version=None if event.app_version is None else _no_nul(event.app_version),
        properties={
            k: _no_nul(v) if isinstance(v, str) else v for k, v in event.properties.items()
        },
    )


def _as_is(event: Event) -> Event:
    return event


def _keyed_batch(
    events: Sequence[Event], storable: Callable[[Event], Event]
) -> tuple[list[tuple[str, str]], dict[tuple[str, str], Event], bytes]:
    """Each event's idempotency key ``(app, canonical id)``, the first event of
    each key (as ``storable`` makes it) and those events as the JSON the batch
    statement takes, in key order: concurrent batches take the primary-key
    locks in one order."""
    keys: list[tuple[str, str]] = []
    first: dict[tuple[str, str], Event] = {}
    for event in events:
        stored = storable(event)
        key = (stored.app, _canonical_id(event.id))
        keys.append(key)
        if key not in first:
            first[key] = stored
    return keys, first, msgspec.json.encode([first[k] for k in sorted(first)])


def _canonical_id(event_id: str) -> str:
    # Any spelling of a UUID is the same event (the column type is UUID). The
    # hyphenated form the schema admits is canonical once in lower case.
    if len(event_id) == 36 and event_id[8] == event_id[13] == "-":
        return event_id.lower()
    return str(uuid.UUID(event_id))


class PostgresStore(PendingWork):
    """A :class:`~telemetry_core.collector.store.CollectorStore` on PostgreSQL.

    ``database_url`` is a libpq connection string or ``postgresql://`` URL.
    ``pool_min``/``pool_max`` size the connection pool (and the thread pool that
    runs transactions). ``max_pending_events`` bounds the events handed to
    :meth:`ingest` and not yet committed; past it, :meth:`ingest` raises
    :class:`StoreOverloaded`. ``connect_timeout`` bounds, in seconds, both the
    start-up wait for the first connections and each wait for a free
    connection. The schema is created on construction, under an advisory lock.
    Raises :class:`StorageError` when the database cannot be reached.
    """

    def __init__(
        self,
        database_url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        max_pending_events: int = 50_000,
        connect_timeout: float = 10.0,
        application_name: str = "telemetry-collector",
    ) -> None:
        if not 0 < pool_min <= pool_max:
            raise ValueError("need 0 < pool_min <= pool_max")
        started = time.monotonic()
        _probe(database_url, connect_timeout)
        # A transient failure of the probe counts against the start-up wait.
        remaining = max(1.0, connect_timeout - (time.monotonic() - started))
        super().__init__(max_pending_events)
        self._counters: dict[tuple[int, str], int] = defaultdict(int)
        self._flushing: asyncio.Future[None] | None = None
        self._closed = False
        self._rng = random.Random()
        #: Days whose ``events`` partition this process created or saw created.
        self._days: set[int] = set()
        self._pool = ConnectionPool(
            database_url,
            min_size=pool_min,
            max_size=pool_max,
            open=False,
            timeout=connect_timeout,
            name="telemetry-collector",
            kwargs={"application_name": application_name, "autocommit": False},
            check=ConnectionPool.check_connection,
        )
        try:
            self._pool.open(wait=True, timeout=remaining)
        except PoolTimeout:
            self._pool.close()
            raise StorageError(
                f"cannot connect to PostgreSQL ({redact_url(database_url)}) "
                f"within {connect_timeout:g} s"
            ) from None
        self._executor = ThreadPoolExecutor(max_workers=pool_max, thread_name_prefix="collector-pg")
        try:
            self._run(self._create_schema)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"<PostgresStore pool={self._pool.max_size} pending={self._pending_events}>"

    # -- the CollectorStore interface ------------------------------------------

    async def ingest(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        """Store ``events`` exactly once; return after their transaction committed."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if not events:
            return IngestOutcome(inserted=())
        self._admit(len(events), "the database is behind; try again shortly")
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self.ingest_blocking, events, received_ms
            )
        except RuntimeError:  # the executor shut down: close() ran meanwhile
            self._release(len(events))
            raise StoreUnavailable("the store is closed") from None
        # The transaction runs to its end even if the request is cancelled, and
        # ingest_blocking releases the pending count whatever happens.
        return await asyncio.shield(future)

    async def record_outcomes(
        self, *, rejected: Mapping[str, int], throttled: int, received_ms: int
    ) -> None:
        """Add outcome counters and write them in a small transaction of their own,
        so every collector sharing the database reports them at once.

        Concurrent callers share one flush at a time (a flood of 429s costs at
        most one transaction in flight plus one queued). A failed write keeps the
        counters buffered for the next transaction and is logged, not raised.
        """
        with self._lock:
            add_outcomes(
                self._counters, rejected=rejected, throttled=throttled, received_ms=received_ms
            )
        # Bounded: a round either finds the counters written or starts the flush that writes them.
        for _ in range(3):
            running = self._flushing
            if running is None or running.done():
                with self._lock:
                    if not self._counters:
                        return
                running = self._flushing = asyncio.ensure_future(self._submit(self.flush_counters))
                await self._await_flush(running)
                return
            await self._await_flush(running)

    @staticmethod
    async def _await_flush(flush: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(flush)
        except StorageError as exc:
            log.warning("outcome counters not written yet (kept for the next write): %s", exc)

    async def stats(self, query: StatsQuery) -> dict[str, Any]:
        """Return the stats document for ``query`` (buffered counters are flushed first)."""
        data = await self._submit(self.read_stats_data, query)
        return build_stats(query, data)

    async def cleanup(self, retention_days: int, now_ms: int) -> int:
        """Delete raw events received more than ``retention_days`` before ``now_ms``."""
        return await self._submit(self.cleanup_blocking, now_ms - retention_days * DAY_MS, now_ms)

    async def close(self) -> None:
        """Wait for every running batch to commit, flush counters, close the pool."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.close_blocking)

    # -- blocking API (callable from any thread; used by the async interface) ---

    def ingest_blocking(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        """Write one batch in one transaction; the blocking core of :meth:`ingest`.

        The caller must already have counted ``events`` in the pending depth;
        this releases them whatever happens.
        """
        try:
            started = time.perf_counter()
            outcome = self._ingest_day(events, received_ms)
            elapsed = time.perf_counter() - started
        finally:
            self._release(len(events))
        self._notify_observers(elapsed, len(events))
        return outcome

    def _ingest_day(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        day = _day_of(received_ms)
        self._ensure_partition(day)
        try:
            return self._transaction(
                lambda cur, counters: self._write_batch(cur, counters, events, received_ms),
                pipelined=True,
            )
        except _MissingPartition:
            # Retention (maybe in another process) dropped the partition since.
            self._days.discard(day)
            self._ensure_partition(day)
            return self._transaction(
                lambda cur, counters: self._write_batch(cur, counters, events, received_ms),
                pipelined=True,
            )

    def read_stats_data(self, query: StatsQuery) -> StatsData:
        """Read the rollup rows for ``query`` in one consistent snapshot."""
        self.flush_counters()
        try:
            with self._pool.connection() as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        return read_stats_data(_fetcher(cur), query, POSTGRES)
                finally:
                    conn.isolation_level = None
                    conn.read_only = None
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot read stats: {_describe(exc)}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"cannot read stats: {_describe(exc)}") from exc

    def flush_counters(self) -> None:
        """Write the buffered outcome counters now (they are kept if the write fails)."""
        with self._lock:
            if not self._counters:
                return
        self._transaction(lambda cur, counters: None)

    def cleanup_blocking(self, before_ms: int, now_ms: int) -> int:
        """Drop the daily ``events`` partitions that end at or before ``before_ms``
        and forget their ids (in chunks); return how many events went.

        Raw events therefore live up to one day past the retention period.
        The partitions of the days ahead of ``now_ms`` are created here too.
        """
        cutoff = _day_of(before_ms)
        now_day = _day_of(now_ms)

        def drop_partitions(cur: psycopg.Cursor[Any], _counters: object) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for name, low, high in _partitions(cur):
                if high <= cutoff:
                    cur.execute(f"DROP TABLE IF EXISTS {name}")
                    self._days.discard(low)
            self._days.update(_create_partitions(cur, now_day, now_day + _AHEAD_MS))

        def forget_chunk(cur: psycopg.Cursor[Any], _counters: object) -> int:
            return cur.execute(
                "DELETE FROM event_ids WHERE (app, id) IN (SELECT app, id FROM event_ids "
                "WHERE received_ms < %s LIMIT %s)",
                (cutoff, CLEANUP_CHUNK),
            ).rowcount

        # The partitions go first: should the process die before the ids are
        # forgotten, the next run forgets them and dedup errs on the safe side.
        self._transaction(drop_partitions, with_counters=False)
        deleted = 0
        # Bounded: each round deletes a full chunk or ends the loop; the cap only
        # guards against a clock that keeps moving rows behind the cut-off.
        for _ in range(1_000_000):
            count = self._transaction(forget_chunk, with_counters=False)
            deleted += count
            if count < CLEANUP_CHUNK:
                break
        return deleted

    def close_blocking(self) -> None:
        """Blocking core of :meth:`close`."""
        self._closed = True
        self._executor.shutdown(wait=True)
        with contextlib.suppress(StorageError):
            self.flush_counters()
        self._pool.close()

    # -- internals ----------------------------------------------------------------

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # the executor shut down: close() ran meanwhile
            raise StoreUnavailable("the store is closed") from None
        return await future

    def _run(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result()

    def _create_schema(self) -> None:
        today = _day_of(int(time.time() * 1000))
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                legacy = _unpartitioned_events(cur)
                if legacy:
                    cur.execute("ALTER TABLE events RENAME TO events_unpartitioned")
                cur.execute(_SCHEMA)
                if legacy:
                    _migrate_unpartitioned(cur)
                _create_day_tables(cur)
                self._days.update(_create_partitions(cur, today, today + _AHEAD_MS))
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(f"cannot create the collector schema: {_describe(exc)}") from exc

    def _ensure_partition(self, day_ms: int) -> None:
        """Create the ``events`` partition of ``day_ms`` unless this process knows it exists."""
        if day_ms in self._days:
            return
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                self._days.update(_create_partitions(cur, day_ms, day_ms + DAY_MS))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot create a partition: {_describe(exc)}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"cannot create a partition: {_describe(exc)}") from exc

    def _take_counters(self) -> dict[tuple[int, str], int]:
        with self._lock:
            counters = dict(self._counters)
            self._counters.clear()
        return counters

    def _restore_counters(self, counters: Mapping[tuple[int, str], int]) -> None:
        with self._lock:
            for key, n in counters.items():
                self._counters[key] += n

    def _transaction(
        self,
        body: Callable[[psycopg.Cursor[Any], dict[tuple[int, str], int]], T],
        *,
        with_counters: bool = True,
        pipelined: bool = False,
    ) -> T:
        """Run ``body(cursor, counters)`` in one transaction, then upsert ``counters``
        (the buffered outcome counters plus whatever ``body`` added) in the same
        transaction. Deadlocks and serialization failures are retried; other
        failures become :class:`StorageError` and the buffered counters are kept.

        ``pipelined`` (a body whose statements need no result after its first
        fetch): every statement after the body's last fetch and the ``COMMIT``
        go to the server in one round trip (libpq pipeline mode). The rows every
        batch updates (the rollups of the hour and day, the counters) are locked
        from their first upsert until the commit; without the pipeline each
        statement in between waited for a round trip to this process, whose
        threads share one interpreter lock with the event loop, and concurrent
        batches, in this process or another collector, queued behind those
        waits (``Lock:transactionid`` in ``pg_stat_activity``).
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            buffered = self._take_counters() if with_counters else {}
            counters = dict(buffered)
            try:
                with self._pool.connection() as conn:
                    if pipelined and _PIPELINE:
                        return self._in_pipeline(conn, body, counters)
                    with conn.transaction(), conn.cursor() as cur:
                        result = body(cur, counters)
                        _upsert_counters(cur, counters)
                    return result
            except _RETRYABLE:
                self._restore_counters(buffered)
                if attempt == MAX_ATTEMPTS:
                    raise StorageError(
                        f"transaction still conflicting after {MAX_ATTEMPTS} attempts"
                    ) from None
                time.sleep(self._rng.uniform(0, 0.01 * 2**attempt))
            except _UNAVAILABLE as exc:
                self._restore_counters(buffered)
                raise StoreUnavailable(f"transaction failed: {_describe(exc)}") from exc
            except psycopg.errors.CheckViolation as exc:
                self._restore_counters(buffered)
                if "no partition" in str(exc):
                    raise _MissingPartition(f"transaction failed: {_describe(exc)}") from exc
                raise StorageError(f"transaction failed: {_describe(exc)}") from exc
            except psycopg.Error as exc:
                self._restore_counters(buffered)
                raise StorageError(f"transaction failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _in_pipeline(
        conn: psycopg.Connection[Any],
        body: Callable[[psycopg.Cursor[Any], dict[tuple[int, str], int]], T],
        counters: dict[tuple[int, str], int],
    ) -> T:
        """``body`` and the counters in one transaction in pipeline mode, ended
        by ``commit()``, which sends ``COMMIT`` behind the queued statements and
        waits once for all of them (their errors are raised there)."""
        try:
            with conn.pipeline(), conn.cursor() as cur:
                result = body(cur, counters)
                _upsert_counters(cur, counters)
                conn.commit()
        except BaseException:
            # A failed statement leaves the transaction aborted; end it here
            # rather than hand the pool a connection it has to reset.
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
            raise
        return result

    @staticmethod
    def _write_batch(
        cur: psycopg.Cursor[Any],
        counters: dict[tuple[int, str], int],
        events: Sequence[Event],
        received_ms: int,
    ) -> IngestOutcome:
        # The idempotency key is (app, id): the key a distributed PostgreSQL
        # shards on leads every unique key (see docs/operations.md).
        keys, first, batch = _keyed_batch(events, _as_is)
        # msgspec writes a NUL as \u0000 (and a backslash as \\, so a text that
        # spells the escape out only costs the second pass, which changes nothing).
        if b"\\u0000" in batch:
            keys, first, batch = _keyed_batch(events, _storable)
        cur.execute(_INSERT_BATCH, {"batch": batch.decode(), "received": received_ms})
        new_keys = set(cur.fetchall())
        inserted = Dedupe(stored=first.keys() - new_keys).verdicts(keys)
        add_outcomes(counters, duplicates=inserted.count(False), received_ms=received_ms)
        if not new_keys:
            return IngestOutcome(inserted=inserted)
        increments = plan_increments(first[k] for k in sorted(new_keys))
        cur.execute(_UPSERT_ROLLUPS, _columns(increments.rollups, 6))
        if increments.buckets:
            cur.execute(_UPSERT_BUCKETS, _columns(increments.buckets, 5))
        cur.execute(_INSERT_INSTALLS, _columns(increments.installs, 4))
        _write_days(cur, increments)
        return IngestOutcome(inserted=inserted)


_AHEAD_MS: Final = PARTITIONS_AHEAD_DAYS * DAY_MS


class _MissingPartition(StorageError):
    """A batch's day has no ``events`` partition (retention dropped it meanwhile)."""


def _day_of(ms: int) -> int:
    return ms - ms % DAY_MS


def _partition_name(day_ms: int) -> str:
    return "events_" + time.strftime("%Y%m%d", time.gmtime(day_ms // 1000))


def _create_partitions(cur: psycopg.Cursor[Any], from_ms: int, to_ms: int) -> list[int]:
    """Create the daily partitions of ``events`` covering ``[from_ms, to_ms)``
    that do not exist yet (the caller holds the schema lock); return their days."""
    days = list(range(_day_of(from_ms), to_ms, DAY_MS))
    for day in days:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_partition_name(day)} PARTITION OF events "
            f"FOR VALUES FROM ({day}) TO ({day + DAY_MS})"
        )
    return days


def _partitions(cur: psycopg.Cursor[Any]) -> list[tuple[str, int, int]]:
    """Every partition of ``events`` as ``(name, from_ms, to_ms)``."""
    cur.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
    )
    found = []
    for name, bound in cur.fetchall():
        match = _BOUNDS.search(bound or "")
        if match:
            found.append((str(name), int(match[1]), int(match[2])))
    return found


def _unpartitioned_events(cur: psycopg.Cursor[Any]) -> bool:
    """True when ``events`` is the plain table of a collector before partitioning."""
    cur.execute(
        "SELECT relkind FROM pg_class WHERE relname = 'events' "
        "AND relnamespace = current_schema()::regnamespace"
    )
    row = cur.fetchone()
    return row is not None and row[0] == "r"


def _migrate_unpartitioned(cur: psycopg.Cursor[Any]) -> None:
    """Move the rows of a pre-partitioning ``events`` table (renamed
    ``events_unpartitioned``) into ``event_ids`` and the daily partitions, then
    drop it; runs once, in the schema transaction, under the schema lock."""
    cur.execute("SELECT min(received_ms), max(received_ms) FROM events_unpartitioned")
    low, high = cur.fetchone() or (None, None)
    if low is not None and high is not None:
        _create_partitions(cur, int(low), int(high) + 1)
    cur.execute(
        "INSERT INTO event_ids (app, id, received_ms) "
        "SELECT app, id, received_ms FROM events_unpartitioned ON CONFLICT DO NOTHING"
    )
    cur.execute(
        "INSERT INTO events (app, id, type, timestamp_ms, received_ms, install_id, "
        "session_id, app_version, duration_ms, success, properties) "
        "SELECT app, id, type, timestamp_ms, received_ms, install_id, session_id, "
        "app_version, duration_ms, success, properties FROM events_unpartitioned"
    )
    moved = cur.rowcount
    cur.execute("DROP TABLE events_unpartitioned")
    log.info("migrated the events table to daily partitions rows=%d", moved)


def _create_day_tables(cur: psycopg.Cursor[Any]) -> None:
    """Create the day tables; when they are new, fill them from the hourly
    ones (in the schema transaction, under the schema lock)."""
    cur.execute("SELECT to_regclass('day_app_installs') IS NULL")
    row = cur.fetchone()
    fresh = bool(row and row[0])
    cur.execute(_DAY_SCHEMA)
    if fresh:
        for statement in BACKFILL_DAY_TABLES:
            cur.execute(statement)
        log.info("created the day tables from the hourly ones")


def _write_days(cur: psycopg.Cursor[Any], increments: Increments) -> None:
    """Add the batch's day rows (two statements; see :data:`_WRITE_DAYS`)."""
    columns = {
        "i": (_columns(increments.day_installs, 4), ("app", "type", "day", "install")),
        "a": (_columns(increments.day_app_installs, 3), ("app", "day", "install")),
        "b": (_columns(increments.day_buckets, 5), ("app", "type", "day", "bucket", "count")),
        "r": (
            _columns(increments.day_rollups, 6),
            ("app", "type", "day", "count", "success", "failure"),
        ),
    }
    cur.execute(
        _WRITE_DAYS,
        {
            f"{prefix}_{name}": column
            for prefix, (values, names) in columns.items()
            for name, column in zip(names, values, strict=True)
        },
    )
    if increments.day_buckets:
        cur.execute(_UPDATE_DAY_PERCENTILES, _columns(increments.grown_days, 3))


def _upsert_counters(cur: psycopg.Cursor[Any], counters: Mapping[tuple[int, str], int]) -> None:
    """Add ``counters`` to the ``counters`` table (nothing when empty)."""
    if counters:
        keys = sorted(counters)
        cur.execute(
            _UPSERT_COUNTERS,
            ([k[0] for k in keys], [k[1] for k in keys], [counters[k] for k in keys]),
        )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` turned into ``width`` column arrays (the parameters of an ``unnest``)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _describe(exc: BaseException) -> str:
    # psycopg messages name host and port, never the password; keep the first line.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
