"""The application-facing service: ``TelemetryService`` (DESIGN §4).

An app makes one service, records events with :meth:`TelemetryService.track`
and otherwise forgets about it. The service opens the local store lazily on the
first event, records each event (scrubbed, validated, stored and, when remote
submission is on, queued, in one transaction), and starts the
:class:`~telemetry_core.worker.SubmissionWorker` that sends the queue in the
background.

The service is a facade: it decides (consent, when to open, when to send) and
its parts do the work: :mod:`~telemetry_core.recorder` builds events,
:mod:`~telemetry_core._event_writer` stores them, :mod:`~telemetry_core._sending`
sends them, :mod:`~telemetry_core._providers` opens the store and plugins,
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
import msgspec

from telemetry_core import _process
from telemetry_core import _sender_state as sender_state
from telemetry_core._counters import Counters
from telemetry_core._event_writer import EventWriter
from telemetry_core._forksafe import BACKGROUND_LOCK_BUDGET
from telemetry_core._log import logger
from telemetry_core._providers import Opened as _Opened
from telemetry_core._providers import ProviderRequest, apply_stored_withdrawal, open_or_report
from telemetry_core._retention import (
    CLEANUP_EVERY,
    CLEANUP_PAGE,
    DAY,
    LAST_CLEANUP_KEY,
    Cleaner,
    clean,
    schedule_cleanup,
)
from telemetry_core._sending import Sending
from telemetry_core._status import describe
from telemetry_core.errors import (
    ConfigError,
    EventRejected,
    StorageError,
    TelemetryError,
)
from telemetry_core.models import QueueStats, SubmissionStats, SubmitCall
from telemetry_core.plugin_host import PluginHost
from telemetry_core.recorder import Recorder, counter_name
from telemetry_core.schema import (
    Event,
    PropertyValue,
)
from telemetry_core.worker import SubmissionWorker

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

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

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


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
        if host is None:
            host = PluginHost(strict=config.strict, plugins=plugins)
        else:
            for plugin in plugins:
                host.register(plugin)
        self._host = host
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.RLock()
        self._opened: _Opened | None = None
        # A read-only view of an existing file, for read calls with consent off.
        self._reader: _Opened | None = None
        self._broken: str | None = None
        self._counters = Counters(lambda: None if self._opened is None else self._opened.store)
        self._cleaner: Cleaner | None = None
        self._writer = EventWriter(
            config=lambda: self._config,
            opened=lambda: self._opened,
            counters=self._counters,
            monotonic=monotonic,
            on_queued=self._spilled_events_queued,
        )
        self._sending = Sending(
            config=lambda: self._config,
            host=host,
            counters=self._counters,
            writer=self._writer,
            stats=self.get_submission_stats,
            after_cycle=self._after_cycle,
            clock=clock,
            monotonic=monotonic,
        )
        self._recorder = Recorder(host, self._counters.count, clock)
        self._closed = False
        # enable() was called: the user's own consent, no stored withdrawal applies.
        self._consent_given = False
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
        return self._broken

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
        if self._ensure_open() is not None and self._config.sending:
            self._ensure_worker()

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
            stopped = self._stop_worker(budget)
            stopped = self._stop_cleaner(budget) and stopped
            self._writer.close(deadline)
            if stopped:
                self._counters.flush()
            opened, self._opened = self._opened, None
            reader, self._reader = self._reader, None
        # A worker still waiting on the network (or a cleanup still inside a
        # statement) keeps using its connection; it is a daemon thread, so
        # leave the store to it rather than close it under its feet.
        for view in (opened if stopped else None, reader):
            if view is None:
                continue
            for closeable in (view.storage, view.store):
                try:
                    closeable.close()
                except Exception as exc:
                    logger.debug("telemetry-core: close failed: %r", exc)

    def _stop_worker(self, timeout: float) -> bool:
        return self._sending.stop(timeout)

    def _stop_cleaner(self, timeout: float) -> bool:
        cleaner = self._cleaner
        if cleaner is None:
            return True
        stopped = cleaner.stop(timeout)
        if stopped:
            self._cleaner = None
        return stopped

    def _signal_stop(self) -> None:
        self._sending.signal_stop()
        cleaner = self._cleaner
        if cleaner is not None:
            cleaner.stop(0.0)

    def _finish_at_exit(self, timeout: float) -> None:
        if not self._sending.finish(timeout):
            return  # a worker is still inside a call: leave its connections alone
        cleaner = self._cleaner
        if cleaner is not None and not cleaner.stop(timeout):
            return
        self.close(timeout=0.0)

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, connections and locks."""
        self._lock = threading.RLock()
        _process.inherited.extend((self._sending.forget_after_fork(), self._opened))
        self._cleaner = None
        self._opened = None
        self._reader = None
        _process.inherited.append(self._writer.forget_after_fork())
        self._counters.after_fork()

    # -- warnings and counters -------------------------------------------------

    def _after_cycle(self) -> None:
        """In the worker thread after each cycle: write the counts kept in memory,
        and take in events that other processes on this database spilled and
        left (a forked worker that exited, a killed process)."""
        self._counters.flush()
        self._writer.take_in_left_behind(now=False)
        self._save_sender_state()

    # -- opening -----------------------------------------------------------------

    def _ensure_open(self) -> _Opened | None:
        """Open the store and providers once; None when telemetry is degraded."""
        opened = self._opened
        if opened is not None:
            return opened
        with self._lock:
            if self._opened is not None:
                return self._opened
            if self._broken is not None:
                return None
            result = open_or_report(self._providers_for(), read_only=False)
            if isinstance(result, str):
                self._broken = result
                return None
            self._opened = result
            if not self._consent_given:
                before, self._config = (
                    self._config,
                    apply_stored_withdrawal(self._config, self._opened),
                )
                if before.enabled and not self._config.enabled:
                    return None  # the user withdrew consent: record nothing
            self._schedule_cleanup(self._opened)
            # Events an earlier process spilled and could not store.
            self._writer.take_in_left_behind(now=True)
            return self._opened

    def _providers_for(self) -> ProviderRequest:
        return ProviderRequest(
            config=self._config,
            host=self._host,
            clock=self._clock,
            monotonic=self._monotonic,
            rng=self._rng,
            busy_timeout_ms=APP_BUSY_TIMEOUT_MS,
        )

    def _schedule_cleanup(self, opened: _Opened) -> None:
        """Start the retention cleanup in the background when one is due."""
        cleaner = self._cleaner
        if cleaner is not None and cleaner.running:
            return
        try:
            self._cleaner = schedule_cleanup(
                opened.store,
                opened.storage,
                now=self._clock(),
                retention_days=self._config.retention_days,
                warn=self._counters.warn_once,
            )
        except Exception as exc:
            if self._config.strict:
                raise
            self._counters.warn_once("cleanup", "telemetry-core: retention cleanup failed: %r", exc)

    def _ensure_worker(self) -> SubmissionWorker | None:
        """Start the background worker if remote submission is on."""
        worker = self._sending.worker
        if worker is not None and worker.running:
            return worker
        with self._lock:
            if self._closed or not self._background or not self._config.sending:
                return None
            opened = self._ensure_open()
            if opened is None:
                return None
            worker = self._sending.get_worker(opened)
            worker.start()
            return worker

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
        config = self._config
        if not config.recording:
            return None
        try:
            return self._track(event_type, properties, duration_ms, success, session_id)
        except EventRejected as exc:
            self._counters.count(counter_name("rejected", exc.code))
            if config.strict:
                raise
            self._counters.warn_once(
                f"rejected:{exc.code}",
                "telemetry-core: dropped a %r event: %s (further drops of this kind are "
                "only counted)",
                event_type if isinstance(event_type, str) else "?",
                exc,
            )
        except Exception as exc:
            # Counted in memory: the store has just failed, counting there now
            # would wait (a lock) or fail a second time.
            self._counters.count(counter_name("failed", type(exc).__name__), defer=True)
            if config.strict:
                if isinstance(exc, TelemetryError):
                    raise
                raise StorageError(f"could not record the event: {exc!r}") from exc
            self._counters.warn_once(
                f"failed:{type(exc).__name__}",
                "telemetry-core: could not record an event: %r (further failures of this "
                "kind are only counted)",
                exc,
            )
        return None

    def _track(
        self,
        event_type: str,
        properties: Mapping[str, PropertyValue] | None,
        duration_ms: float | None,
        success: bool | None,
        session_id: str | None,
    ) -> str | None:
        # Opened first, so that a rejection can be counted in the store.
        opened = self._ensure_open()
        if opened is None:
            return None
        config = self._config
        event = self._recorder.build(
            (opened.install_id, config.app, config.app_version),
            event_type,
            properties,
            duration_ms=duration_ms,
            success=success,
            session_id=session_id,
            remember=opened.scrubbed_clean,
        )
        return self._store(opened, event)

    def _store(self, opened: _Opened, event: Event) -> str | None:
        """Write a checked event (and queue it when sending), then notify."""
        sending = self._config.sending
        if not self._writer.write(opened, event, enqueue=sending):
            return None
        self._host.event_recorded(event)
        if sending and (self._sending.worker is None or not self._sending.worker.running):
            self._ensure_worker()
        return event.id

    def _spilled_events_queued(self) -> None:
        worker = self._sending.worker
        if worker is not None and worker.running:
            worker.wake()
        elif self._config.sending and not self._closed:
            self._ensure_worker()

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
        opened = self._ensure_open()
        if opened is None:
            return SubmissionStats()
        with self._lock:
            self._sending.get_worker(opened)
        return self._sending.submit_now(opened, progress, force=force)

    def get_submission_stats(self) -> SubmissionStats:
        """Totals, success rate, retries, latency percentiles, last error, queue size.

        With consent off this only reads an existing file (never written); with
        ``DO_NOT_TRACK`` the file is not opened at all.
        """
        opened = self._ensure_open() if self._config.recording else self._open_existing()
        if opened is None:
            return SubmissionStats(last_call=self._sending.last_call)
        stats = opened.store.submission_stats(opened.storage.stats())
        return attrs.evolve(stats, last_call=self._sending.last_call)

    def queue_stats(self) -> QueueStats:
        """A snapshot of the local queue (zeros when there is no store)."""
        opened = self._open_existing()
        if opened is None:
            return QueueStats(pending=0)
        return opened.storage.stats()

    def event_counts(self) -> dict[str, int]:
        """Locally recorded events by type."""
        opened = self._open_existing()
        if opened is None:
            return {}
        return dict(opened.store.event_counts())

    def counters(self) -> dict[str, int]:
        """Local counters: rejected, scrubbed and failed events by reason (with
        the counts not written to the store yet)."""
        opened = self._open_existing()
        counts = dict(opened.store.counters()) if opened is not None else {}
        for name, n in self._counters.pending().items():
            counts[name] = counts.get(name, 0) + n
        return counts

    def retry_dead(self) -> int:
        """Make dead-lettered entries due again; return how many."""
        opened = self._open_existing(write=True)
        if opened is None:
            return 0
        revived = opened.storage.revive_dead()
        if revived and self._sending.worker is not None:
            self._sending.worker.wake()
        return revived

    def cleanup(self) -> int:
        """Delete events and queue entries older than ``config.retention_days``."""
        opened = self._open_existing(write=True)
        if opened is None:
            return 0
        now = self._clock()
        removed = clean(opened.storage, now - self._config.retention_days * DAY, None) or 0
        opened.store.set_config(LAST_CLEANUP_KEY, repr(now))
        return removed

    def _open_existing(self, *, write: bool = False) -> _Opened | None:
        """The open store; with consent off an existing file opened read-only
        (or, with ``write``, read-write), never created; None under DO_NOT_TRACK.

        Events this process spilled are merged first when the lock allows (one
        try), so a read sees what ``track()`` returned an id for."""
        if self._opened is not None:
            self._writer.settle_once()
            return self._opened
        config = self._config
        if config.do_not_track:
            return None
        if config.recording:
            return self._ensure_open()
        if not config.db_path.exists():
            return None
        if write:
            return self._ensure_open()
        reader = self._reader
        if reader is not None:
            return reader
        with self._lock:
            if self._reader is None:
                result = open_or_report(self._providers_for(), read_only=True)
                if isinstance(result, str):
                    self._broken = result
                    return None
                self._reader = result
            return self._reader

    def status(self) -> dict[str, Any]:
        """What is configured and in use: app, db path, consent, endpoint (never
        the key), install id, queue, worker and plugin names (see
        :func:`telemetry_core._status.describe` for every key)."""
        return describe(
            self._config,
            self._open_existing(),
            self._sending.worker,
            degraded=self._broken,
            loaded=[record.name for record in self._host.plugins()],
        )

    # -- state kept between processes, queue warning ------------------------------

    def _save_sender_state(self) -> None:
        """After a worker cycle or a drain: write the limiter state and a
        server-requested pause, and look at the queue's size."""
        opened = self._opened
        if opened is None:
            return
        try:
            sender_state.save(opened, self._sending.worker, self._clock())
            warning = self.queue_warning(opened.storage.stats())
        except Exception as exc:
            self._counters.warn_once(
                "state", "telemetry-core: could not save the sender's state: %r", exc
            )
            return
        if warning is not None:
            self._counters.warn_once("queue_large", "telemetry-core: %s", warning)

    def queue_warning(self, queue: QueueStats | None = None) -> str | None:
        """A sentence when the queue holds more than
        :data:`~telemetry_core._sender_state.QUEUE_WARN_SHARE` of ``max_queue_size``:
        how full, the likely cause and what to do; else None."""
        if queue is None:
            queue = self.queue_stats()
        return sender_state.queue_warning(
            self._config, queue, lambda: self.get_submission_stats().last_error
        )

    def _flush_at_exit(self, deadline: float) -> None:
        self._sending.flush_at_exit(deadline)

    # -- consent -------------------------------------------------------------------

    def enable(self, *, remote: bool = False, endpoint: str | None = None) -> None:
        """Turn recording on (and remote submission, with ``remote``), persistently.

        Writes the stored config keys ``enabled`` (and ``remote-enabled``,
        ``remote-endpoint``), updates the effective configuration, and starts the
        worker when events can now be sent. Raises :class:`ConfigError` when
        ``DO_NOT_TRACK`` is set (nothing is written then) or the endpoint is
        invalid.
        """
        config = self._config
        if config.do_not_track:
            raise ConfigError(
                "enabled", "DO_NOT_TRACK is set in the environment; unset it to enable telemetry"
            )
        changes: dict[str, Any] = {"enabled": True}
        if remote:
            changes["remote_enabled"] = True
        if endpoint is not None:
            changes["endpoint"] = endpoint
        new = config.evolve(**changes)  # validates the endpoint before anything is written
        self._consent_given = True
        with self._lock:
            self._stop_worker(config.exit_timeout)
            self._config = new
            self._broken = None
            opened = self._ensure_open()
            if opened is None:
                raise StorageError(f"cannot open the local store {new.db_path}: {self._broken}")
            opened.store.set_config("enabled", "true")
            if remote:
                opened.store.set_config("remote-enabled", "true")
            if endpoint is not None:
                opened.store.set_config("remote-endpoint", endpoint)
            self._closed = False
        if new.sending:
            self._ensure_worker()

    def disable(self, *, remote_only: bool = False, purge: bool = False) -> None:
        """Turn remote submission (``remote_only``) or all telemetry off, persistently.

        Stops the worker. ``purge`` also deletes every locally recorded event,
        queue entry, log line and counter. When there is no local database yet,
        nothing is created.
        """
        config = self._config
        changes: dict[str, Any] = {"remote_enabled": False}
        if not remote_only:
            changes["enabled"] = False
        with self._lock:
            self._stop_worker(config.exit_timeout)
            self._config = config.evolve(**changes)
            if config.do_not_track or not (self._opened or config.db_path.exists()):
                return
            opened = self._ensure_open()
            if opened is None:
                return
            if purge:
                # Deletes the database files: with them go the events, the
                # queue, the log, the counters and the stored consent. A
                # cleanup still running is interrupted first: its connection
                # is closed with the others.
                self._stop_cleaner(BACKGROUND_LOCK_BUDGET)
                self._writer.discard(BACKGROUND_LOCK_BUDGET)
                self._opened = None
                for closeable in (opened.storage, opened.store):
                    closeable.close()
                opened.store.purge()
                self._counters.warned.clear()
                return
            opened.store.set_config("remote-enabled", "false")
            if not remote_only:
                opened.store.set_config("enabled", "false")

    def enable_remote_submission(self, endpoint: str | None = None) -> None:
        """Record locally and send to the collector (DESIGN §4 name)."""
        self.enable(remote=True, endpoint=endpoint)

    def disable_remote_submission(self) -> None:
        """Stop sending; keep recording locally (DESIGN §4 name)."""
        self.disable(remote_only=True)
