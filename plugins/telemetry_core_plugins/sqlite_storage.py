"""Storage plugin ``sqlite``: the local event store and the durable queue.

Events are kept with their exact wire encoding (``payload``), so the sender
decodes once and never re-encodes. A queued event lives in its queue entry in
``telemetry_queue``; the others (recorded locally only, or delivered) live in
``telemetry_stored_events``; the view ``telemetry_events`` shows both. Every call
is one transaction of constant SQL.

The tables and their migrations are in
:mod:`telemetry_core_plugins._sqlite_schema`; they are brought forward when a
:class:`SQLiteQueue` opens. How the queue stays cheap at any depth (see steps 2
and 4 there):

* Recording a queued event is one row: the entry, appended at ``max(id) + 1``
  to the queue's rowid b-tree, and its key in the ``event_id`` index (which
  makes recording an id twice a no-op), as many pages as a raw one-row insert.
  A fresh entry is in no partial index and no counter is touched.
* Delivering an entry moves its event (id, type, recording time, payload) to
  ``telemetry_stored_events`` in the transaction that removes the entry (one
  statement per batch).
* ``dequeue`` walks the queue table in id (FIFO) order and stops after
  ``batch_size`` due rows; only entries that are leased, waiting for a retry or
  dead are skipped on the way. A claim sets the entry's ``next_retry_at`` to its
  lease expiry, so "due" is one comparison, and a crashed sender's entries come
  back by themselves.
* The queue object remembers, for each entry it holds, the entry's row id and
  retry count, so ``mark_*`` and ``release`` touch rows by id (no index on
  ``event_id`` is needed) and re-check the event id and the lease owner.
* The size is ``max(id) - queue.holes``; every delete updates ``queue.holes``
  in its transaction. ``stats`` adds index-only counts of the small subsets
  (not yet due, leased, dead), so it never counts the whole table.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from telemetry_core.errors import ConfigError, StorageError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo, QueuedEvent, QueueStats
from telemetry_core.schema import Event
from telemetry_core_plugins._sqlite_schema import open_tables

if TYPE_CHECKING:
    import sqlite3

    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock
    from telemetry_core.protocols import Backoff, SQLiteDatabase

__all__ = ["NAME", "SQLiteQueue"]

#: The name configuration selects this provider by (``storage = "sqlite"``).
NAME: Final = "sqlite"
#: ``last_error`` keeps at most this many characters.
MAX_ERROR_LENGTH: Final = 1000
#: Claims remembered per queue object before expired ones are forgotten (an
#: acknowledgement of a forgotten claim is ignored, so the entry is resent).
_MAX_CLAIMS: Final = 65_536
#: ``backoff.should_retry(n)`` is probed up to this count to find the parking
#: threshold; a backoff that always says yes never parks an entry.
_MAX_PARK_PROBE: Final = 1000
#: Seconds added to the longest configured wait to make the horizon (see
#: :class:`SQLiteQueue`): jitter and the time a call takes stay inside it.
_HORIZON_MARGIN: Final = 600.0
#: Retention cursors (see :meth:`SQLiteQueue.cleanup_page`): a queue row id
#: after this prefix walks the queue; the stored events are walked from this
#: one (lower than any event id the schema accepts).
_QUEUE_CURSOR: Final = "#"
_STORED_START: Final = " "

_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(list[Event])

# An event recorded locally only (not queued): unless it is queued already.
_INSERT_EVENT: Final = (
    "INSERT OR IGNORE INTO telemetry_stored_events(id, type, created_at, payload)"
    " SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM telemetry_queue WHERE event_id = ?)"
)
# A queued event: the entry carries it (unless it is stored or queued already).
_INSERT_ENTRY: Final = (
    "INSERT OR IGNORE INTO telemetry_queue(event_id, type, created_at, payload)"
    " SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM telemetry_stored_events WHERE id = ?)"
)
# Stored events move into the queue in the given order (queued ones are not stored).
_ENQUEUE: Final = (
    "INSERT OR IGNORE INTO telemetry_queue(event_id, type, created_at, recorded_at, payload)"
    " SELECT e.id, e.type, ?, e.created_at, e.payload FROM json_each(?) AS j"
    " JOIN telemetry_stored_events AS e ON e.id = j.value GROUP BY e.id ORDER BY min(j.key)"
)
_UNSTORE: Final = (
    "DELETE FROM telemetry_stored_events WHERE id IN (SELECT value FROM json_each(?))"
    " AND EXISTS (SELECT 1 FROM telemetry_queue AS q WHERE q.event_id = telemetry_stored_events.id)"
)
# Keeps the events of entries (chosen by a WHERE clause on the queue) that are
# about to be deleted.
_ARCHIVE: Final = (
    "INSERT OR IGNORE INTO telemetry_stored_events(id, type, created_at, payload)"
    " SELECT event_id, type, coalesce(recorded_at, created_at), payload FROM telemetry_queue"
)
_HOLES: Final = "SELECT value FROM telemetry_counters WHERE name = 'queue.holes'"
_MAX_ID: Final = "SELECT coalesce(max(id), 0) FROM telemetry_queue"
_ADD_HOLES: Final = "UPDATE telemetry_counters SET value = value + ? WHERE name = 'queue.holes'"
# The oldest entries no live lease holds: an entry on the wire may be delivered,
# so trimming it would count a delivered event as dropped. Their events stay
# recorded locally (archived first).
_OLDEST_FREE: Final = (
    "SELECT json_group_array(id) FROM (SELECT id FROM telemetry_queue"
    " WHERE lease_expires_at IS NULL OR lease_expires_at <= ? ORDER BY id LIMIT ?)"
)
_BY_ROW_IDS: Final = " WHERE id IN (SELECT value FROM json_each(?))"
_ARCHIVE_ROWS: Final = _ARCHIVE + _BY_ROW_IDS
_DROP_ROWS: Final = "DELETE FROM telemetry_queue" + _BY_ROW_IDS
_COUNT: Final = (
    "INSERT INTO telemetry_counters(name, value) VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)
# "Due" is a wall-clock comparison, as the times are shared between processes.
# A time further ahead than any delay or lease this queue ever sets (the
# horizon) can only come from a clock that stepped backwards since it was
# written: such an entry is due too, so a backwards step never holds events.
_DUE: Final = "(next_retry_at <= ? OR next_retry_at > ?)"
# Walks the queue's rowid b-tree from the front; the entry carries its event
# (an entry without a payload cannot be sent and is removed).
_SELECT_DUE: Final = (
    "SELECT id, event_id, retry_count, created_at, last_error, payload, backoff_step"
    " FROM telemetry_queue WHERE dead = 0 AND (next_retry_at <= ? OR next_retry_at > ?)"
    " ORDER BY id LIMIT ?"
)
# The selected rows are exactly the due live rows between the first and the
# last selected id, so one range update claims them all.
_CLAIM: Final = (
    "UPDATE telemetry_queue SET lease_owner = ?, lease_expires_at = ?, next_retry_at = ?"
    " WHERE id BETWEEN ? AND ? AND dead = 0 AND " + _DUE
)
# Entries by row id (two JSON arrays: row ids, event ids) held by an owner. The
# event id check keeps a stale claim on a row id that was freed and reused
# from touching the new entry.
_HELD: Final = (
    " WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ?"
    " AND event_id IN (SELECT value FROM json_each(?))"
)
_SUBMITTED: Final = "DELETE FROM telemetry_queue" + _HELD
_ARCHIVE_HELD: Final = _ARCHIVE + _HELD
_RESCHEDULE: Final = (
    "UPDATE telemetry_queue SET retry_count = retry_count + 1, backoff_step = backoff_step + ?,"
    " next_retry_at = ?, last_error = ?, lease_owner = NULL, lease_expires_at = NULL" + _HELD
)
_KILL: Final = (
    "UPDATE telemetry_queue SET retry_count = retry_count + 1, dead = 1, next_retry_at = 0,"
    " last_error = ?, dead_context = ?, lease_owner = NULL, lease_expires_at = NULL" + _HELD
)
_RELEASE: Final = (
    "UPDATE telemetry_queue SET next_retry_at = 0, lease_owner = NULL, lease_expires_at = NULL"
    + _HELD
)
_REVIVE: Final = (
    "UPDATE telemetry_queue INDEXED BY idx_telemetry_queue_dead"
    " SET dead = 0, retry_count = 0, backoff_step = 0, next_retry_at = 0, lease_owner = NULL,"
    " lease_expires_at = NULL, dead_context = NULL WHERE dead = 1"
)
# Dead entries that died under other delivery settings than the given ones.
_REVIVE_OTHERS: Final = _REVIVE + " AND dead_context IS NOT ?"
_RETRY_NOW: Final = (
    "UPDATE telemetry_queue INDEXED BY idx_telemetry_queue_next_retry_at SET next_retry_at = 0"
    " WHERE dead = 0 AND next_retry_at > 0 AND lease_owner IS NULL"
)
_DEAD: Final = (
    "SELECT count(*) FROM telemetry_queue INDEXED BY idx_telemetry_queue_dead WHERE dead = 1"
)
# Live entries not due yet (waiting for a retry, or leased), and how many of
# them hold a live lease: a claim sets next_retry_at to the lease expiry.
_NOT_DUE: Final = (
    "SELECT count(*), coalesce(sum(lease_expires_at > ?), 0),"
    " min(CASE WHEN lease_expires_at IS NULL THEN next_retry_at END) FROM telemetry_queue"
    " INDEXED BY idx_telemetry_queue_next_retry_at"
    " WHERE dead = 0 AND next_retry_at > 0 AND next_retry_at > ? AND next_retry_at <= ?"
)
# Live entries that failed at least the parking threshold of consecutive times
# (a failed entry is always in the retry index: next_retry_at > 0).
_PARKED: Final = (
    "SELECT count(*) FROM telemetry_queue INDEXED BY idx_telemetry_queue_next_retry_at"
    " WHERE dead = 0 AND next_retry_at > 0 AND retry_count >= ?"
)
# Enqueue order is id order, so the oldest live entry is the first live row.
_OLDEST: Final = "SELECT created_at FROM telemetry_queue WHERE dead = 0 ORDER BY id LIMIT 1"
_COUNTERS: Final = (
    "SELECT name, value FROM telemetry_counters WHERE name = 'queue.holes'"
    " OR (name > 'dropped.' AND name < 'dropped/')"
)
_RETENTION_ENTRIES: Final = (
    "DELETE FROM telemetry_queue WHERE coalesce(recorded_at, created_at) < ?"
)
_RETENTION_EVENTS: Final = "DELETE FROM telemetry_stored_events WHERE created_at < ?"
_EVENT_COUNTS: Final = (
    "SELECT type, sum(n) FROM (SELECT type, count(*) AS n FROM telemetry_stored_events"
    " GROUP BY type UNION ALL SELECT type, count(*) FROM telemetry_queue GROUP BY type)"
    " GROUP BY type ORDER BY type"
)
_ORPHAN: Final = "DELETE FROM telemetry_queue WHERE id = ?"
# One page of the retention scan of stored events, in id order: the last id
# seen, the ids of the page recorded before the cutoff (a JSON array) and the
# rows seen.
_RETENTION_PAGE: Final = (
    "SELECT max(id), json_group_array(id) FILTER (WHERE created_at < ?), count(*)"
    " FROM (SELECT id, created_at FROM telemetry_stored_events WHERE id > ? ORDER BY id LIMIT ?)"
)
_RETENTION_EVENTS_OF: Final = (
    "DELETE FROM telemetry_stored_events WHERE id IN (SELECT value FROM json_each(?))"
    " AND created_at < ?"
)
# The same over the queue, in row id order.
_RETENTION_QUEUE_PAGE: Final = (
    "SELECT max(id), json_group_array(id) FILTER (WHERE coalesce(recorded_at, created_at) < ?),"
    " count(*) FROM (SELECT id, recorded_at, created_at FROM telemetry_queue WHERE id > ?"
    " ORDER BY id LIMIT ?)"
)


def _held_params(held: list[tuple[str, int, int]], owner: str) -> tuple[str, str, str]:
    """The parameters of :data:`_HELD` for (event id, row id, retry count) triples."""
    return (
        _encoder.encode([h[1] for h in held]).decode(),
        owner,
        _encoder.encode([h[0] for h in held]).decode(),
    )


def _deleted(conn: sqlite3.Connection, count: int, max_before: int) -> None:
    """Keep ``queue.holes`` exact after ``count`` rows were deleted: the size is
    ``max(id) - holes``, and ``max(id)`` may have dropped."""
    if count <= 0:
        return
    max_after = int(conn.execute(_MAX_ID).fetchone()[0])
    conn.execute(_ADD_HOLES, (count + max_after - max_before,))


class SQLiteQueue:
    """The :class:`~telemetry_core.protocols.Storage` of the bundled ``sqlite`` plugin.

    :param store: the local SQLite file (the core's
        :class:`~telemetry_core.protocols.SQLiteDatabase` handle); the queue's
        tables are made or migrated there at once. On a read-only store that
        holds none yet, the queue reads as empty.
    :param backoff: schedules failed entries and decides when they are dead.
    :param clock: wall clock in seconds (the same one the backoff uses).
    :param lease: seconds a :meth:`dequeue` claim lasts before the entries are
        due again (a crashed sender's batch comes back after this).
    :param max_queue_size: entries kept at most; beyond it the oldest entries no
        live lease holds are dropped and counted under ``dropped.queue_full``.
    :param horizon: seconds; no retry time or lease this queue sets lies further
        ahead (the largest backoff delay, ``Retry-After`` or lease). A stored time
        further ahead than this means the wall clock stepped backwards, and the
        entry is treated as due.

    Failures never dead-letter an entry (DESIGN §7): :meth:`mark_failed` always
    schedules another attempt; after ``backoff.should_retry(n)`` turns false the
    entry is only reported as *parked* in :meth:`stats`. Only :meth:`mark_dead`
    (a permanent refusal) makes a dead letter.

    Claims are owned by this object in this process: a token made of a random
    id and the process id (a forked child gets its own). Two queue objects,
    threads or processes on one file never hold the same entry while a lease is
    live. ``mark_*`` and ``release`` act only on entries this owner holds, so a
    late answer after the lease moved on never resurrects or deletes another
    sender's claim.
    """

    def __init__(
        self,
        store: SQLiteDatabase,
        backoff: Backoff,
        *,
        clock: Clock = time.time,
        lease: float = 60.0,
        max_queue_size: int = 10_000,
        horizon: float = 2 * 3600.0,
    ) -> None:
        if lease <= 0:
            raise ConfigError("lease_seconds", f"must be > 0, got {lease!r}")
        if max_queue_size <= 0:
            raise ConfigError("max_queue_size", f"must be > 0, got {max_queue_size!r}")
        self.store = store
        # False: a read-only view of a file in which no table of ours exists.
        self._tables = open_tables(store)
        self.backoff = backoff
        self.clock = clock
        self.lease = lease
        self.max_queue_size = max_queue_size
        self.horizon = max(float(horizon), lease)
        # The failure count from which an entry is reported as parked.
        self._park_after = next(
            (n for n in range(_MAX_PARK_PROBE) if not backoff.should_retry(n)), _MAX_PARK_PROBE
        )
        self._token = uuid.uuid4().hex
        # event id -> (queue row id, retry count, lease expiry, backoff step) of
        # each entry this object claimed and has not acknowledged yet.
        self._claims: dict[str, tuple[int, int, float, int]] = {}

    def __repr__(self) -> str:
        return f"SQLiteQueue({self.store!r}, lease={self.lease}, max={self.max_queue_size})"

    @property
    def owner(self) -> str:
        """The lease owner token of this queue object in this process."""
        return f"{self._token}:{os.getpid()}"

    # -- writing -----------------------------------------------------------

    def record(self, event: Event, *, enqueue: bool) -> None:
        """Store ``event`` (and queue it when ``enqueue``) in one transaction.

        Recording an id that is already stored changes nothing.
        """
        payload = _encoder.encode(event)
        now = self.clock()
        if enqueue:
            with self.store.transaction() as conn:
                cursor = conn.execute(_INSERT_ENTRY, (event.id, event.type, now, payload, event.id))
                # The size is at most the newest id: no lookup while that fits.
                if cursor.rowcount == 1 and (cursor.lastrowid or 0) > self.max_queue_size:
                    self._trim(conn, cursor.lastrowid or 0)
            return
        with self.store.transaction() as conn:
            conn.execute(_INSERT_EVENT, (event.id, event.type, now, payload, event.id))

    def record_many(self, events: Sequence[tuple[Event, bool]]) -> None:
        """Store many events (each queued when its flag is True) in one
        transaction, each table in one ``executemany``; already stored ids are
        skipped and the queue bound holds, as with :meth:`record`."""
        now = self.clock()
        queued: list[tuple[str, str, float, bytes, str]] = []
        local: list[tuple[str, str, float, bytes, str]] = []
        for event, enqueue in events:
            row = (event.id, event.type, now, _encoder.encode(event), event.id)
            (queued if enqueue else local).append(row)
        with self.store.transaction() as conn:
            if queued:
                conn.executemany(_INSERT_ENTRY, queued)
                last = int(conn.execute(_MAX_ID).fetchone()[0])
                if last > self.max_queue_size:
                    self._trim(conn, last)
            if local:
                conn.executemany(_INSERT_EVENT, local)

    def enqueue(self, event_ids: Sequence[str]) -> int:
        """Queue stored events (unknown or already queued ids are skipped), in
        the given order; return how many were newly queued."""
        if not event_ids:
            return 0
        wanted = _encoder.encode(list(event_ids)).decode()
        with self.store.transaction() as conn:
            added = conn.execute(_ENQUEUE, (self.clock(), wanted)).rowcount
            if added > 0:
                conn.execute(_UNSTORE, (wanted,))
                last = int(conn.execute(_MAX_ID).fetchone()[0])
                if last > self.max_queue_size:
                    self._trim(conn, last)
        return max(added, 0)

    def _trim(self, conn: sqlite3.Connection, max_id: int) -> None:
        excess = max_id - int(conn.execute(_HOLES).fetchone()[0]) - self.max_queue_size
        if excess > 0:
            rows = conn.execute(_OLDEST_FREE, (self.clock(), excess)).fetchone()[0]
            conn.execute(_ARCHIVE_ROWS, (rows,))
            dropped = conn.execute(_DROP_ROWS, (rows,)).rowcount
            _deleted(conn, dropped, max_id)
            if dropped > 0:
                conn.execute(_COUNT, ("dropped.queue_full", dropped))

    # -- sending -----------------------------------------------------------

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        """Claim up to ``batch_size`` due entries, oldest first, for ``lease``
        seconds, and return them with their events."""
        if batch_size <= 0:
            return []
        now = self.clock()
        expires = now + self.lease
        ahead = now + self.horizon
        with self.store.transaction() as conn:
            rows = conn.execute(_SELECT_DUE, (now, ahead, batch_size)).fetchall()
            if not rows:
                return []
            conn.execute(
                _CLAIM, (self.owner, expires, expires, rows[0][0], rows[-1][0], now, ahead)
            )
            if any(r[5] is None for r in rows):
                rows = self._drop_orphans(conn, rows)
        if not rows:
            return []
        try:
            events = _batch_decoder.decode(b"[" + b",".join([r[5] for r in rows]) + b"]")
        except msgspec.DecodeError as exc:
            raise StorageError(f"a stored event payload does not decode: {exc}") from exc
        claims = self._claims
        if len(claims) >= _MAX_CLAIMS:
            self._forget_expired(now)
        batch = []
        for (row_id, event_id, retry_count, created_at, last_error, _, step), event in zip(
            rows, events, strict=True
        ):
            claims[event_id] = (row_id, retry_count, expires, step)
            batch.append(
                QueuedEvent(
                    event=event,
                    retry_count=retry_count,
                    enqueued_at=created_at,
                    last_error=last_error,
                )
            )
        return batch

    def _drop_orphans(self, conn: sqlite3.Connection, rows: list[Any]) -> list[Any]:
        """Remove entries whose event is no longer stored; return the others."""
        max_before = int(conn.execute(_MAX_ID).fetchone()[0])
        orphans = [(r[0],) for r in rows if r[5] is None]
        _deleted(conn, conn.executemany(_ORPHAN, orphans).rowcount, max_before)
        return [r for r in rows if r[5] is not None]

    def _forget_expired(self, now: float) -> None:
        for event_id, claim in list(self._claims.items()):
            if claim[2] <= now:
                self._claims.pop(event_id, None)

    def _held(self, event_ids: Iterable[str]) -> list[tuple[str, int, int]]:
        """(event id, row id, backoff step) of the given entries this object claimed."""
        claims = self._claims
        return [
            (event_id, claim[0], claim[3])
            for event_id in event_ids
            if (claim := claims.get(event_id)) is not None
        ]

    def _settle(self, held: list[tuple[str, int, int]]) -> None:
        pop = self._claims.pop
        for event_id, _, _ in held:
            pop(event_id, None)

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        """Remove delivered entries this owner holds (events stay stored)."""
        held = self._held(event_ids)
        if not held:
            return
        owner = self.owner
        params = _held_params(held, owner)
        with self.store.transaction() as conn:
            max_before = int(conn.execute(_MAX_ID).fetchone()[0])
            conn.execute(_ARCHIVE_HELD, params)
            deleted = conn.execute(_SUBMITTED, params).rowcount
            _deleted(conn, deleted, max_before)
        self._settle(held)

    def mark_failed(
        self, event_ids: Sequence[str], error: str, retry_after: float | None = None
    ) -> None:
        """Count a failed attempt on entries this owner holds and schedule the
        next one at ``backoff.next_retry_timestamp(step, retry_after)``.

        A failure is never final here (DESIGN §7). ``step`` is the entry's
        backoff exponent: it grows by one with each failure the backoff timed,
        and not with one the server timed with ``Retry-After``."""
        held = self._held(event_ids)
        if not held:
            return
        owner, message = self.owner, error[:MAX_ERROR_LENGTH]
        backoff = self.backoff
        grow = 0 if retry_after is not None else 1
        # One backoff decision per distinct step, as one batch shares it.
        plan: dict[int, float] = {}
        for _, _, step in held:
            if step not in plan:
                plan[step] = backoff.next_retry_timestamp(step, retry_after)
        with self.store.transaction() as conn:
            for step, at in plan.items():
                group = held if len(plan) == 1 else [h for h in held if h[2] == step]
                conn.execute(_RESCHEDULE, (grow, at, message, *_held_params(group, owner)))
        self._settle(held)

    def mark_dead(self, event_ids: Sequence[str], error: str, context: str | None = None) -> None:
        """Dead-letter entries this owner holds at once (a permanent refusal).

        :param context: the delivery fingerprint in force (see
            :func:`telemetry_core.delivery.delivery_context`); a later
            ``revive_dead(except_context=...)`` with another one revives them.
        """
        held = self._held(event_ids)
        if not held:
            return
        owner, message = self.owner, error[:MAX_ERROR_LENGTH]
        with self.store.transaction() as conn:
            conn.execute(_KILL, (message, context, *_held_params(held, owner)))
        self._settle(held)

    def release(self, event_ids: Sequence[str]) -> None:
        """Give entries this owner holds back, due now, without counting an attempt."""
        held = self._held(event_ids)
        if not held:
            return
        owner = self.owner
        with self.store.transaction() as conn:
            conn.execute(_RELEASE, _held_params(held, owner))
        self._settle(held)

    def retry_now(self) -> int:
        """Make every live entry waiting for a retry (not leased) due now; return
        how many (a user-run submit tries past the client's own backoff)."""
        with self.store.transaction() as conn:
            return max(conn.execute(_RETRY_NOW).rowcount, 0)

    def revive_dead(self, except_context: str | None = None) -> int:
        """Make dead entries due again with ``retry_count`` 0; return how many.

        :param except_context: when given, only entries that died under another
            delivery fingerprint are revived (the automatic revival of DESIGN §7);
            None revives every dead entry (``telemetry submit --retry-dead``).
        """
        with self.store.transaction() as conn:
            if except_context is None:
                return max(conn.execute(_REVIVE).rowcount, 0)
            return max(conn.execute(_REVIVE_OTHERS, (except_context,)).rowcount, 0)

    # -- housekeeping ------------------------------------------------------

    def stats(self) -> QueueStats:
        """A consistent snapshot from the newest id, the counters and
        index-only counts of the dead entries and of those not due yet (leased
        or waiting); never a full-table count."""
        if not self._tables:
            return QueueStats(pending=0)
        now = self.clock()
        with self.store.snapshot() as conn:
            size = int(conn.execute(_MAX_ID).fetchone()[0])
            counters = dict(conn.execute(_COUNTERS).fetchall())
            dead = int(conn.execute(_DEAD).fetchone()[0])
            not_due, leased, next_at = conn.execute(
                _NOT_DUE, (now, now, now + self.horizon)
            ).fetchone()
            parked = int(conn.execute(_PARKED, (self._park_after,)).fetchone()[0])
            oldest = conn.execute(_OLDEST).fetchone()
        pending = size - int(counters.pop("queue.holes", 0)) - dead
        return QueueStats(
            pending=pending,
            due=max(pending - int(not_due), 0),
            leased=int(leased),
            dead=dead,
            parked=parked,
            next_attempt_at=None if next_at is None else float(next_at),
            dropped={k.removeprefix("dropped."): int(v) for k, v in counters.items()},
            oldest_enqueued_at=None if oldest is None else float(oldest[0]),
        )

    def event_counts(self) -> dict[str, int]:
        """Locally stored events by type (queued ones included)."""
        if not self._tables:
            return {}
        with self.store.snapshot() as conn:
            rows = conn.execute(_EVENT_COUNTS).fetchall()
        return {str(k): int(v) for k, v in rows}

    def cleanup(self, older_than: float) -> int:
        """Delete events recorded before ``older_than``, queued ones included
        (counted under ``dropped.expired``); return how many events went."""
        with self.store.transaction() as conn:
            max_before = int(conn.execute(_MAX_ID).fetchone()[0])
            entries = max(conn.execute(_RETENTION_ENTRIES, (older_than,)).rowcount, 0)
            if entries > 0:
                _deleted(conn, entries, max_before)
                conn.execute(_COUNT, ("dropped.expired", entries))
            return entries + max(conn.execute(_RETENTION_EVENTS, (older_than,)).rowcount, 0)

    def cleanup_page(self, older_than: float, after: str, page: int) -> tuple[str | None, int]:
        """One bounded step of :meth:`cleanup`: look at the next ``page`` events
        after the id ``after`` (``""`` to start), without a write lock, then
        delete those recorded before ``older_than`` and their queue entries in
        one short transaction.

        Returns the id to pass as ``after`` for the next step (None when the
        table is done) and how many events went. Lets a caller clean a large
        store in small steps that never hold the write lock for long.

        The walk covers the queue first (queued events live in their entries),
        then the stored events; the cursor says which.
        """
        removed = 0
        if after == "" or after.startswith(_QUEUE_CURSOR):
            last_row = int(after[len(_QUEUE_CURSOR) :] or 0)
            last, removed, seen = self._expire_entries(older_than, last_row, page)
            if seen >= page:
                return f"{_QUEUE_CURSOR}{last}", removed
            after = _STORED_START
        conn = self.store.connection()
        last, old, seen = conn.execute(_RETENTION_PAGE, (older_than, after, page)).fetchone()
        if old is not None and old != "[]":
            with self.store.transaction() as conn:
                removed += max(conn.execute(_RETENTION_EVENTS_OF, (old, older_than)).rowcount, 0)
        return (last if seen >= page else None), removed

    def _expire_entries(self, older_than: float, after: int, page: int) -> tuple[int, int, int]:
        """One page of the queue walk: (last row id seen, entries deleted, rows seen)."""
        conn = self.store.connection()
        last, old, seen = conn.execute(_RETENTION_QUEUE_PAGE, (older_than, after, page)).fetchone()
        entries = 0
        if old is not None and old != "[]":
            with self.store.transaction() as conn:
                max_before = int(conn.execute(_MAX_ID).fetchone()[0])
                entries = max(conn.execute(_DROP_ROWS, (old,)).rowcount, 0)
                _deleted(conn, entries, max_before)
                if entries > 0:
                    conn.execute(_COUNT, ("dropped.expired", entries))
        return int(last or 0), entries, int(seen)

    def close(self) -> None:
        """Close the store's connections in this process (reopened on next use)."""
        self.store.close()


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer the ``sqlite`` storage."""
    return [
        ProviderInfo(
            kind="storage",
            name=NAME,
            description="local SQLite event store with a leased, durable FIFO queue",
        )
    ]


@hookimpl
def telemetry_make_storage(
    name: str,
    config: TelemetryConfig,
    store: SQLiteDatabase,
    backoff: Backoff,
    clock: Clock,
) -> SQLiteQueue | None:
    """Build the queue on ``store`` with ``config.lease`` and
    ``config.max_queue_size`` when ``name`` is ``sqlite``; its horizon is the
    longest wait the configuration allows (backoff cap, ``Retry-After`` cap,
    lease), with a margin."""
    if name != NAME:
        return None
    return SQLiteQueue(
        store,
        backoff,
        clock=clock,
        lease=config.lease,
        max_queue_size=config.max_queue_size,
        horizon=max(config.max_delay, config.max_retry_after, config.lease) + _HORIZON_MARGIN,
    )
