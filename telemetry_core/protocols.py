"""The four provider interfaces a plugin can implement, and the handle a
storage plugin gets to the local SQLite file.

Providers are created by the ``telemetry_make_*`` hooks and used by the worker
and the service. They are structural (``typing.Protocol``): a plugin need not
import or subclass anything to satisfy them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from telemetry_core.models import QueuedEvent, QueueStats, SubmissionResult
from telemetry_core.schema import Event, ServerInfo

if TYPE_CHECKING:
    import sqlite3
    from contextlib import AbstractContextManager
    from pathlib import Path

__all__ = [
    "Backoff",
    "EventCounts",
    "Limiter",
    "PagedCleanup",
    "PersistentLimiter",
    "RecordMany",
    "RetryNow",
    "SQLiteDatabase",
    "Storage",
    "Transport",
]


@runtime_checkable
class Transport(Protocol):
    """Delivers batches to a collector.

    ``submit_batch`` returns a :class:`SubmissionResult` for a 2xx answer and
    raises :class:`~telemetry_core.errors.TransportError` otherwise, with
    ``retryable``, ``retry_after`` and ``too_large`` set from the answer.
    """

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        """Send ``events`` as one request."""
        ...

    def ping(self) -> bool:
        """Return True when the collector answers ``GET /ping``; never raise."""
        ...

    def server_info(self) -> ServerInfo:
        """Return the collector's ``GET /v1/info`` document."""
        ...

    def close(self) -> None:
        """Release connections; the transport may be used again afterwards."""
        ...


@runtime_checkable
class Storage(Protocol):
    """The durable local event store and submission queue.

    Timestamps are wall-clock seconds from the clock the storage was made with.
    ``dequeue`` claims entries with a lease so that two senders never hold the
    same event; unacknowledged claims become due again when the lease expires.
    """

    def record(self, event: Event, *, enqueue: bool) -> None:
        """Store ``event`` locally and, when ``enqueue``, queue it, in one transaction."""
        ...

    def enqueue(self, event_ids: Sequence[str]) -> int:
        """Queue already-stored events; return how many were newly queued."""
        ...

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        """Claim up to ``batch_size`` due entries, oldest first."""
        ...

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        """Remove delivered entries from the queue."""
        ...

    def mark_failed(
        self, event_ids: Sequence[str], error: str, retry_after: float | None = None
    ) -> None:
        """Count a failed attempt and schedule the next one, keep ``error``.

        A failure is never final (DESIGN §7): entries stay pending until they are
        delivered, refused for good (:meth:`mark_dead`) or expire. A ``retry_after``
        from the server sets the wait without growing the backoff exponent."""
        ...

    def mark_dead(self, event_ids: Sequence[str], error: str, context: str | None = None) -> None:
        """Dead-letter entries at once (a permanent refusal such as 400 or 401): kept
        locally, counted, not resent until :meth:`revive_dead`. ``context`` is the
        delivery fingerprint they died under."""
        ...

    def release(self, event_ids: Sequence[str]) -> None:
        """Give claimed entries back, due now, without counting an attempt."""
        ...

    def stats(self) -> QueueStats:
        """Return a cheap snapshot of the queue."""
        ...

    def cleanup(self, older_than: float) -> int:
        """Delete events and entries created before ``older_than``; return how many."""
        ...

    def revive_dead(self, except_context: str | None = None) -> int:
        """Make dead entries due again with a fresh retry count; return how many.

        With ``except_context``, only those that died under another delivery
        fingerprint (the automatic revival when settings change)."""
        ...

    def close(self) -> None:
        """Close connections held by this thread or process."""
        ...


@runtime_checkable
class PagedCleanup(Protocol):
    """Optional for a :class:`Storage`: retention cleanup in bounded steps.

    A storage that offers it is cleaned page by page, each step a short write
    transaction, so a large store never holds the write lock for long; one
    without it gets a single :meth:`Storage.cleanup` call.
    """

    def cleanup_page(self, older_than: float, after: str, page: int) -> tuple[str | None, int]:
        """Look at the next ``page`` events after the id ``after`` (``""`` to
        start), delete those recorded before ``older_than``; return the id to
        continue after (None when done) and how many events went."""
        ...


@runtime_checkable
class RecordMany(Protocol):
    """Optional for a :class:`Storage`: many events recorded in one go (the
    write-behind merger hands each journal file over at once). A storage
    without it gets one ``record`` call per event, inside one transaction of
    the local database."""

    def record_many(self, events: Sequence[tuple[Event, bool]]) -> None:
        """Store each event (and queue it when its flag is True) in one
        transaction; ids already stored are skipped, as by ``record``."""
        ...


@runtime_checkable
class EventCounts(Protocol):
    """Optional for a :class:`Storage`: the locally recorded events by type
    (``telemetry events``, ``TelemetryService.event_counts``). A storage without
    it shows no events there."""

    def event_counts(self) -> dict[str, int]:
        """Every recorded event type and how many events of it are kept."""
        ...


class SQLiteDatabase(Protocol):
    """The client's local SQLite file as a storage plugin sees it (the ``store``
    of ``telemetry_make_storage``): the core keeps its own tables there
    (configuration, counters, submission log) and a plugin may keep its tables
    next to them. A storage that keeps its data elsewhere may ignore it.

    Connections are per thread and in autocommit mode; SQLite errors raised by
    :meth:`transaction` and :meth:`snapshot` surface as
    :class:`~telemetry_core.errors.StorageError`.
    """

    @property
    def path(self) -> Path:
        """The database file."""
        ...

    @property
    def read_only(self) -> bool:
        """True for a view of an existing file (``mode=ro``): nothing may be written."""
        ...

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (reopened after a fork or :meth:`close`)."""
        ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on success,
        rolled back on an exception; nested use joins the outer one."""
        ...

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """One read transaction: several queries see the same state."""
        ...

    def migrate_part(
        self,
        part: str,
        steps: Sequence[Sequence[str]],
        adopt: Callable[[sqlite3.Connection], int] | None = None,
    ) -> int:
        """Bring the tables of ``part`` (a plugin's name) to version ``len(steps)``.

        Step ``n`` (1-based) holds the SQL statements that bring the part from
        version ``n - 1`` to ``n``; each step runs in one transaction that also
        records the new version in the file, so several processes may open a
        file at once. Never edit a released step, append a new one. A file
        without a recorded version for ``part`` starts at ``adopt(conn)`` (which
        may read the tables an earlier release made), else at 0. On a writable
        store a version newer than ``len(steps)`` raises
        :class:`~telemetry_core.errors.StorageError`.

        Returns the part's version: ``len(steps)``, or, on a read-only store
        (which is never changed and never raises for the version), the version
        found; the caller decides whether it can read that version.
        """
        ...

    def close(self) -> None:
        """Close every connection this process opened on the file."""
        ...


@runtime_checkable
class Backoff(Protocol):
    """Decides when a failed batch is tried again (the seed's RetryManager)."""

    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``retry_count + 1``; a server ``retry_after`` wins."""
        ...

    def should_retry(self, retry_count: int) -> bool:
        """False once ``retry_count`` consecutive failures have reached the maximum:
        the batch is then reported as parked (it is still retried, DESIGN §7)."""
        ...

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        """Wall-clock seconds at which the next attempt is due."""
        ...


@runtime_checkable
class Limiter(Protocol):
    """Limits how many events are submitted per unit of time."""

    def can_submit(self, count: int) -> bool:
        """Whether ``count`` tokens are available now (consumes nothing)."""
        ...

    def consume(self, count: int) -> bool:
        """Take ``count`` tokens if available; return whether they were taken."""
        ...

    def wait_time(self, count: int = 1) -> float:
        """Seconds until ``count`` tokens are available (``inf`` if never)."""
        ...


@runtime_checkable
class RetryNow(Protocol):
    """Optional for a storage: make entries waiting for a retry due at once.

    A user-run ``telemetry submit`` (or ``submit_now()``) tries now, past the
    client's own backoff (DESIGN §5); a storage without this method keeps its
    schedule.
    """

    def retry_now(self) -> int:
        """Make every live, unleased entry waiting for a retry due now; return how many."""
        ...


@runtime_checkable
class PersistentLimiter(Protocol):
    """Optional for a limiter: its state can be saved and restored, so that a
    CLI app running one process per command is limited across runs."""

    def state(self) -> float:
        """The tokens available now."""
        ...

    def restore(self, tokens: float, idle: float) -> None:
        """Continue from ``tokens`` saved ``idle`` seconds ago (refilled for that time)."""
        ...
