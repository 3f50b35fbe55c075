"""The application-facing service: ``TelemetryService`` (DESIGN §4).

An app makes one service, records events with :meth:`TelemetryService.track`
and otherwise forgets about it. The service opens the local store lazily on the
first event, records each event (scrubbed, validated, stored and, when remote
submission is on, queued, in one transaction), and starts the
:class:`~telemetry_core.worker.SubmissionWorker` that sends the queue in the
background.

Consent is checked at recording time: an event recorded while remote
submission is off stays local and is never queued later, even if remote
submission is enabled afterwards.

Nothing here may hurt the host application: telemetry failures are counted and
logged once per kind on the ``telemetry_core`` logger, never raised (unless
``config.strict``); a store that cannot be opened turns the service into a
no-op; interpreter exit is delayed by at most ``config.exit_timeout``; a forked
child starts clean.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec

from telemetry_core import privacy
from telemetry_core.errors import (
    ConfigError,
    EventRejected,
    PluginError,
    StorageError,
    TelemetryError,
)
from telemetry_core.models import QueueStats, SubmissionStats
from telemetry_core.plugin_host import PluginHost
from telemetry_core.privacy import find_pii
from telemetry_core.schema import (
    EVENT_TYPE_PATTERN,
    MAX_EVENT_BYTES,
    Event,
    PropertyValue,
    new_event_id,
    validate_event,
)
from telemetry_core.worker import SubmissionWorker, fork_guard, guarded

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.local_store import LocalStore
    from telemetry_core.models import Clock
    from telemetry_core.protocols import Backoff, Limiter, Storage

__all__ = ["CLEANUP_EVERY", "TelemetryService"]

logger = logging.getLogger("telemetry_core")

#: Retention cleanup runs when the store opens, at most this often (seconds).
CLEANUP_EVERY: Final = 24 * 3600.0
#: Stored-config key holding the time of the last retention cleanup.
_LAST_CLEANUP_KEY: Final = "last-cleanup"
_DAY: Final = 24 * 3600.0

_encoder = msgspec.json.Encoder()

# Every live service, for the process-wide at-exit and after-fork hooks.
_services: weakref.WeakSet[TelemetryService] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
# Objects a forked child inherited from its parent (connections, transports).
# They are kept alive, never closed or finalized, in the child: closing an
# inherited SQLite connection can disturb the parent's locks and WAL.
_inherited: list[object] = []


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=fork_guard.before_fork,
                after_in_parent=fork_guard.after_fork_in_parent,
                after_in_child=_after_fork_in_child,
            )
        _hooks_installed = True


def _at_exit() -> None:
    """Stop every worker, never delaying exit by more than the largest exit_timeout."""
    services = list(_services)
    if not services:
        return
    budget = max(s.config.exit_timeout for s in services)
    deadline = time.monotonic() + budget
    for service in services:
        service._signal_stop()
    for service in services:
        service._join_worker(max(deadline - time.monotonic(), 0.0))


def _after_fork_in_child() -> None:
    fork_guard.after_fork_in_child()
    for service in list(_services):
        service._reset_after_fork()


def _counter_name(prefix: str, code: str) -> str:
    return f"{prefix}:{code}"


@attrs.frozen(kw_only=True)
class _Opened:
    """The providers of an open service (one per process)."""

    store: LocalStore
    storage: Storage
    backoff: Backoff
    limiter: Limiter
    install_id: str
    #: Only the bundled scrubber runs, whose output never holds what
    #: find_pii finds: the re-check after scrubbing can be skipped.
    scrubbed_clean: bool


class TelemetryService:
    """Record anonymous usage events locally and submit them in the background.

    :param config: the effective configuration (see
        :meth:`TelemetryConfig.from_env <telemetry_core.config.TelemetryConfig.from_env>`).
    :param plugins: extra plugin objects to register (tests, embedding apps).
    :param host: an existing plugin host to use instead of making one.
    :param clock: wall clock in seconds; dates events, retries and the log.
    :param monotonic: monotonic clock in seconds; drives the rate limiter.
    :param rng: source of randomness for retry jitter (a seeded one in tests).

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
    ) -> None:
        self._config = config
        if host is None:
            host = PluginHost(strict=config.strict, plugins=plugins)
        else:
            for plugin in plugins:
                host.pm.register(plugin)
        self._host = host
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.RLock()
        self._opened: _Opened | None = None
        self._broken: str | None = None
        self._worker: SubmissionWorker | None = None
        self._warned: set[str] = set()
        self._closed = False
        _install_process_hooks()
        _services.add(self)

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
        return self._worker

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

        The service may be used again: :meth:`track` still records (and
        queues), but the worker only starts again with :meth:`open`.
        """
        with self._lock:
            self._closed = True
            stopped = self._stop_worker(self._config.exit_timeout if timeout is None else timeout)
            opened, self._opened = self._opened, None
        # A worker still waiting on the network keeps using its connection; it
        # is a daemon thread, so leave the store to it rather than close it
        # under its feet.
        if opened is not None and stopped:
            for closeable in (opened.storage, opened.store):
                try:
                    closeable.close()
                except Exception as exc:
                    logger.debug("telemetry-core: close failed: %r", exc)

    def _stop_worker(self, timeout: float) -> bool:
        worker, self._worker = self._worker, None
        if worker is None:
            return True
        stopped = worker.stop(timeout)
        if stopped:
            worker.close()
        return stopped

    def _signal_stop(self) -> None:
        worker = self._worker
        if worker is not None:
            worker.stop(0.0)

    def _join_worker(self, timeout: float) -> None:
        worker = self._worker
        if worker is not None:
            worker.stop(timeout)

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, connections and locks."""
        self._lock = threading.RLock()
        for obj in (self._worker, self._opened):
            if obj is not None:
                _inherited.append(obj)
        self._worker = None
        self._opened = None

    # -- warnings and counters -------------------------------------------------

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    def _count(self, name: str, n: int = 1) -> None:
        opened = self._opened
        if opened is None:
            return
        try:
            opened.store.increment_counter(name, n)
        except Exception as exc:
            logger.debug("telemetry-core: could not count %s: %r", name, exc)

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
            try:
                with fork_guard.section():
                    self._opened = self._open()
            except (TelemetryError, sqlite3.Error, OSError) as exc:
                if self._config.strict:
                    raise
                self._broken = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "telemetry-core: telemetry is disabled for this run, the local store %s "
                    "could not be opened: %s",
                    self._config.db_path,
                    exc,
                )
                return None
            self._maybe_cleanup(self._opened)
            return self._opened

    def _open(self) -> _Opened:
        from telemetry_core.local_store import LocalStore

        config = self._config
        store = LocalStore(config.db_path, clock=self._clock)
        try:
            backoff = self._host.make_backoff(config, self._rng, self._clock)
            limiter = self._host.make_limiter(config, self._monotonic)
            storage = self._host.make_storage(config, store, backoff, self._clock)
            install_id = store.install_id()
        except BaseException:
            store.close()
            raise
        impls = self._host.pm.hook.telemetry_scrub_event.get_hookimpls()
        return _Opened(
            store=guarded(store),
            storage=guarded(storage),
            backoff=backoff,
            limiter=limiter,
            install_id=install_id,
            scrubbed_clean=[impl.plugin for impl in impls] == [privacy],
        )

    def _maybe_cleanup(self, opened: _Opened) -> None:
        try:
            now = self._clock()
            last = opened.store.get_config(_LAST_CLEANUP_KEY)
            if last is not None and 0 <= now - float(last) < CLEANUP_EVERY:
                return
            opened.storage.cleanup(now - self._config.retention_days * _DAY)
            opened.store.set_config(_LAST_CLEANUP_KEY, repr(now))
        except Exception as exc:
            if self._config.strict:
                raise
            self._warn_once("cleanup", "telemetry-core: retention cleanup failed: %r", exc)

    def _make_worker(self, opened: _Opened) -> SubmissionWorker:
        return SubmissionWorker(
            self._config,
            host=self._host,
            storage=opened.storage,
            log=opened.store,
            backoff=opened.backoff,
            limiter=opened.limiter,
            clock=self._clock,
            monotonic=self._monotonic,
        )

    def _ensure_worker(self) -> SubmissionWorker | None:
        """Start the background worker if remote submission is on."""
        worker = self._worker
        if worker is not None and worker.running:
            return worker
        with self._lock:
            if self._closed or not self._config.sending:
                return None
            opened = self._ensure_open()
            if opened is None:
                return None
            if self._worker is None:
                self._worker = self._make_worker(opened)
            self._worker.start()
            return self._worker

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

        Properties are copied and scrubbed (e-mail addresses, IPs, home paths,
        secrets, the user and host name are masked), then validated. The event
        carries nothing else about the machine.
        """
        config = self._config
        if not config.recording:
            return None
        try:
            return self._track(event_type, properties, duration_ms, success, session_id)
        except EventRejected as exc:
            self._count(_counter_name("rejected", exc.code))
            if config.strict:
                raise
            self._warn_once(
                f"rejected:{exc.code}",
                "telemetry-core: dropped a %r event: %s (further drops of this kind are "
                "only counted)",
                event_type if isinstance(event_type, str) else "?",
                exc,
            )
        except Exception as exc:
            self._count(_counter_name("failed", type(exc).__name__))
            if config.strict:
                if isinstance(exc, TelemetryError):
                    raise
                raise StorageError(f"could not record the event: {exc!r}") from exc
            self._warn_once(
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
        if not isinstance(event_type, str) or not EVENT_TYPE_PATTERN.match(event_type):
            raise EventRejected("invalid_type", "type must match ^[a-z][a-z0-9_.:-]{0,63}$")
        props = _copy_properties(properties)
        duration = _check_duration(duration_ms)
        if success is not None and not isinstance(success, bool):
            raise EventRejected("invalid_field", "success must be True, False or None")
        if session_id is not None:
            if not isinstance(session_id, str):
                raise EventRejected("invalid_field", "session_id must be a string")
            if find_pii(session_id) is not None:
                raise EventRejected("pii", "session_id looks like personal data")
        before = dict(props)
        self._host.scrub_event(event_type, props)
        self._count_scrubbed(before, props)
        if not opened.scrubbed_clean:
            for key, value in props.items():
                if isinstance(value, str) and (kind := find_pii(value)) is not None:
                    raise EventRejected(
                        "pii", f"property {key!r} still holds {kind} after scrubbing"
                    )
        now = self._clock()
        timestamp = int(now * 1000)
        event = Event(
            id=new_event_id(),
            type=event_type,
            timestamp=timestamp,
            install_id=opened.install_id,
            app=self._config.app,
            app_version=self._config.app_version,
            session_id=session_id,
            duration_ms=duration,
            success=success,
            properties=props,
        )
        problem = validate_event(event, now_ms=timestamp)
        if problem is not None:
            raise EventRejected(*problem)
        if len(_encoder.encode(event)) > MAX_EVENT_BYTES:
            raise EventRejected("too_large", f"the encoded event exceeds {MAX_EVENT_BYTES} bytes")
        opened.storage.record(event, enqueue=self._config.sending)
        self._host.event_recorded(event)
        if self._config.sending:
            self._ensure_worker()
        return event.id

    def _count_scrubbed(
        self, before: Mapping[str, PropertyValue], after: Mapping[str, PropertyValue]
    ) -> None:
        for key, value in before.items():
            if after.get(key, None) != value or key not in after:
                kind = find_pii(value) if isinstance(value, str) else None
                self._count(_counter_name("scrubbed", kind or "identifier"))

    # -- submission ----------------------------------------------------------------

    def submit_now(self, progress: Callable[[int, int], None] | None = None) -> SubmissionStats:
        """Send every due event now, in this thread, and return the submission stats.

        Stops early on a retryable failure (the rest is retried on schedule), or
        when the rate limit has no tokens left. ``progress(done, total)`` is
        called after every batch. Does nothing when remote submission is off.
        A transport that cannot be built (unknown name, bad endpoint) raises
        :class:`PluginError` or :class:`ConfigError`: this is a call the user
        made, so they hear about it.
        """
        if not self._config.sending:
            return self.get_submission_stats()
        opened = self._ensure_open()
        if opened is None:
            return SubmissionStats()
        with self._lock:
            if self._worker is None:
                self._worker = self._make_worker(opened)
            worker = self._worker
        total = opened.storage.stats().due
        try:
            worker.drain(progress, total=total)
        except (PluginError, ConfigError):
            raise
        except Exception as exc:
            if self._config.strict:
                raise
            self._warn_once("submit", "telemetry-core: submission failed: %r", exc)
        return self.get_submission_stats()

    def get_submission_stats(self) -> SubmissionStats:
        """Totals, success rate, retries, latency percentiles, last error, queue size."""
        if not self._config.recording and not self._config.db_path.exists():
            return SubmissionStats()
        opened = self._ensure_open()
        if opened is None:
            return SubmissionStats()
        return opened.store.submission_stats(opened.storage.stats())

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
        """Local counters: rejected, scrubbed and failed events by reason."""
        opened = self._open_existing()
        if opened is None:
            return {}
        return dict(opened.store.counters())

    def retry_dead(self) -> int:
        """Make dead-lettered entries due again; return how many."""
        opened = self._open_existing()
        if opened is None:
            return 0
        revived = opened.storage.revive_dead()
        if revived and self._worker is not None:
            self._worker.wake()
        return revived

    def cleanup(self) -> int:
        """Delete events and queue entries older than ``config.retention_days``."""
        opened = self._open_existing()
        if opened is None:
            return 0
        now = self._clock()
        removed = opened.storage.cleanup(now - self._config.retention_days * _DAY)
        opened.store.set_config(_LAST_CLEANUP_KEY, repr(now))
        return removed

    def _open_existing(self) -> _Opened | None:
        """Open the store for reading, but never create it when consent is off."""
        if self._opened is not None:
            return self._opened
        if self._config.do_not_track:
            return None
        if not self._config.recording and not self._config.db_path.exists():
            return None
        return self._ensure_open()

    def status(self) -> dict[str, Any]:
        """What is configured and in use: app, db path, consent, endpoint (never
        the key), install id, queue, worker and plugin names."""
        config = self._config
        opened = self._open_existing()
        queue = opened.storage.stats() if opened is not None else QueueStats(pending=0)
        worker = self._worker
        return {
            "app": config.app,
            "app_version": config.app_version,
            "db_path": str(config.db_path),
            "db_exists": config.db_path.exists(),
            "enabled": config.recording,
            "remote_enabled": config.sending,
            "endpoint": config.endpoint,
            "api_key_set": config.api_key is not None,
            "do_not_track": config.do_not_track,
            "install_id": opened.install_id if opened is not None else None,
            "degraded": self._broken,
            "queue": attrs.asdict(queue),
            "worker": {
                "running": worker is not None and worker.running,
                "paused_until": worker.pause_until if worker and worker.pause_until else None,
                "offline": worker.offline if worker is not None else False,
            },
            "plugins": {
                "transport": config.transport,
                "storage": config.storage,
                "backoff": config.backoff,
                "limiter": config.limiter,
                "loaded": [record.name for record in self._host.plugins()],
            },
        }

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
        with self._lock:
            self._stop_worker(config.exit_timeout)
            self._config = new
            self._broken = None
            opened = self._ensure_open()
            if opened is None:
                raise StorageError(f"cannot open the local store {new.db_path}")
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
                # queue, the log, the counters and the stored consent.
                self._opened = None
                for closeable in (opened.storage, opened.store):
                    closeable.close()
                opened.store.purge()
                self._warned.clear()
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


def _copy_properties(properties: Mapping[str, PropertyValue] | None) -> dict[str, PropertyValue]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise EventRejected("invalid_property", "properties must be a mapping")
    props: dict[str, PropertyValue] = {}
    for key, value in properties.items():
        if not isinstance(key, str):
            raise EventRejected("invalid_property", "property keys must be strings")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise EventRejected(
                "invalid_property",
                f"property {key[:64]!r} has type {type(value).__name__}; "
                "use str, int, float, bool or None",
            )
        props[key] = value
    return props


def _check_duration(duration_ms: float | None) -> float | None:
    if duration_ms is None:
        return None
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float)):
        raise EventRejected("invalid_duration", "duration_ms must be a number")
    if not math.isfinite(duration_ms) or duration_ms < 0:
        raise EventRejected("invalid_duration", "duration_ms must be a finite number >= 0")
    return float(duration_ms)
