"""The application-facing service: ``TelemetryService`` (DESIGN §4).

An app makes one service, records events with :meth:`TelemetryService.track`
and otherwise forgets about it. The service opens the local store lazily on the
first event, records each event (scrubbed, validated, stored and, when remote
submission is on, queued, in one transaction), and starts the
:class:`~telemetry_core.worker.SubmissionWorker` that sends the queue in the
background.

The service is a facade: it decides (consent, when to open, when to send) and
its parts do the work: :mod:`~telemetry_core._tracking` runs a ``track()``
call, :mod:`~telemetry_core.recorder` builds its event and
:mod:`~telemetry_core._event_writer` stores it; :mod:`~telemetry_core._sending`
sends; :mod:`~telemetry_core._store_access` keeps the store open (through
:mod:`~telemetry_core._providers`, which opens the store and plugins);
:mod:`~telemetry_core._queries` answers the read calls;
:mod:`~telemetry_core._consent` says what enabling and disabling change;
:mod:`~telemetry_core._process` handles exit and fork, and
:mod:`~telemetry_core._counters` counts.

Consent is checked at recording time: an event recorded while remote
submission is off stays local and is never queued later, even if remote
submission is enabled afterwards.

Nothing here may hurt the host application: telemetry failures are counted and
logged once per kind on the ``telemetry_core`` logger, never raised (unless
``config.strict``); a store that cannot be opened turns the service into a
no-op; interpreter exit is delayed by at most ``config.exit_timeout``; a forked
child starts clean.

Bounds on the caller's time:

* Cheap checks come first: the number of properties, the lengths of keys,
  values and identifiers and the value types are checked in O(size) before any
  scrubbing or PII pattern runs, so one huge value is rejected at once.
* :meth:`TelemetryService.track` never waits on another process's lock
  (DESIGN §4): it tries the database for at most :data:`APP_BUSY_TIMEOUT_MS`;
  when the file is locked the event goes to the write-behind journal
  (:mod:`telemetry_core._write_behind`), an append-only spill file next to the
  database that a background thread merges once the lock is released (and
  ``close()`` within its exit budget; what is left then is merged by the next
  process). Spilled events survive even a killed process. The journal holds at
  most ``max_queue_size`` events; what it cannot keep is counted
  (``dropped:spill_full``). Other calls wait for a lock between fork-guard
  sections (see :mod:`telemetry_core._forksafe`): app-facing ones
  :data:`~telemetry_core._forksafe.DEFAULT_LOCK_BUDGET`, the worker and
  :meth:`TelemetryService.submit_now` :data:`WORKER_BUSY_TIMEOUT_MS`.
* Failures are counted in memory first and written to the store later (after
  the next successful record, by the worker, or on close), so counting a
  failure never waits a second time.

Read-only calls (:meth:`~TelemetryService.queue_stats`,
:meth:`~TelemetryService.status`, :meth:`~TelemetryService.event_counts`,
:meth:`~TelemetryService.counters`, :meth:`~TelemetryService.get_submission_stats`)
with consent off open an existing file read-only (no cleanup, no migration; a
file that is not a telemetry database is refused) and with ``DO_NOT_TRACK`` do
not open it at all.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from telemetry_core import _consent as consent
from telemetry_core import _process
from telemetry_core._counters import Counters
from telemetry_core._event_writer import EventWriter
from telemetry_core._forksafe import BACKGROUND_LOCK_BUDGET
from telemetry_core._queries import Queries
from telemetry_core._retention import CLEANUP_EVERY, CLEANUP_PAGE, DAY, LAST_CLEANUP_KEY, clean
from telemetry_core._sending import Sending
from telemetry_core._store_access import StoreAccess, close_views
from telemetry_core._tracking import Tracker
from telemetry_core.errors import StorageError
from telemetry_core.models import QueueStats, SubmissionStats, SubmitCall
from telemetry_core.plugin_host import PluginHost
from telemetry_core.recorder import Recorder
from telemetry_core.worker import SubmissionWorker

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock
    from telemetry_core.schema import PropertyValue

__all__ = [
    "APP_BUSY_TIMEOUT_MS",
    "CLEANUP_EVERY",
    "CLEANUP_PAGE",
    "WORKER_BUSY_TIMEOUT_MS",
    "TelemetryService",
]

#: How long the app's connection waits in SQLite for another process's write
#: lock (milliseconds) before ``track()`` spills the event instead.
APP_BUSY_TIMEOUT_MS: Final = 1
#: How long the worker and submit_now() wait for it (milliseconds).
WORKER_BUSY_TIMEOUT_MS: Final = int(BACKGROUND_LOCK_BUDGET * 1000)


class TelemetryService:
    """Record anonymous usage events locally and submit them in the background.

    :param config: the effective configuration (see
        :meth:`TelemetryConfig.from_env <telemetry_core.config.TelemetryConfig.from_env>`).
    :param plugins: extra plugin objects to register (tests, embedding apps).
    :param host: an existing plugin host to use instead of making one.
    :param clock: wall clock in seconds; dates events, retries and the log.
    :param monotonic: monotonic clock in seconds; drives the rate limiter.
    :param rng: source of randomness for retry jitter (a seeded one in tests).
    :param background: start the background worker when events can be sent;
        with False, events are only sent by :meth:`submit_now` (one-shot
        commands such as the CLI's ``enable --remote`` and ``submit``).

    Use it as a context manager: ``__enter__`` opens the store and starts the
    worker when remote submission is on; ``__exit__`` stops the worker,
    waiting at most ``config.exit_timeout`` seconds. Without ``with``, both
    happen lazily (the first :meth:`track`) and at interpreter exit.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        plugins: Sequence[object] = (),
        host: PluginHost | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        rng: random.Random | None = None,
        background: bool = True,
    ) -> None:
        self._config = config
        self._background = background
        self._host = host = _plugin_host(host, plugins, strict=config.strict)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._counters = Counters(
            lambda: None if self._access.opened is None else self._access.opened.store
        )
        self._writer = EventWriter(
            config=lambda: self._config,
            opened=lambda: self._access.opened,
            counters=self._counters,
            monotonic=monotonic,
            on_queued=lambda: self._sending.spilled_events_queued(),  # noqa: PLW0108 (made below)
        )
        self._access = StoreAccess(
            config=lambda: self._config,
            set_config=lambda new: setattr(self, "_config", new),
            lock=lambda: self._lock,
            host=host,
            clock=clock,
            monotonic=monotonic,
            rng=rng if rng is not None else random.Random(),
            busy_timeout_ms=APP_BUSY_TIMEOUT_MS,
            writer=self._writer,
            counters=self._counters,
        )
        self._sending = Sending(
            config=lambda: self._config,
            host=host,
            counters=self._counters,
            writer=self._writer,
            access=self._access,
            stats=self.get_submission_stats,
            lock=lambda: self._lock,
            # No new thread while the interpreter exits (the exit hook runs).
            may_start=lambda: (
                not self._closed
                and self._background
                and self._config.sending
                and not _process.exiting
            ),
            clock=clock,
            monotonic=monotonic,
        )
        self._recorder = Recorder(host, self._counters.count, clock)
        self._tracker = Tracker(
            config=lambda: self._config,
            open_store=self._access.ensure,
            recorder=self._recorder,
            writer=self._writer,
            host=host,
            counters=self._counters,
            start_worker=self._sending.ensure_started,
        )
        self._queries = Queries(
            config=lambda: self._config,
            access=self._access,
            sending=self._sending,
            counters=self._counters,
            host=host,
        )
        self._closed = False
        _process.register(self)

    # -- properties ----------------------------------------------------------

    @property
    def config(self) -> TelemetryConfig:
        """The effective configuration (updated by :meth:`enable` / :meth:`disable`)."""
        return self._config

    @property
    def host(self) -> PluginHost:
        """The plugin host this service uses."""
        return self._host

    @property
    def worker(self) -> SubmissionWorker | None:
        """The submission worker, once made (None before the first need)."""
        return self._sending.worker

    @property
    def exit_flush(self) -> float:
        """Seconds this service may spend sending at interpreter exit."""
        return self._config.exit_flush

    @property
    def exit_timeout(self) -> float:
        """Seconds this service's worker may take to stop at interpreter exit."""
        return self._config.exit_timeout

    @property
    def degraded(self) -> str | None:
        """Why telemetry is a no-op (the store could not be opened), else None."""
        return self._access.broken

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> TelemetryService:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the store and start the worker, as far as consent allows.

        With consent off nothing happens (no file is created).
        """
        self._closed = False
        if not self._config.recording:
            return
        if self._access.ensure() is not None and self._config.sending:
            self._sending.ensure_started()

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker (bounded by ``timeout``, default ``config.exit_timeout``)
        and close the store's connections.

        A running worker first gets up to ``config.exit_flush`` to send what is
        due (not when offline or in backoff; not when ``timeout`` is given), so a
        short-lived process that leaves a ``with`` block sends its events.

        The service may be used again: :meth:`track` still records (and
        queues), but the worker only starts again with :meth:`open`.
        """
        spent = 0.0
        if timeout is None:
            started = time.monotonic()
            self._flush_at_exit(started + self._config.exit_flush)
            spent = time.monotonic() - started
        with self._lock:
            self._closed = True
            # The flush's time comes out of the stop's budget (one exit bound).
            budget = max(self._config.exit_timeout - spent, 0.0) if timeout is None else timeout
            deadline = self._monotonic() + budget
            stopped = self._sending.stop(budget)
            stopped = self._access.stop_cleaner(budget) and stopped
            self._writer.close(deadline)
            if stopped:
                self._counters.flush()
            views = self._access.detach(keep_store=not stopped)
        close_views(views)

    def _flush_at_exit(self, deadline: float) -> None:
        self._sending.flush_at_exit(deadline)

    def _signal_stop(self) -> None:
        self._sending.signal_stop()
        self._access.stop_cleaner(0.0)

    def _finish_at_exit(self, timeout: float) -> None:
        if not self._sending.finish(timeout):
            return  # a worker is still inside a call: leave its connections alone
        if not self._access.stop_cleaner(timeout):
            return
        self.close(timeout=0.0)

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, connections and locks."""
        self._lock = threading.RLock()
        _process.inherited.extend(
            (
                self._sending.forget_after_fork(),
                self._access.forget_after_fork(),
                self._writer.forget_after_fork(),
            )
        )
        self._counters.after_fork()

    # -- recording ---------------------------------------------------------------

    def track(
        self,
        event_type: str,
        properties: Mapping[str, PropertyValue] | None = None,
        *,
        duration_ms: float | None = None,
        success: bool | None = None,
        session_id: str | None = None,
    ) -> str | None:
        """Record one event; return its id, or None when it was not recorded.

        None means consent is off (or ``DO_NOT_TRACK`` is set), in which case
        nothing at all is written, or that the event was rejected or could not
        be stored, which is counted (``rejected:<code>``, ``failed:<error>``)
        and logged once per kind. With ``config.strict`` those failures raise
        (:class:`EventRejected`, :class:`StorageError`...) instead.

        Properties are copied and checked for size and type (subclasses of
        str/int/float become the base type), then scrubbed (e-mail addresses,
        IPs, home paths, secrets, the user and host name are masked) and
        validated. The event carries nothing else about the machine.

        A call never waits on a lock held by another process: when the database
        is locked, the event goes to the write-behind journal and is stored once
        the lock is released (see the module docstring).
        """
        if not self._config.recording:
            return None
        return self._tracker.track(event_type, properties, duration_ms, success, session_id)

    # -- submission ----------------------------------------------------------------

    def submit_now(
        self, progress: Callable[[int, int], None] | None = None, *, force: bool = False
    ) -> SubmissionStats:
        """Send every due event now, in this thread; return the submission stats
        with ``last_call``, what this call did (see :class:`SubmitCall`).

        Tries now, past the client's own backoff (entries waiting for a retry
        become due), but not before the end of a pause the collector asked for
        with ``Retry-After`` unless ``force``. Stops early on a retryable
        failure (the rest is retried on schedule), or when the rate limit has
        no tokens left. ``progress(done, total)`` is called after every batch.
        Does nothing when remote submission is off. A transport that cannot be
        built (unknown name, bad endpoint) raises :class:`PluginError` or
        :class:`ConfigError`: this is a call the user made, so they hear about it.
        """
        if not self._config.sending:
            return attrs.evolve(self.get_submission_stats(), last_call=SubmitCall(stopped="off"))
        opened = self._access.ensure()
        if opened is None:
            return SubmissionStats()
        return self._sending.submit_now(opened, progress, force=force)

    # -- reading ---------------------------------------------------------------------

    def get_submission_stats(self) -> SubmissionStats:
        """Totals, success rate, retries, latency percentiles, last error, queue size.

        With consent off this only reads an existing file (never written); with
        ``DO_NOT_TRACK`` the file is not opened at all.
        """
        return self._queries.submission_stats()

    def queue_stats(self) -> QueueStats:
        """A snapshot of the local queue (zeros when there is no store)."""
        return self._queries.queue_stats()

    def event_counts(self) -> dict[str, int]:
        """Locally recorded events by type."""
        return self._queries.event_counts()

    def counters(self) -> dict[str, int]:
        """Local counters: rejected, scrubbed and failed events by reason (with
        the counts not written to the store yet)."""
        return self._queries.counters()

    def status(self) -> dict[str, Any]:
        """What is configured and in use: app, db path, consent, endpoint (never
        the key), install id, queue, worker and plugin names (see
        :func:`telemetry_core._status.describe` for every key)."""
        return self._queries.status()

    def queue_warning(self, queue: QueueStats | None = None) -> str | None:
        """A sentence when the queue holds more than
        :data:`~telemetry_core._sender_state.QUEUE_WARN_SHARE` of ``max_queue_size``:
        how full, the likely cause and what to do; else None."""
        return self._queries.queue_warning(queue)

    # -- maintenance -----------------------------------------------------------------

    def retry_dead(self) -> int:
        """Make dead-lettered entries due again; return how many."""
        opened = self._access.existing(write=True)
        if opened is None:
            return 0
        revived = opened.storage.revive_dead()
        if revived and self._sending.worker is not None:
            self._sending.worker.wake()
        return revived

    def cleanup(self) -> int:
        """Delete events and queue entries older than ``config.retention_days``."""
        opened = self._access.existing(write=True)
        if opened is None:
            return 0
        now = self._clock()
        removed = clean(opened.storage, now - self._config.retention_days * DAY, None) or 0
        opened.store.set_config(LAST_CLEANUP_KEY, repr(now))
        return removed

    # -- consent -------------------------------------------------------------------

    def enable(self, *, remote: bool = False, endpoint: str | None = None) -> None:
        """Turn recording on (and remote submission, with ``remote``), persistently.

        Writes the stored config keys ``enabled`` (and ``remote-enabled``,
        ``remote-endpoint``), updates the effective configuration, and starts the
        worker when events can now be sent. Raises :class:`ConfigError` when
        ``DO_NOT_TRACK`` is set (nothing is written then) or the endpoint is
        invalid.
        """
        # Validates the endpoint before anything is written.
        new = consent.granted(self._config, remote=remote, endpoint=endpoint)
        self._access.consent_given = True
        with self._lock:
            self._sending.stop(self._config.exit_timeout)
            self._config = new
            self._access.broken = None
            opened = self._access.ensure()
            if opened is None:
                raise StorageError(
                    f"cannot open the local store {new.db_path}: {self._access.broken}"
                )
            consent.store_grant(opened.store, remote=remote, endpoint=endpoint)
            self._closed = False
        if new.sending:
            self._sending.ensure_started()

    def disable(self, *, remote_only: bool = False, purge: bool = False) -> None:
        """Turn remote submission (``remote_only``) or all telemetry off, persistently.

        Stops the worker. ``purge`` also deletes every locally recorded event,
        queue entry, log line and counter. When there is no local database yet,
        nothing is created.
        """
        config = self._config
        with self._lock:
            self._sending.stop(config.exit_timeout)
            self._config = consent.withdrawn(config, remote_only=remote_only)
            if config.do_not_track or not (self._access.opened or config.db_path.exists()):
                return
            opened = self._access.ensure()
            if opened is None:
                return
            if purge:
                self._access.purge(opened)
                return
            consent.store_withdrawal(opened.store, remote_only=remote_only)

    def enable_remote_submission(self, endpoint: str | None = None) -> None:
        """Record locally and send to the collector (DESIGN §4 name)."""
        self.enable(remote=True, endpoint=endpoint)

    def disable_remote_submission(self) -> None:
        """Stop sending; keep recording locally (DESIGN §4 name)."""
        self.disable(remote_only=True)


def _plugin_host(host: PluginHost | None, plugins: Sequence[object], *, strict: bool) -> PluginHost:
    """``host`` with ``plugins`` registered, or a new host holding them."""
    if host is None:
        return PluginHost(strict=strict, plugins=plugins)
    for plugin in plugins:
        host.register(plugin)
    return host
