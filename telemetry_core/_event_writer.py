"""Writing checked events: to the write-behind journal first
(:mod:`telemetry_core._write_behind`), or straight to the storage.

With ``write_behind`` (the default) an event is appended to the journal and a
background thread stores it; a full or unwritable journal falls back to the
storage. Otherwise (and in strict mode) the storage is tried first, with the app
connection's short busy timeout, outside the fork guard's lock retries, and the
event is journaled only when another process holds the lock: ``track()`` never
waits on another process's lock (DESIGN §4). Journaled events are also stored
before reads (waiting for a lock within the caller's lock budget), before
``submit_now()`` and the exit flush send, at
``close()`` (within the exit budget), and those other processes left behind are
adopted by the worker after each cycle and by the next opener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec

from telemetry_core._forksafe import (
    LOCK_RETRY_PAUSE,
    LOCK_SLICE_MS,
    fork_guard,
    is_locked,
    thread_lock_budget,
)
from telemetry_core._log import logger
from telemetry_core._write_behind import SpillJournal, WriteBehind, spill_files
from telemetry_core.errors import StorageError
from telemetry_core.protocols import RecordMany
from telemetry_core.recorder import counter_name
from telemetry_core.schema import Event

if TYPE_CHECKING:
    from telemetry_core._counters import Counters
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

__all__ = ["DROPPED_SPILL_FULL", "SPILLED", "EventWriter"]

#: Counter of events the write-behind journal could not keep (it was full).
DROPPED_SPILL_FULL: Final = "dropped:spill_full"
#: Counter of events that went through the write-behind journal.
SPILLED: Final = "spilled"
#: Events stored per transaction when a journal file is merged.
MERGE_CHUNK: Final = 500
#: With journal first, the journal holds at least this many events (it is the
#: normal path, so a burst must fit while the merger catches up).
JOURNAL_MIN_ENTRIES: Final = 100_000

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


class EventWriter:
    """Stores the events of one service (see the module docstring).

    :param config: returns the effective configuration (db path, queue bound).
    :param opened: returns the open providers, None while closed.
    :param counters: where spills and drops are counted.
    :param monotonic: monotonic clock in seconds.
    :param on_queued: called after journaled events that were to be queued
        have been stored (the service starts its worker unless it runs).
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        opened: Callable[[], Opened | None],
        counters: Counters,
        monotonic: Clock,
        on_queued: Callable[[], None],
    ) -> None:
        self._config = config
        self._opened = opened
        self._counters = counters
        self._monotonic = monotonic
        self._on_queued = on_queued
        self._behind: WriteBehind | None = None
        self._storage_failed = False
        self._queued_stored = False  # a merge stored events to queue: tell on_queued

    @property
    def journal_first(self) -> bool:
        """Whether ``track()`` writes to the journal first (the merger then
        stores the event and ``on_queued`` starts the worker)."""
        config = self._config()
        return config.write_behind and not config.strict and not self._storage_failed

    def _merge_failed(self, exc: BaseException) -> None:
        """The storage refused journaled events (not a lock): count it, warn once,
        and write directly from now on, so that ``track()`` reports the failure.
        The journaled events stay on disk for a later run."""
        if self._storage_failed or self._opened() is None:
            return  # a closed store is not a failure: the journal waits for the next open
        self._storage_failed = True
        name = counter_name("failed", type(exc).__name__)
        self._counters.count(name, defer=True)
        self._counters.warn_once(
            name,
            "telemetry-core: could not store journaled events: %r; they stay in %s.spill-* "
            "for a later run (further failures of this kind are only counted)",
            exc,
            self._config().db_path,
        )

    def write(self, opened: Opened, event: Event, *, enqueue: bool) -> bool:
        """Store ``event`` (queued when ``enqueue``), or spill it when the file is
        locked; False only when the journal is full (the event is dropped, counted).

        With ``write_behind`` (the default, off in strict mode so that a storage
        failure raises) the event goes to the journal first and the merger stores
        it; a full or unwritable journal falls back to the database."""
        if self.journal_first and self.behind().append(_encoder.encode(event), enqueue=enqueue):
            return True
        behind = self._behind
        if behind is None or behind.try_database():
            try:
                with fork_guard.section():
                    opened.raw_storage.record(event, enqueue=enqueue)
            except Exception as exc:
                if not is_locked(exc):
                    raise
            else:
                if self._counters.waiting:
                    self._counters.flush()
                return True
        return self._spill(event, enqueue)

    def _spill(self, event: Event, enqueue: bool) -> bool:
        if self.behind().spill(_encoder.encode(event), enqueue=enqueue):
            self._counters.count(SPILLED, defer=True)
            return True
        config = self._config()
        self._counters.count(DROPPED_SPILL_FULL, defer=True)
        self._counters.warn_once(
            DROPPED_SPILL_FULL,
            "telemetry-core: the local database %s stays locked (by another process, or "
            "busy storing a burst) and %d events wait in its journal; further events are "
            "dropped and counted (%s)",
            config.db_path,
            self.behind().journal.max_entries,
            DROPPED_SPILL_FULL,
        )
        return False

    def behind(self) -> WriteBehind:
        """The journal and its merger, made on first use."""
        if self._behind is None:
            config = self._config()
            cap = config.max_queue_size
            if self.journal_first:
                cap = max(cap, JOURNAL_MIN_ENTRIES)
            self._behind = WriteBehind(
                SpillJournal(config.db_path, max_entries=cap, monotonic=self._monotonic),
                self._store_spilled,
                is_locked=is_locked,
                thread_setup=self._merger_setup,
                monotonic=self._monotonic,
                on_error=self._merge_failed,
                after_merge=self._after_merge,
            )
        return self._behind

    def _merger_setup(self) -> None:
        opened = self._opened()
        if opened is not None:
            with fork_guard.section():
                opened.store.connection().execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")

    def _store_spilled(self, entries: list[tuple[bytes, bool]]) -> None:
        """Store spilled events in one transaction (raises when locked)."""
        opened = self._opened()
        if opened is None:
            raise StorageError("the local store is closed")
        events = []
        for payload, enqueue in entries:
            try:
                events.append((_event_decoder.decode(payload), enqueue))
            except msgspec.DecodeError:
                self._counters.count("failed:spill_decode", defer=True)
        storage = opened.raw_storage
        # In chunks, so that a fork or another writer never waits for a whole
        # burst; a chunk stored twice (the file merged again after a failure)
        # changes nothing.
        for start in range(0, len(events), MERGE_CHUNK):
            chunk = events[start : start + MERGE_CHUNK]
            with fork_guard.section(), opened.store.transaction():
                if isinstance(storage, RecordMany):
                    storage.record_many(chunk)
                else:
                    for event, enqueue in chunk:
                        storage.record(event, enqueue=enqueue)
        if any(enqueue for _, enqueue in events):
            self._queued_stored = True

    def _after_merge(self) -> None:
        if self._queued_stored:
            self._queued_stored = False
            self._on_queued()

    # -- when spilled events are stored -----------------------------------------

    def take_in_left_behind(self, *, now: bool) -> None:
        """Store spill files other processes left: one try at once (``now``, so
        reads see them) and the rest in the background."""
        if not spill_files(self._config().db_path):
            return
        behind = self.behind()
        if now:
            if not behind.merge_once():
                behind.start()
        else:
            behind.adopt_orphans()

    def settle(self) -> None:
        """Before a read or the exit flush: store what this process journaled,
        retrying a lock (the worker's or another process's) within the thread's
        lock budget (0.2 s for app calls); what a longer lock keeps out is
        counted as ``spilled`` by the read."""
        behind = self._behind
        if behind is None or not behind.journal.pending or self._storage_failed:
            return
        # Retried only while locked: events other threads append meanwhile
        # are the merger's, not this read's.
        behind.merge_until(
            self._monotonic() + thread_lock_budget(), first_wait=LOCK_RETRY_PAUSE, only_locked=True
        )

    def settle_until(self, deadline: float) -> None:
        """Before sending: store what this process spilled, retrying a lock until
        the monotonic ``deadline``."""
        if self._behind is not None:
            self._behind.merge_until(deadline)

    def close(self, deadline: float) -> None:
        """Stop the merger and store what waits, retrying until ``deadline``;
        what is left stays on disk, unlocked, for the next process."""
        behind = self._behind
        if behind is None or self._opened() is None:
            return
        behind.stop(max(deadline - self._monotonic(), 0.0))
        try:
            if not behind.merge_until(deadline):
                pending = behind.journal.pending
                behind.release_files()
                logger.info(
                    "telemetry-core: %s is still locked; %d spilled event(s) stay in a spill "
                    "file next to it and are stored by the next run",
                    self._config().db_path,
                    pending,
                )
        except Exception as exc:
            logger.debug("telemetry-core: merging spilled events failed: %r", exc)

    def discard(self, timeout: float) -> None:
        """Stop and forget the journal (the database is being purged)."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.stop(timeout)
            behind.release_files()

    def forget_after_fork(self) -> object | None:
        """In a forked child: drop the parent's journal (returned, to be kept
        alive); the child spills into a file of its own."""
        behind, self._behind = self._behind, None
        return behind
