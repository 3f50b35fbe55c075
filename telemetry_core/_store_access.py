"""The service's access to its database file: open once, read without writing, close.

:class:`StoreAccess` keeps what a service has open and decides nothing about
consent beyond applying a stored withdrawal:

* :meth:`~StoreAccess.ensure` opens the store and the providers for recording,
  once (creating and migrating the file); a consent the user withdrew in the
  stored config (``telemetry disable``) is applied unless the app's user gave
  it in this process (``enable()``); a retention cleanup is scheduled when due
  and events earlier processes spilled are taken in;
* :meth:`~StoreAccess.existing` is what read calls use: with consent off an
  existing file is opened read-only (no cleanup, no migration; a file that is
  not a telemetry database is refused), never created, and under
  ``DO_NOT_TRACK`` nothing is opened;
* a store that cannot be opened for recording is reported once and its reason
  kept (:attr:`~StoreAccess.broken`): telemetry is then a no-op for the run; a
  read-only open that failed is tried again by the next read call (the file
  may have been locked by a migration in another process);
* :meth:`~StoreAccess.detach` and :func:`close_views` close what is open (or
  leave it to a worker still inside a call), :meth:`~StoreAccess.purge`
  deletes the files, and
  :meth:`~StoreAccess.forget_after_fork` drops the parent's connections in a
  forked child.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from telemetry_core._consent import apply_stored_withdrawal
from telemetry_core._forksafe import BACKGROUND_LOCK_BUDGET
from telemetry_core._log import logger
from telemetry_core._providers import Opened, ProviderRequest, open_or_report
from telemetry_core._retention import Cleaner, schedule_cleanup

if TYPE_CHECKING:
    from telemetry_core._counters import Counters
    from telemetry_core._event_writer import EventWriter
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock
    from telemetry_core.plugin_host import PluginHost

__all__ = ["StoreAccess", "close_views"]


class StoreAccess:
    """What one service has open (see the module docstring).

    :param config: returns the service's effective configuration.
    :param set_config: replaces it (a stored withdrawal applied on opening).
    :param lock: returns the service's lock (opening happens under it).
    :param busy_timeout_ms: how long the app's connection waits for a lock.
    :param writer: takes in spilled events on opening, settles them before reads.
    :param counters: where a failed cleanup is warned about.
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        set_config: Callable[[TelemetryConfig], None],
        lock: Callable[[], threading.RLock],
        host: PluginHost,
        clock: Clock,
        monotonic: Clock,
        rng: random.Random,
        busy_timeout_ms: int,
        writer: EventWriter,
        counters: Counters,
    ) -> None:
        self._config = config
        self._set_config = set_config
        self._lock = lock
        self._host = host
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = writer
        self._counters = counters
        #: The store and providers opened for recording, None until then.
        self.opened: Opened | None = None
        # A read-only view of an existing file, for read calls with consent off.
        self._reader: Opened | None = None
        #: Why the store could not be opened (telemetry is a no-op), else None.
        self.broken: str | None = None
        #: The retention cleanup running in the background, if one was started.
        self.cleaner: Cleaner | None = None
        #: enable() was called: the user's own consent, no stored withdrawal applies.
        self.consent_given = False

    def ensure(self) -> Opened | None:
        """Open the store and providers once; None when telemetry is degraded
        or the stored config withdraws consent."""
        opened = self.opened
        if opened is not None:
            return opened
        with self._lock():
            if self.opened is not None:
                return self.opened
            if self.broken is not None:
                return None
            result = open_or_report(self._request(), read_only=False)
            if isinstance(result, str):
                self.broken = result
                return None
            self.opened = result
            if not self.consent_given:
                before = self._config()
                after = apply_stored_withdrawal(before, result)
                self._set_config(after)
                if before.enabled and not after.enabled:
                    return None  # the user withdrew consent: record nothing
            self._schedule_cleanup(result)
            # Events an earlier process spilled and could not store.
            self._writer.take_in_left_behind(now=True)
            return self.opened

    def existing(self, *, write: bool = False) -> Opened | None:
        """The open store; with consent off an existing file opened read-only
        (or, with ``write``, read-write), never created; None under DO_NOT_TRACK.

        Events this process journaled are stored first (a lock is waited for
        within the thread's lock budget), so a read sees what ``track()``
        returned an id for."""
        if self.opened is not None:
            self._writer.settle()
            return self.opened
        config = self._config()
        if config.do_not_track:
            return None
        if config.recording:
            return self.ensure()
        if not config.db_path.exists():
            return None
        if write:
            return self.ensure()
        reader = self._reader
        if reader is not None:
            return reader
        with self._lock():
            if self._reader is None:
                result = open_or_report(self._request(), read_only=True)
                if isinstance(result, str):
                    self.broken = result
                    return None
                self._reader = result
            return self._reader

    def _request(self) -> ProviderRequest:
        return ProviderRequest(
            config=self._config(),
            host=self._host,
            clock=self._clock,
            monotonic=self._monotonic,
            rng=self._rng,
            busy_timeout_ms=self._busy_timeout_ms,
        )

    def _schedule_cleanup(self, opened: Opened) -> None:
        """Start the retention cleanup in the background when one is due."""
        cleaner = self.cleaner
        if cleaner is not None and cleaner.running:
            return
        config = self._config()
        try:
            self.cleaner = schedule_cleanup(
                opened.store,
                opened.storage,
                now=self._clock(),
                retention_days=config.retention_days,
                warn=self._counters.warn_once,
            )
        except Exception as exc:
            if config.strict:
                raise
            self._counters.warn_once("cleanup", "telemetry-core: retention cleanup failed: %r", exc)

    def stop_cleaner(self, timeout: float) -> bool:
        """Stop a running cleanup within ``timeout`` (0: only signal it); True if it ended."""
        cleaner = self.cleaner
        if cleaner is None:
            return True
        stopped = cleaner.stop(timeout)
        if stopped:
            self.cleaner = None
        return stopped

    def detach(self, *, keep_store: bool) -> list[Opened]:
        """Forget what is open (under the service's lock); return what to close
        with :func:`close_views`: the read-only view, and the store opened for
        recording unless ``keep_store`` (a worker still inside a call keeps
        using its connection: it is a daemon thread, so the store is left to it
        rather than closed under its feet)."""
        opened, self.opened = self.opened, None
        reader, self._reader = self._reader, None
        return [view for view in (None if keep_store else opened, reader) if view is not None]

    def purge(self, opened: Opened) -> None:
        """Close ``opened`` and delete the database files: with them go the
        events, the queue, the log, the counters and the stored consent. A
        cleanup still running is interrupted first (its connection is closed
        with the others), and spilled events are discarded."""
        self.stop_cleaner(BACKGROUND_LOCK_BUDGET)
        self._writer.discard(BACKGROUND_LOCK_BUDGET)
        self.opened = None
        for closeable in (opened.storage, opened.store):
            closeable.close()
        opened.store.purge()
        self._counters.warned.clear()

    def forget_after_fork(self) -> Opened | None:
        """In a forked child: drop the parent's store, view and cleanup thread
        (the store is returned, to be kept alive, never closed)."""
        opened, self.opened, self._reader, self.cleaner = self.opened, None, None, None
        return opened


def close_views(views: list[Opened]) -> None:
    """Close the storage and store of each view; a failure is only logged."""
    for view in views:
        for closeable in (view.storage, view.store):
            try:
                closeable.close()
            except Exception as exc:
                logger.debug("telemetry-core: close failed: %r", exc)
