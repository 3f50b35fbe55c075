"""Storage plugin ``sqlite``: the local event store and the durable queue.

Events go to ``telemetry_events`` with their exact wire encoding (``payload``),
so the sender decodes once and never re-encodes. Queue entries live in
``telemetry_queue``; every call is one transaction of set-based, constant SQL
(id lists travel as one JSON parameter read with ``json_each``).

How the queue stays cheap at any depth:

* ``dequeue`` walks the partial index of live entries in FIFO order
  (``idx_telemetry_queue_fifo``, covering ``next_retry_at``) and stops after
  ``batch_size`` due rows; only entries that are leased or waiting for a retry
  are skipped on the way.
* A claim sets the entry's ``next_retry_at`` to its lease expiry, so "due" is
  one comparison, and a crashed sender's entries come back by themselves.
* Triggers keep ``queue.size`` and ``queue.dead`` in ``telemetry_counters``
  within the same transaction; ``stats`` adds index-only counts of the small
  subsets (not yet due, leased).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from telemetry_core.errors import StorageError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo, QueuedEvent, QueueStats
from telemetry_core.schema import Event

if TYPE_CHECKING:
    import sqlite3

    from telemetry_core.config import TelemetryConfig
    from telemetry_core.local_store import LocalStore
    from telemetry_core.models import Clock
    from telemetry_core.protocols import Backoff

__all__ = ["NAME", "SQLiteQueue"]

#: The name configuration selects this provider by (``storage = "sqlite"``).
NAME: Final = "sqlite"
#: ``last_error`` keeps at most this many characters.
MAX_ERROR_LENGTH: Final = 1000

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)

_IDS: Final = "SELECT value FROM json_each(?)"

_INSERT_EVENT: Final = (
    "INSERT OR IGNORE INTO telemetry_events(id, type, timestamp, session_id, duration_ms,"
    " success, app, app_version, install_id, schema, properties, payload, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ENTRY: Final = "INSERT OR IGNORE INTO telemetry_queue(event_id, created_at) VALUES (?, ?)"
_ENQUEUE: Final = (
    "INSERT OR IGNORE INTO telemetry_queue(event_id, created_at)"
    " SELECT e.id, ? FROM json_each(?) AS j JOIN telemetry_events AS e ON e.id = j.value"
    " ORDER BY j.key"
)
_QUEUE_SIZE: Final = "SELECT value FROM telemetry_counters WHERE name = 'queue.size'"
_DROP_OLDEST: Final = (
    "DELETE FROM telemetry_queue WHERE id IN (SELECT id FROM telemetry_queue ORDER BY id LIMIT ?)"
)
_COUNT: Final = (
    "INSERT INTO telemetry_counters(name, value) VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)
_SELECT_DUE: Final = (
    "SELECT q.id, q.retry_count, q.created_at, q.last_error, e.payload"
    " FROM telemetry_queue AS q INDEXED BY idx_telemetry_queue_fifo"
    " JOIN telemetry_events AS e ON e.id = q.event_id"
    " WHERE q.dead = 0 AND q.next_retry_at <= ? ORDER BY q.id LIMIT ?"
)
# The selected rows are exactly the due live rows up to the last selected id,
# so one range update claims them all.
_CLAIM: Final = (
    "UPDATE telemetry_queue INDEXED BY idx_telemetry_queue_fifo"
    " SET lease_owner = ?, lease_expires_at = ?, next_retry_at = ?"
    " WHERE dead = 0 AND next_retry_at <= ? AND id <= ?"
)
_SUBMITTED: Final = f"DELETE FROM telemetry_queue WHERE event_id IN ({_IDS}) AND lease_owner = ?"
_HELD_BY_RETRY_COUNT: Final = (
    "SELECT retry_count FROM telemetry_queue"
    f" WHERE event_id IN ({_IDS}) AND lease_owner = ? GROUP BY retry_count"
)
_RESCHEDULE: Final = (
    "UPDATE telemetry_queue SET retry_count = retry_count + 1, next_retry_at = ?,"
    " last_error = ?, lease_owner = NULL, lease_expires_at = NULL"
    f" WHERE event_id IN ({_IDS}) AND lease_owner = ? AND retry_count = ?"
)
_KILL_RETRY_COUNT: Final = (
    "UPDATE telemetry_queue SET retry_count = retry_count + 1, dead = 1,"
    " last_error = ?, lease_owner = NULL, lease_expires_at = NULL"
    f" WHERE event_id IN ({_IDS}) AND lease_owner = ? AND retry_count = ?"
)
_KILL: Final = (
    "UPDATE telemetry_queue SET retry_count = retry_count + 1, dead = 1,"
    " last_error = ?, lease_owner = NULL, lease_expires_at = NULL"
    f" WHERE event_id IN ({_IDS}) AND lease_owner = ?"
)
_RELEASE: Final = (
    "UPDATE telemetry_queue SET next_retry_at = 0, lease_owner = NULL, lease_expires_at = NULL"
    f" WHERE event_id IN ({_IDS}) AND lease_owner = ?"
)
_REVIVE: Final = (
    "UPDATE telemetry_queue INDEXED BY idx_telemetry_queue_dead"
    " SET dead = 0, retry_count = 0, next_retry_at = 0, lease_owner = NULL,"
    " lease_expires_at = NULL WHERE dead = 1"
)
_NOT_DUE: Final = (
    "SELECT count(*) FROM telemetry_queue INDEXED BY idx_telemetry_queue_next_retry_at"
    " WHERE dead = 0 AND next_retry_at > ?"
)
_LEASED: Final = (
    "SELECT count(*) FROM telemetry_queue INDEXED BY idx_telemetry_queue_lease"
    " WHERE lease_owner IS NOT NULL AND lease_expires_at > ?"
)
_OLDEST: Final = (
    "SELECT created_at FROM telemetry_queue INDEXED BY idx_telemetry_queue_created_at"
    " WHERE dead = 0 ORDER BY created_at LIMIT 1"
)
_COUNTERS: Final = (
    "SELECT name, value FROM telemetry_counters WHERE name IN ('queue.size', 'queue.dead')"
    " OR (name > 'dropped.' AND name < 'dropped/')"
)
_RETENTION_ENTRIES: Final = (
    "DELETE FROM telemetry_queue"
    " WHERE event_id IN (SELECT id FROM telemetry_events WHERE created_at < ?)"
)
_RETENTION_EVENTS: Final = "DELETE FROM telemetry_events WHERE created_at < ?"


def _id_list(event_ids: Sequence[str]) -> str:
    return _encoder.encode(list(event_ids)).decode()


class SQLiteQueue:
    """The :class:`~telemetry_core.protocols.Storage` of the bundled ``sqlite`` plugin.

    :param store: the opened :class:`~telemetry_core.local_store.LocalStore`.
    :param backoff: schedules failed entries and decides when they are dead.
    :param clock: wall clock in seconds (the same one the backoff uses).
    :param lease: seconds a :meth:`dequeue` claim lasts before the entries are
        due again (a crashed sender's batch comes back after this).
    :param max_queue_size: entries kept at most; beyond it the oldest are dropped
        and counted under ``dropped.queue_full``.

    Claims are owned by this object in this process: a token made of a random
    id and the process id (a forked child gets its own). Two queue objects,
    threads or processes on one file never hold the same entry while a lease is
    live. ``mark_*`` and ``release`` act only on entries this owner holds, so a
    late answer after the lease moved on never resurrects or deletes another
    sender's claim.
    """

    def __init__(
        self,
        store: LocalStore,
        backoff: Backoff,
        *,
        clock: Clock = time.time,
        lease: float = 60.0,
        max_queue_size: int = 10_000,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be > 0, got {lease!r}")
        if max_queue_size <= 0:
            raise ValueError(f"max_queue_size must be > 0, got {max_queue_size!r}")
        self.store = store
        self.backoff = backoff
        self.clock = clock
        self.lease = lease
        self.max_queue_size = max_queue_size
        self._token = uuid.uuid4().hex

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
        properties = _encoder.encode(event.properties).decode()
        success = None if event.success is None else int(event.success)
        now = self.clock()
        with self.store.transaction() as conn:
            cursor = conn.execute(
                _INSERT_EVENT,
                (
                    event.id,
                    event.type,
                    event.timestamp,
                    event.session_id,
                    event.duration_ms,
                    success,
                    event.app,
                    event.app_version,
                    event.install_id,
                    event.schema,
                    properties,
                    payload,
                    now,
                ),
            )
            if enqueue and cursor.rowcount == 1:
                conn.execute(_INSERT_ENTRY, (event.id, now))
                self._trim(conn)

    def enqueue(self, event_ids: Sequence[str]) -> int:
        """Queue stored events (unknown or already queued ids are skipped), in
        the given order; return how many were newly queued."""
        if not event_ids:
            return 0
        with self.store.transaction() as conn:
            added = conn.execute(_ENQUEUE, (self.clock(), _id_list(event_ids))).rowcount
            if added:
                self._trim(conn)
        return max(added, 0)

    def _trim(self, conn: sqlite3.Connection) -> None:
        size = conn.execute(_QUEUE_SIZE).fetchone()[0]
        excess = int(size) - self.max_queue_size
        if excess > 0:
            dropped = conn.execute(_DROP_OLDEST, (excess,)).rowcount
            conn.execute(_COUNT, ("dropped.queue_full", dropped))

    # -- sending -----------------------------------------------------------

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        """Claim up to ``batch_size`` due entries, oldest first, for ``lease``
        seconds, and return them with their events."""
        if batch_size <= 0:
            return []
        now = self.clock()
        expires = now + self.lease
        with self.store.transaction() as conn:
            rows = conn.execute(_SELECT_DUE, (now, batch_size)).fetchall()
            if not rows:
                return []
            conn.execute(_CLAIM, (self.owner, expires, expires, now, rows[-1][0]))
        try:
            return [
                QueuedEvent(
                    event=_decoder.decode(payload),
                    retry_count=retry_count,
                    enqueued_at=created_at,
                    last_error=last_error,
                )
                for _id, retry_count, created_at, last_error, payload in rows
            ]
        except msgspec.DecodeError as exc:
            raise StorageError(f"a stored event payload does not decode: {exc}") from exc

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        """Remove delivered entries this owner holds (events stay stored)."""
        if not event_ids:
            return
        with self.store.transaction() as conn:
            conn.execute(_SUBMITTED, (_id_list(event_ids), self.owner))

    def mark_failed(
        self, event_ids: Sequence[str], error: str, retry_after: float | None = None
    ) -> None:
        """Count a failed attempt on entries this owner holds: schedule the next
        one at ``backoff.next_retry_timestamp(retry_count, retry_after)``, or
        dead-letter the entry once ``backoff.should_retry(retry_count)`` is false.
        ``retry_count`` is the number of failed attempts before this one."""
        if not event_ids:
            return
        ids, owner, message = _id_list(event_ids), self.owner, error[:MAX_ERROR_LENGTH]
        with self.store.transaction() as conn:
            counts = [r[0] for r in conn.execute(_HELD_BY_RETRY_COUNT, (ids, owner))]
            for count in counts:
                if self.backoff.should_retry(count):
                    at = self.backoff.next_retry_timestamp(count, retry_after)
                    conn.execute(_RESCHEDULE, (at, message, ids, owner, count))
                else:
                    conn.execute(_KILL_RETRY_COUNT, (message, ids, owner, count))

    def mark_dead(self, event_ids: Sequence[str], error: str) -> None:
        """Dead-letter entries this owner holds at once (a terminal answer)."""
        if not event_ids:
            return
        with self.store.transaction() as conn:
            conn.execute(_KILL, (error[:MAX_ERROR_LENGTH], _id_list(event_ids), self.owner))

    def release(self, event_ids: Sequence[str]) -> None:
        """Give entries this owner holds back, due now, without counting an attempt."""
        if not event_ids:
            return
        with self.store.transaction() as conn:
            conn.execute(_RELEASE, (_id_list(event_ids), self.owner))

    def revive_dead(self) -> int:
        """Make every dead entry due again with ``retry_count`` 0; return how many."""
        with self.store.transaction() as conn:
            return max(conn.execute(_REVIVE).rowcount, 0)

    # -- housekeeping ------------------------------------------------------

    def stats(self) -> QueueStats:
        """A consistent snapshot from counters and index-only counts of the
        entries not due yet and of live leases; never a full-table count."""
        now = self.clock()
        with self.store.snapshot() as conn:
            counters = dict(conn.execute(_COUNTERS).fetchall())
            not_due = int(conn.execute(_NOT_DUE, (now,)).fetchone()[0])
            leased = int(conn.execute(_LEASED, (now,)).fetchone()[0])
            oldest = conn.execute(_OLDEST).fetchone()
        dead = int(counters.pop("queue.dead", 0))
        pending = int(counters.pop("queue.size", 0)) - dead
        return QueueStats(
            pending=pending,
            due=max(pending - not_due, 0),
            leased=leased,
            dead=dead,
            dropped={k.removeprefix("dropped."): int(v) for k, v in counters.items()},
            oldest_enqueued_at=None if oldest is None else float(oldest[0]),
        )

    def cleanup(self, older_than: float) -> int:
        """Delete events recorded before ``older_than`` and their queue entries
        (counted under ``dropped.retention``); return how many events went."""
        with self.store.transaction() as conn:
            entries = conn.execute(_RETENTION_ENTRIES, (older_than,)).rowcount
            if entries > 0:
                conn.execute(_COUNT, ("dropped.retention", entries))
            return max(conn.execute(_RETENTION_EVENTS, (older_than,)).rowcount, 0)

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
    store: LocalStore,
    backoff: Backoff,
    clock: Clock,
) -> SQLiteQueue | None:
    """Build the queue on ``store`` with ``config.lease`` and
    ``config.max_queue_size`` when ``name`` is ``sqlite``."""
    if name != NAME:
        return None
    return SQLiteQueue(
        store, backoff, clock=clock, lease=config.lease, max_queue_size=config.max_queue_size
    )
