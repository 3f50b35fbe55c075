"""The collector's store interface, shared by the SQLite and PostgreSQL stores.

A store keeps the received events and the aggregates derived from them. Both
implementations (:mod:`telemetry_core.collector.sqlite_store`,
:mod:`telemetry_core.collector.postgres_store`) keep the same tables and the
same semantics. What they decide alike is written once so the two cannot
drift apart: the SQL planning (dedupe, the rows an event adds, the stats
statements) in :mod:`telemetry_core.collector.store_sql`, and everything that is
not SQL (histogram math, bucketing, the shape of the stats document) in
:mod:`telemetry_core.collector.aggregation`. Each store keeps only its dialect
and its transactions.

Tables (names and columns are the same in both stores, but for the raw events
on PostgreSQL, see below)::

    -- Raw events, kept ``retention_days`` (by ``received_ms``).
    events(
        id           TEXT/UUID PRIMARY KEY,   -- the idempotency key (SQLite)
        app TEXT, type TEXT, timestamp_ms BIGINT, received_ms BIGINT,
        install_id TEXT, session_id TEXT NULL, app_version TEXT NULL,
        duration_ms DOUBLE NULL, success BOOLEAN NULL,
        properties TEXT/JSONB)               -- the event's JSON properties

    -- Hourly rollups, kept forever. hour_ms = timestamp_ms - timestamp_ms % 3600000
    -- (the hour of the event's own timestamp, so late events land where they belong).
    rollups(app, type, hour_ms, count, success, failure, PRIMARY KEY (app, type, hour_ms))

    -- The mergeable duration histogram of each rollup: one row per non-empty bucket
    -- (bucket index from aggregation.bucket_index; count of events in it).
    rollup_buckets(app, type, hour_ms, bucket, count, PRIMARY KEY (app, type, hour_ms, bucket))

    -- Distinct installs as a unique set per (app, type, hour); day and range counts
    -- are exact: distinct install ids over the day sets of the whole days and the
    -- hour sets of the hours at the edges.
    installs(app, type, hour_ms, install_id, PRIMARY KEY (app, type, hour_ms, install_id))

    -- The same per UTC day (day_ms = hour_ms - hour_ms % 86400000), written in the
    -- same transactions, so a stats request reads whole days from them and only the
    -- hours at the edges of its range from the hourly tables. day_rollups also keeps
    -- the day's distinct installs and the buckets holding its p50, p95 and p99
    -- (NULL without durations), recomputed from the day's whole histogram whenever
    -- it grows; day_app_installs is the install set per app and day, for the
    -- distinct installs of a range over every type.
    day_rollups(app, type, day_ms, count, success, failure, installs,
                p50_bucket, p95_bucket, p99_bucket, PRIMARY KEY (app, type, day_ms))
    day_rollup_buckets(app, type, day_ms, bucket, count, PRIMARY KEY (app, type, day_ms, bucket))
    day_installs(app, type, day_ms, install_id, PRIMARY KEY (app, type, day_ms, install_id))
    day_app_installs(app, day_ms, install_id, PRIMARY KEY (app, day_ms, install_id))

    -- Outcome counters per hour of reception: "duplicate", "throttled",
    -- "rejected:<code>". Not per app: a rejected event may have no readable app.
    counters(hour_ms, name, count, PRIMARY KEY (hour_ms, name))

On PostgreSQL, built for 100 million raw events and for sharding on ``app``, the
raw ``events`` (same columns) are range-partitioned by day of ``received_ms``
with no unique key, and the idempotency key lives in
``event_ids(app, id, received_ms, PRIMARY KEY (app, id))``, which is not
partitioned, so dedup stays exact while retention drops whole partitions.

Semantics every implementation keeps:

* **Exactly once.** Inserting the raw event's key (``INSERT ... ON CONFLICT DO
  NOTHING``: the id on SQLite, ``(app, id)`` in ``event_ids`` on PostgreSQL)
  decides whether it is new. Only new events increment ``rollups``,
  ``rollup_buckets``, ``installs`` and their day tables; a conflicting one increments the
  ``duplicate`` counter instead. All of it happens in ONE transaction per batch
  (or per group of batches), so a crash never leaves an event stored but not
  counted, or counted twice. Within one batch a repeated id counts once.
* **Durable before answered.** :meth:`CollectorStore.ingest` returns only after
  the transaction holding the batch has committed.
* **Bounded.** :attr:`CollectorStore.queue_depth` is the number of events
  accepted by ``ingest`` calls that have not committed yet; a store raises
  :class:`StoreOverloaded` rather than queueing without bound.
* Retention deletes raw events only; rollups, buckets, installs, their day
  tables and counters stay.
* A database written before the day tables existed gets them, filled from the
  hourly tables (``store_sql.BACKFILL_DAY_TABLES``), in the transaction that
  creates them when a collector first opens it; a read-only reader of such a
  database reads the hourly tables alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

__all__ = [
    "HOUR_MS",
    "CollectorStore",
    "CommitObserver",
    "IngestOutcome",
    "PendingWork",
    "StatsData",
    "StatsQuery",
    "StoreOverloaded",
    "StoreUnavailable",
]

#: One hour in milliseconds: the grain of every rollup.
HOUR_MS = 3_600_000

#: Called after every commit with its duration in seconds and the number of events written.
CommitObserver = Callable[[float, int], None]

Bucket = Literal["hour", "day"]


class StoreOverloaded(StorageError):
    """The store's pending work is at its bound; the caller should answer 503."""


class StoreUnavailable(StorageError):
    """The store cannot serve now (the database is unreachable, locked or shut
    down, or the pool has no free connection); the caller should answer 503
    with ``Retry-After``. Other :class:`StorageError` s are faults, not waits."""


@attrs.frozen(kw_only=True)
class IngestOutcome:
    """What happened to each event of a batch handed to :meth:`CollectorStore.ingest`.

    ``inserted[i]`` is True when ``events[i]`` was new and is now stored and
    aggregated, False when its id was already stored (a duplicate, possibly of an
    earlier event of the same batch).
    """

    inserted: tuple[bool, ...]

    @property
    def accepted(self) -> int:
        """The number of newly stored events."""
        return sum(self.inserted)

    @property
    def duplicates(self) -> int:
        """The number of events whose id was already stored."""
        return len(self.inserted) - self.accepted


@attrs.frozen(kw_only=True)
class StatsQuery:
    """A stats request: rollup hours in ``[from_ms, to_ms)``, optional filters.

    ``from_ms`` is rounded down to its hour. ``bucket`` is the series grain.
    ``app`` and ``event_type`` filter series, totals counts and installs; the
    outcome counters (duplicates, rejected, throttled) are filtered by time only.
    """

    from_ms: int = 0
    to_ms: int = 2**62
    app: str | None = None
    event_type: str | None = None
    bucket: Bucket = "hour"

    @property
    def from_hour_ms(self) -> int:
        """``from_ms`` rounded down to the hour."""
        return self.from_ms - self.from_ms % HOUR_MS


@attrs.frozen(kw_only=True)
class StatsData:
    """The rows a store reads for a :class:`StatsQuery`, before shaping.

    ``rollups``: ``(app, type, hour_ms, count, success, failure)``.
    ``buckets``: ``(app, type, hour_ms, bucket, count)``.
    ``series_installs``: ``(app, type, bucket_start_ms, distinct installs)`` for the
    query's grain. ``total_installs``: distinct install ids over the whole range.
    ``counters``: counter name -> sum over the range.

    Series read from the day tables come with their percentiles found already:
    ``series_percentiles`` maps ``(app, type, bucket_start_ms)`` to the buckets
    holding p50, p95 and p99 (``None`` without durations), and their histograms
    come only merged per type, as ``type_buckets``: ``(type, bucket, count)``.
    The other series' percentiles come from their ``buckets`` rows; each
    type's percentiles over the range from its ``buckets`` and ``type_buckets``.
    """

    rollups: Sequence[tuple[str, str, int, int, int, int]]
    buckets: Sequence[tuple[str, str, int, int, int]]
    series_installs: Sequence[tuple[str, str, int, int]]
    total_installs: int
    counters: Mapping[str, int]
    series_percentiles: Mapping[tuple[str, str, int], Sequence[int | None]] = attrs.field(
        factory=dict
    )
    type_buckets: Sequence[tuple[str, int, int]] = ()


@runtime_checkable
class CollectorStore(Protocol):
    """Where the collector keeps events and aggregates. See the module docstring."""

    @property
    def queue_depth(self) -> int:
        """Events handed to :meth:`ingest` whose transaction has not committed yet."""
        ...

    async def ingest(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        """Store ``events`` (already validated) and update the aggregates, exactly once.

        Returns after the transaction is durable. Raises :class:`StoreOverloaded`
        when pending work is at its bound, :class:`StorageError` when the write failed
        (then nothing of the batch is stored).
        """
        ...

    async def record_outcomes(
        self, *, rejected: Mapping[str, int], throttled: int, received_ms: int
    ) -> None:
        """Add to the ``rejected:<code>`` and ``throttled`` counters of ``received_ms``'s hour.

        Written promptly, so every collector sharing the store reports them soon
        after: the SQLite store wakes its writer (no request waits for the disk),
        the PostgreSQL store writes them in a small shared transaction. A failed
        write keeps them buffered for the next one; they are never raised.
        """
        ...

    async def stats(self, query: StatsQuery) -> dict[str, Any]:
        """Return the DESIGN §7 stats document for ``query``
        (built with :func:`telemetry_core.collector.aggregation.build_stats`)."""
        ...

    async def cleanup(self, retention_days: int, now_ms: int) -> int:
        """Delete raw events received before ``now_ms - retention_days``; return how many."""
        ...

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer(seconds, events)`` after each commit (for metrics)."""
        ...

    async def close(self) -> None:
        """Finish and commit every pending batch, then release connections."""
        ...


class PendingWork:
    """What both stores share: admission of batches against a bound on events not
    yet committed (``queue_depth``), and the commit observers.

    A store subclasses it and calls :meth:`_admit` before it takes a batch,
    :meth:`_release` once the batch's transaction has ended (either way), and
    :meth:`_notify_observers` after each commit.
    """

    def __init__(self, max_pending_events: int) -> None:
        self._max_pending = max_pending_events
        self._pending_events = 0
        self._lock = threading.Lock()
        self._observers: list[CommitObserver] = []
        self._observer_failed = False

    @property
    def queue_depth(self) -> int:
        """Events handed to ``ingest`` whose transaction has not committed yet."""
        return self._pending_events

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer(seconds, events)`` after each commit."""
        self._observers.append(observer)

    def _admit(self, n_events: int, overloaded: str) -> None:
        """Count ``n_events`` as pending, or raise :class:`StoreOverloaded` with
        the message ``overloaded`` when the bound would be passed (a store with
        nothing pending always takes a batch, however large)."""
        with self._lock:
            if self._pending_events and self._pending_events + n_events > self._max_pending:
                raise StoreOverloaded(overloaded)
            self._pending_events += n_events

    def _release(self, n_events: int) -> None:
        """Forget ``n_events`` whose transaction has ended."""
        with self._lock:
            self._pending_events -= n_events

    def _notify_observers(self, elapsed: float, n_events: int) -> None:
        """Call the commit observers; a failing one is logged once, never fatal."""
        for observer in self._observers:
            try:
                observer(elapsed, n_events)
            except Exception:
                if not self._observer_failed:
                    self._observer_failed = True
                    logging.getLogger("telemetry_core.collector").exception(
                        "commit observer failed (further failures are not logged)"
                    )
