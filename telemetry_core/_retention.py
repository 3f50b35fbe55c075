"""Retention cleanup of the local store: delete what is older than ``retention_days``.

:func:`clean` deletes in steps of :data:`CLEANUP_PAGE` events when the storage
implements the optional :class:`~telemetry_core.protocols.PagedCleanup` (the
bundled SQLite queue does); :class:`Cleaner` runs
it in a one-shot daemon thread when the service opens its store.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from telemetry_core._forksafe import (
    BACKGROUND_LOCK_BUDGET,
    LOCK_SLICE_MS,
    fork_guard,
    set_lock_budget,
)
from telemetry_core._worker_thread import SHUTDOWN_GRACE
from telemetry_core.protocols import PagedCleanup

if TYPE_CHECKING:
    from telemetry_core.local_store import LocalStore
    from telemetry_core.protocols import Storage

__all__ = [
    "CLEANUP_EVERY",
    "CLEANUP_PAGE",
    "DAY",
    "LAST_CLEANUP_KEY",
    "Cleaner",
    "clean",
    "schedule_cleanup",
]

#: Retention cleanup runs when the store opens, at most this often (seconds).
CLEANUP_EVERY: Final = 24 * 3600.0
#: Events the retention cleanup looks at per step (one short write transaction
#: per step that found something to delete).
CLEANUP_PAGE: Final = 5000
#: Most steps one cleanup takes (5000 x 20,000 = 100M stored events).
_CLEANUP_MAX_PAGES: Final = 20_000
#: Stored-config key holding the time of the last retention cleanup.
LAST_CLEANUP_KEY: Final = "last-cleanup"
#: One day in seconds (``retention_days`` to a cutoff).
DAY: Final = 24 * 3600.0


def clean(storage: Storage, older_than: float, stop: threading.Event | None) -> int | None:
    """Delete what was recorded before ``older_than``, in steps of
    :data:`CLEANUP_PAGE` events when the storage offers ``cleanup_page``;
    return how many events went, or None when ``stop`` was set first."""
    if not isinstance(storage, PagedCleanup):  # a storage without steps: one call
        return int(storage.cleanup(older_than))
    page = storage.cleanup_page
    removed = 0
    after = ""
    for _ in range(_CLEANUP_MAX_PAGES):
        if stop is not None and stop.is_set():
            return None
        following, n = page(older_than, after, CLEANUP_PAGE)
        removed += n
        if following is None:
            break
        after = following
    return removed


class Cleaner:
    """The retention cleanup of an open store, in a one-shot daemon thread.

    It runs off the app's threads because it scans every stored event (there
    is no index on the recording time, which keeps each record at two written
    pages). Each step holds the write lock only to delete what it found.
    :meth:`stop` interrupts the SQLite statement in progress, so the thread
    ends at once; an unfinished cleanup is not marked done and runs again at
    the next open.

    :param store: the local store (its connection for this thread, and the
        stored time of the last cleanup).
    :param storage: the queue whose old events are deleted.
    :param now: the time of this cleanup, stored when it completes.
    :param cutoff: events recorded before this time are deleted.
    :param busy_timeout_ms: how long one SQLite call waits for another writer's lock.
    :param lock_budget: how long a step waits for it in all, retrying between
        fork-guard sections (see :mod:`telemetry_core._forksafe`).
    :param warn: ``warn(kind, message, *args)`` reports a failure (once per kind).
    """

    def __init__(
        self,
        *,
        store: LocalStore,
        storage: Storage,
        now: float,
        cutoff: float,
        busy_timeout_ms: int,
        lock_budget: float = 5.0,
        warn: Callable[..., None],
    ) -> None:
        self._store = store
        self._storage = storage
        self._now = now
        self._cutoff = cutoff
        self._busy_timeout_ms = busy_timeout_ms
        self._lock_budget = lock_budget
        self._warn = warn
        self._stop = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(
            target=self._run, name="telemetry-core-cleanup", daemon=True
        )

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the cleanup to end; True if it did."""
        self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Interrupt the cleanup and wait at most ``timeout`` seconds (plus a
        short grace for the interrupted statement); True if the thread ended."""
        self._stop.set()
        thread = self._thread
        if thread is threading.current_thread():
            return True
        # Interrupted again and again: an interrupt that comes between two
        # statements is lost, the next statement would run in full.
        deadline = time.monotonic() + max(timeout, 0.0) + (SHUTDOWN_GRACE if timeout > 0 else 0.0)
        for _ in range(100_000):  # bounded by the deadline long before this
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.interrupt()
            remaining = deadline - time.monotonic()
            if self.join(min(0.01, remaining)) or remaining <= 0:
                break
        return not thread.is_alive()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._store.connection()
            with fork_guard.section():
                # A background step may wait for a lock like the worker.
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            set_lock_budget(self._lock_budget)
            self._conn = conn
            if (
                clean(self._storage, self._cutoff, self._stop) is not None
                and not self._stop.is_set()
            ):
                self._store.set_config(LAST_CLEANUP_KEY, repr(self._now))
        except Exception as exc:
            if not self._stop.is_set():
                self._warn("cleanup", "telemetry-core: retention cleanup failed: %r", exc)
        finally:
            self._conn = None
            if conn is not None:
                # This thread's connection, closed here (not by the garbage
                # collector at some later point, outside a fork-guard section).
                with fork_guard.section(), contextlib.suppress(sqlite3.Error):
                    conn.close()


def schedule_cleanup(
    store: LocalStore,
    storage: Storage,
    *,
    now: float,
    retention_days: float,
    warn: Callable[..., None],
) -> Cleaner | None:
    """Start a :class:`Cleaner` when the last cleanup is :data:`CLEANUP_EVERY` ago
    or more (or never happened, or its time is unreadable); else None."""
    last = store.get_config(LAST_CLEANUP_KEY)
    if last is not None:
        try:
            if 0 <= now - float(last) < CLEANUP_EVERY:
                return None
        except ValueError:
            pass  # an unreadable time: clean up (and store a good one)
    cleaner = Cleaner(
        store=store,
        storage=storage,
        now=now,
        cutoff=now - retention_days * DAY,
        busy_timeout_ms=LOCK_SLICE_MS,
        lock_budget=BACKGROUND_LOCK_BUDGET,
        warn=warn,
    )
    cleaner.start()
    return cleaner
