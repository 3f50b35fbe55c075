"""The sending side of a service: its worker, and what one ``submit_now()`` does.

:class:`Sending` owns the service's :class:`~telemetry_core.worker.SubmissionWorker`
(made on first need, wired to the local store), a worker that could not be
stopped in time (waited for again at exit), and the result of the last
``submit_now()`` call. It starts the worker when the service lets it
(:meth:`Sending.ensure_started`), wakes it for spilled events, and does the
housekeeping after each worker cycle and each submission
(:meth:`Sending.after_cycle`). The service decides *whether* to send (consent,
the background setting, closed or not: ``may_start``); this part does the
sending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from telemetry_core import _sender_state as sender_state
from telemetry_core._forksafe import lock_budget
from telemetry_core.errors import ConfigError, PluginError
from telemetry_core.models import SubmissionStats, SubmitCall
from telemetry_core.protocols import RetryNow
from telemetry_core.worker import WORKER_LOCK_BUDGET, SubmissionWorker

if TYPE_CHECKING:
    from telemetry_core._counters import Counters
    from telemetry_core._event_writer import EventWriter
    from telemetry_core._providers import Opened
    from telemetry_core._store_access import StoreAccess
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock
    from telemetry_core.plugin_host import PluginHost

__all__ = ["Sending"]


class Sending:
    """The worker of one service and its one-shot submissions.

    :param config: returns the effective configuration.
    :param host: the plugin host (transport, batch hooks).
    :param counters: the service's counters and warnings.
    :param writer: stores spilled events before a submission sends.
    :param access: the service's store (opened when a worker is needed).
    :param stats: returns the submission totals (before and after a call).
    :param lock: returns the service's lock (a worker is made under it).
    :param may_start: whether the service lets a background worker run now
        (the service decides: not closed, background on, sending allowed).
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        host: PluginHost,
        counters: Counters,
        writer: EventWriter,
        access: StoreAccess,
        stats: Callable[[], SubmissionStats],
        lock: Callable[[], threading.RLock],
        may_start: Callable[[], bool],
        clock: Clock,
        monotonic: Clock,
    ) -> None:
        self._config = config
        self._host = host
        self._counters = counters
        self._writer = writer
        self._access = access
        self._stats = stats
        self._lock = lock
        self._may_start = may_start
        self._clock = clock
        self._monotonic = monotonic
        self.worker: SubmissionWorker | None = None
        # A worker stop() could not end in time (still inside a call): the
        # at-exit hook waits for it again before the process exits.
        self.stray: SubmissionWorker | None = None
        self.last_call: SubmitCall | None = None
        # The running worker has not been woken for journaled events yet.
        self._first_events = False

    def get_worker(self, opened: Opened) -> SubmissionWorker:
        """The worker, made on first need (continuing a persisted rate limit)."""
        if self.worker is None:
            sender_state.restore_limiter(opened, self._clock())
            self.worker = SubmissionWorker.for_store(
                self._config(),
                host=self._host,
                opened=opened,
                clock=self._clock,
                monotonic=self._monotonic,
                after_cycle=self.after_cycle,
            )
        return self.worker

    def ensure_started(self) -> None:
        """Start the background worker unless it runs, when the service lets it."""
        worker = self.worker
        if worker is not None and worker.running:
            return
        with self._lock():
            if not self._may_start():
                return
            opened = self._access.ensure()
            if opened is not None:
                self.get_worker(opened).start()
                self._first_events = True

    def spilled_events_queued(self) -> None:
        """Journaled events were queued (called by the merge, in any thread).

        A worker that has not yet found anything to send since it started is
        woken once, so the first events go out as they did when ``track()``
        stored them directly; after that the worker sends on its interval (a
        wake per merge would send every 50 ms). No worker running: start one
        when the service lets it (``may_start``), unless the service is busy
        (closing, disabling: the merge never waits for the service's lock);
        the next ``track()`` or open starts it."""
        worker = self.worker
        if worker is not None and worker.running:
            if self._first_events:
                self._first_events = False
                worker.wake()
            return
        lock = self._lock()
        if not lock.acquire(blocking=False):
            return
        try:
            self.ensure_started()
        finally:
            lock.release()

    def after_cycle(self) -> None:
        """In the worker thread after each cycle (and after a submission): write
        the counts kept in memory, take in events that other processes on this
        database spilled and left (a forked worker that exited, a killed
        process), and save the sender's state."""
        self._counters.flush()
        self._writer.take_in_left_behind(now=False)
        opened = self._access.opened
        if opened is None:
            return
        config = self._config()
        try:
            sender_state.save(opened, self.worker, self._clock())
            warning = sender_state.queue_warning(
                config, opened.storage.stats(), lambda: self._stats().last_error
            )
        except Exception as exc:
            self._counters.warn_once(
                "state", "telemetry-core: could not save the sender's state: %r", exc
            )
            return
        if warning is not None:
            self._counters.warn_once("queue_large", "telemetry-core: %s", warning)

    def stop(self, timeout: float) -> bool:
        """Stop and forget the worker within ``timeout``; True if it ended."""
        worker, self.worker = self.worker, None
        if worker is None:
            return True
        stopped = worker.stop(timeout)
        if stopped:
            worker.close()
        else:
            self.stray = worker
        return stopped

    def signal_stop(self) -> None:
        """Tell every worker to start nothing new (at exit, before waiting)."""
        for worker in (self.worker, self.stray):
            if worker is not None:
                worker.stop(0.0, grace=0.0)

    def finish(self, timeout: float) -> bool:
        """At exit: wait for the workers; False while one is still inside a call
        (its connections must then be left alone). The grace of
        ``SubmissionWorker.stop`` applies even when the budget is spent: a
        thread inside native code must leave it before ``exit()``."""
        stray = self.stray
        if stray is not None:
            if not stray.stop(timeout):
                return False
            self.stray = None
        worker = self.worker
        return worker is None or worker.stop(timeout)

    def flush_at_exit(self, deadline: float) -> None:
        """Give the worker of a short-lived process until ``deadline`` (at most
        ``config.exit_flush``) to send what is due; never when offline or in backoff."""
        config = self._config()
        if not config.sending or config.exit_flush <= 0:
            return
        if deadline - time.monotonic() <= 0:
            return
        # What track() just put in the journal is sent too (storing it starts
        # the worker if the journal's merge had not yet).
        self._writer.settle()
        worker = self.worker
        budget = min(config.exit_flush, deadline - time.monotonic())
        if worker is not None and budget > 0:
            worker.flush(budget)

    def submit_now(
        self, opened: Opened, progress: Callable[[int, int], None] | None, *, force: bool
    ) -> SubmissionStats:
        """Send every due event now, in this thread (see ``TelemetryService.submit_now``)."""
        with self._lock():
            worker = self.get_worker(opened)
        before = self._stats()
        pause = max(worker.server_pause_until, sender_state.stored_server_pause(opened))
        if force:
            worker.clear_pause()
        elif pause > self._clock():
            self.last_call = SubmitCall(stopped="server_pause", retry_at=pause)
            return attrs.evolve(before, last_call=self.last_call)
        if isinstance(opened.storage, RetryNow):
            opened.storage.retry_now()
        worker.last_cycle = None
        self._drain(opened, worker, progress)
        self.after_cycle()
        after = self._stats()
        self.last_call = sender_state.call_result(
            before, after, worker, self._clock(), self._config()
        )
        return attrs.evolve(after, last_call=self.last_call)

    def _drain(
        self,
        opened: Opened,
        worker: SubmissionWorker,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        # Sending is the caller's explicit wish: wait for a lock like the worker.
        with lock_budget(WORKER_LOCK_BUDGET):
            self._writer.settle_until(self._monotonic() + WORKER_LOCK_BUDGET)
            total = opened.storage.stats().due
            try:
                worker.drain(progress, total=total)
            except (PluginError, ConfigError):
                raise
            except Exception as exc:
                if self._config().strict:
                    raise
                self._counters.warn_once("submit", "telemetry-core: submission failed: %r", exc)
        self._counters.flush()

    def forget_after_fork(self) -> object | None:
        """In a forked child: drop the parent's worker (returned, to be kept alive)."""
        worker, self.worker, self.stray = self.worker, None, None
        return worker
