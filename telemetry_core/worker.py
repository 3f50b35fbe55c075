"""The submission worker: a background thread that drains the queue to the collector.

One :class:`SubmissionWorker` per service. Every ``submission_interval`` (or
at once when woken) it runs one *cycle*: honour a server-requested pause, check
that the collector is reachable again after a network error, take tokens from
the rate limiter, claim a due batch from the storage, send it through the
transport and mark the outcome. Every attempt is written to the submission
log, which is where :class:`~telemetry_core.models.SubmissionStats` come from.

The worker never holds the only copy of an event: entries stay in the durable
queue under a lease until they are acknowledged, so stopping (or killing) the
process at any point loses nothing; at worst a batch is sent twice and the
collector deduplicates it.

Shutdown: once :meth:`SubmissionWorker.stop` has been called, the thread
starts no new network call (nor a new cycle); it only finishes the database
call or request it is in, gives back its leases and ends. :meth:`stop` waits
for it at most its ``timeout``, plus up to :data:`SHUTDOWN_GRACE` when the
thread is inside a short local (SQLite) call or inside the first call of a new
transport, rather than waiting on the network. A daemon thread left inside
native code that runs without the GIL when the process exits crashes it: C
``exit()`` runs OpenSSL's own exit handler (``OPENSSL_cleanup``), which frees
the library's global state under the thread's feet (SIGSEGV, after Python's
faulthandler has already been uninstalled, so nothing is printed). The first
call of a transport is where the https transport builds its TLS context lazily:
it loads the CA bundle (about 50 ms of OpenSSL work without the GIL) and makes
the first handshake. Later calls mostly wait in ``poll()``, which is safe to
abandon. Before a wait of :data:`RELEASE_IDLE_AFTER` seconds or more the worker
lets the transport drop its connections and TLS context (``release_idle()``,
when the transport has one); the call after that is a first call again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from telemetry_core._attempts import attempt_fields, redacted
from telemetry_core._dedup_window import learn as learn_dedup_window
from telemetry_core._forksafe import (
    BACKGROUND_LOCK_BUDGET,
    LOCK_SLICE_MS,
    fork_guard,
    set_lock_budget,
)
from telemetry_core._log import logger
from telemetry_core.delivery import delivery_context
from telemetry_core.errors import TransportError

if TYPE_CHECKING:
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock, QueuedEvent, SubmissionResult
    from telemetry_core.plugin_host import PluginHost
    from telemetry_core.protocols import Backoff, Limiter, Storage, Transport

__all__ = [
    "CycleResult",
    "SubmissionLog",
    "SubmissionWorker",
]

#: Ceiling on one wait of the background loop, so that a clock jump or a huge
#: ``Retry-After`` never parks the thread for longer than this between checks.
MAX_LOOP_WAIT = 3600.0
#: Extra wait in :meth:`SubmissionWorker.stop` for a thread inside a local
#: (non-network) call or the first call of a new transport, which end quickly.
SHUTDOWN_GRACE: Final = 1.0
#: How long the worker's thread may wait in all for another writer's lock (seconds).
WORKER_LOCK_BUDGET: Final = BACKGROUND_LOCK_BUDGET
#: What the thread may be inside (``SubmissionWorker._busy``) when stop() gives
#: the grace: native work that must not be running when the process exits.
_NATIVE_PHASES: Final = frozenset({"local", "setup"})
#: Before a wait at least this long (seconds), the worker lets the transport
#: drop its idle connections (``release_idle()``, when it has one): a keep-alive
#: connection rarely outlives such a pause on the server side, and an idle
#: process should not hold sockets and TLS buffers.
RELEASE_IDLE_AFTER: Final = 30.0


class SubmissionLog(Protocol):
    """Where the worker records attempts and counts (the local store)."""

    def log_submission(
        self,
        *,
        started_at: float,
        latency_ms: float,
        batch_size: int,
        accepted: int,
        rejected: int,
        duplicates: int,
        status: int | None,
        error: str | None,
        retry: bool,
        network_error: bool,
    ) -> None:
        """Append one submission attempt to the log."""
        ...

    def increment_counter(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the named counter."""
        ...

    def get_config(self, key: str) -> str | None:
        """A stored value (where the collector's dedup window is remembered)."""
        ...

    def set_config(self, key: str, value: str) -> None:
        """Store a value."""
        ...


@attrs.frozen(kw_only=True)
class CycleResult:
    """What one cycle did.

    ``handled`` counts events that left the queue (acknowledged or
    dead-lettered); ``more`` says another batch is probably due right now;
    ``wait`` is how long the loop should sleep before trying again; ``reason``
    is a short word for logs and tests: ``sent``, ``empty``, ``paused``,
    ``offline``, ``rate_limited``, ``retry``, ``stopping`` or (a cycle that
    raised, in the background loop) ``error``.
    """

    handled: int
    more: bool
    wait: float
    reason: str


class SubmissionWorker:
    """Sends queued events in batches, in a lazily started daemon thread.

    :param config: the effective configuration (interval, batch size, burst).
    :param host: the plugin host; builds the transport on the first send and
        receives the ``batch_submitted`` / ``batch_failed`` notifications.
    :param storage: the queue to drain.
    :param log: where attempts are logged and counters kept (the local store).
    :param backoff: decides how long to pause sending after a failure without
        ``Retry-After``.
    :param limiter: the submission rate limit (events per minute).
    :param clock: wall clock in seconds (the submission log, reported times).
    :param monotonic: monotonic clock in seconds (latencies and the pause after
        a failure, so a wall-clock step never stretches or skips a pause).

    Delivery policy (DESIGN §7): a transient failure (``error.retryable``) pauses
    sending for the backoff's delay, or for the server's ``Retry-After``, which
    counts as a failure but does not grow the exponent; the entries are
    rescheduled, never dead-lettered. After ``backoff.should_retry(n)`` turns
    false the batch is *parked* (one warning; still retried at the cap). A
    permanent refusal dead-letters the batch with the delivery fingerprint in
    force; the first cycle of a worker revives dead letters that died under
    another fingerprint (a new endpoint, key, CA bundle or library version).
    :param thread_setup: called once in the background thread before its first
        cycle (the service raises that thread's SQLite busy timeout); an error
        is logged at debug level and ignored.
    :param after_cycle: called in the background thread after each cycle unless
        stopping (the service writes its in-memory counters there).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        host: PluginHost,
        storage: Storage,
        log: SubmissionLog,
        backoff: Backoff,
        limiter: Limiter,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        thread_setup: Callable[[], None] | None = None,
        after_cycle: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._thread_setup = thread_setup
        self._after_cycle = after_cycle
        # What the thread is inside: "network" (may take up to the timeout),
        # "setup" (the first call of a new transport: its lazy imports, CA
        # bundle and first handshake), "build" (making the transport object:
        # Python only), "local" (SQLite: short) or None.
        self._busy: str | None = None
        # Whether a call of the current transport has returned (its lazy
        # setup is done).
        self._transport_ready = False
        self._host = host
        self._storage = storage
        self._log = log
        self._backoff = backoff
        self._limiter = limiter
        self._clock = clock
        self._monotonic = monotonic
        self._transport: Transport | None = None
        # One batch at a time, whether sent by the thread or by drain().
        self._send_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Monotonic deadline of the pause after a failure (0: not paused).
        self._pause_deadline = 0.0
        self._server_pause = False
        self._offline = False
        # Consecutive failures, and the backoff exponent (grows only with
        # failures the backoff timed, not with a server's Retry-After).
        self._failures = 0
        self._step = 0
        self._revived = False
        self._info_checked = False
        self._context: str | None = None
        self._warned: set[str] = set()
        # Set while an exit flush waits for the queue to run dry (see flush()).
        self._flushing = threading.Event()
        self._idle = threading.Event()
        #: The cycle that ended the latest drain() (why it stopped).
        self.last_cycle: CycleResult | None = None

    @classmethod
    def for_store(
        cls,
        config: TelemetryConfig,
        *,
        host: PluginHost,
        opened: Opened,
        clock: Clock,
        monotonic: Clock,
        after_cycle: Callable[[], None] | None = None,
    ) -> SubmissionWorker:
        """A worker for a service's open providers, logging to its local store.

        Its thread waits for another writer's lock longer than the app does
        (up to :data:`WORKER_LOCK_BUDGET`), in short slices between fork-guard
        sections (see :mod:`telemetry_core._forksafe`)."""
        store = opened.store

        def longer_lock_waits() -> None:
            conn = store.connection()
            with fork_guard.section():
                conn.execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")
            set_lock_budget(WORKER_LOCK_BUDGET)

        return cls(
            config,
            host=host,
            storage=opened.storage,
            log=store,
            backoff=opened.backoff,
            limiter=opened.limiter,
            clock=clock,
            monotonic=monotonic,
            thread_setup=longer_lock_waits,
            after_cycle=after_cycle,
        )

    # -- state --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def pause_until(self) -> float:
        """Wall-clock time before which the loop will not send (0 when not paused)."""
        left = self._pause_deadline - self._monotonic()
        return self._clock() + left if self._pause_deadline and left > 0 else 0.0

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last delivered batch."""
        return self._failures

    @property
    def context(self) -> str:
        """The delivery fingerprint of this worker's configuration."""
        if self._context is None:
            self._context = delivery_context(self.config)
        return self._context

    @property
    def server_pause_until(self) -> float:
        """Wall-clock end of a pause the collector asked for (``Retry-After``), else 0."""
        return self.pause_until if self._server_pause else 0.0

    def clear_pause(self) -> None:
        """Forget every pause, the server's included (``submit --force``)."""
        self._pause_deadline = 0.0
        self._server_pause = False
        self._offline = False

    @property
    def offline(self) -> bool:
        """True after a network error, until ``transport.ping()`` succeeds."""
        return self._offline

    @property
    def transport(self) -> Transport | None:
        """The transport, once the first send has built it."""
        return self._transport

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    # -- thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread if it is not running (idempotent)."""
        if self.running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-core-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next cycle now instead of at the end of the interval."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """At exit of a short-lived process: let the thread send what is due,
        waiting at most ``timeout``; True when it ran out of due events.

        Does nothing (False) when the thread is not running, is offline or in
        a backoff pause: exiting must not wait on a collector known to be away.
        """
        if timeout <= 0 or not self.running or self._offline:
            return False
        if self.pause_until:
            return False
        self._idle.clear()
        self._flushing.set()
        self._wake.set()
        try:
            return self._idle.wait(timeout)
        finally:
            self._flushing.clear()

    def stop(self, timeout: float, *, grace: float = SHUTDOWN_GRACE) -> bool:
        """Stop the thread, waiting at most ``timeout`` seconds; True if it ended.

        The thread gives back (``release``) every lease it holds on entries it
        has not sent yet. A request already on the wire is not interrupted: if
        the thread is still waiting for it when ``timeout`` expires, its entries
        stay leased and become due again when the lease expires.

        :param grace: extra wait, after ``timeout``, for a thread inside native
            work that ends on its own shortly (a SQLite call, the first call of
            a new transport). ``0`` only signals the thread.
        """
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(timeout, 0.0))
        if thread.is_alive() and grace > 0 and self._busy in _NATIVE_PHASES:
            thread.join(grace)
        return not thread.is_alive()

    def _halting(self) -> bool:
        """True in the worker thread once stop() was called: start nothing new."""
        return self._stopping.is_set() and threading.current_thread() is self._thread

    def close(self) -> None:
        """Close the transport's connections (call after :meth:`stop`)."""
        transport, self._transport = self._transport, None
        self._transport_ready = False
        if transport is not None:
            try:
                transport.close()
            except Exception as exc:
                logger.debug("telemetry-core: closing the transport failed: %r", exc)

    def _run(self) -> None:
        if self._thread_setup is not None:
            try:
                self._thread_setup()
            except Exception as exc:
                logger.debug("telemetry-core: worker thread setup failed: %r", exc)
        while not self._stopping.is_set():
            try:
                self._busy = "local"
                cycle = self.run_once()
                if self._after_cycle is not None and not self._stopping.is_set():
                    self._after_cycle()
            except Exception as exc:
                self._warn_once(
                    f"cycle:{type(exc).__name__}",
                    "telemetry-core: the submission worker failed (%r); retrying in %.0f s",
                    exc,
                    self.config.submission_interval,
                )
                cycle = CycleResult(
                    handled=0, more=False, wait=self.config.submission_interval, reason="error"
                )
            finally:
                self._busy = None
            if cycle.more or (cycle.reason == "sent" and self._flushing.is_set()):
                continue
            self._idle.set()
            wait = min(max(cycle.wait, 0.0), MAX_LOOP_WAIT)
            if wait >= RELEASE_IDLE_AFTER:
                self._release_idle()
            if self._wake.wait(wait):
                self._wake.clear()

    def _release_idle(self) -> None:
        release = getattr(self._transport, "release_idle", None)
        if release is None:
            return
        try:
            release()
        except Exception as exc:
            logger.debug("telemetry-core: releasing idle connections failed: %r", exc)
        # The next call builds a TLS context again (native work without the
        # GIL): it is a setup phase that stop() waits for, as the first one was.
        self._transport_ready = False

    # -- one cycle ------------------------------------------------------------

    def _get_transport(self) -> Transport:
        if self._transport is None:
            # Python imports under the GIL, not C code without it: stop() gives
            # no grace for this (a daemon thread here just ends at finalization).
            busy, self._busy = self._busy, "build"
            try:
                self._transport = self._host.make_transport(self.config)
                self._transport_ready = False
            finally:
                self._busy = busy
        return self._transport

    def _take_tokens(self, wanted: int) -> int:
        """Consume as many tokens as the limiter allows now, up to ``wanted``."""
        if self._limiter.consume(wanted):
            return wanted
        low, high = 0, wanted - 1  # largest k in [low, high] with can_submit(k)
        while low < high:
            mid = (low + high + 1) // 2
            if self._limiter.can_submit(mid):
                low = mid
            else:
                high = mid - 1
        if low and self._limiter.consume(low):
            return low
        return 0

    def run_once(self, *, honour_pause: bool = True) -> CycleResult:
        """Run one cycle: claim at most one batch and send it (with its splits).

        :param honour_pause: respect the pause that follows a failure. A pause
            the server asked for with ``Retry-After`` is always respected.
        """
        interval = self.config.submission_interval
        with self._send_lock:
            if self._halting():
                return CycleResult(handled=0, more=False, wait=0.0, reason="stopping")
            left = self._pause_deadline - self._monotonic()
            if self._pause_deadline and left > 0 and (honour_pause or self._server_pause):
                return CycleResult(handled=0, more=False, wait=left, reason="paused")
            if not self._revived:
                self._revive_changed()
            if self._offline and self._transport is not None:
                if self._halting() or not self._ping():
                    return CycleResult(handled=0, more=False, wait=interval, reason="offline")
                self._offline = False
            size = max(1, min(self.config.submission_batch_size, self.config.burst))
            if not self._limiter.can_submit(1):
                return CycleResult(
                    handled=0, more=False, wait=self._limiter.wait_time(1), reason="rate_limited"
                )
            batch = self._storage.dequeue(size)
            if not batch:
                return CycleResult(handled=0, more=False, wait=interval, reason="empty")
            try:
                granted = self._take_tokens(len(batch))
                if granted < len(batch):
                    self._storage.release([q.event_id for q in batch[granted:]])
                    batch = batch[:granted]
                if not batch:
                    wait = self._limiter.wait_time(1)
                    return CycleResult(handled=0, more=False, wait=wait, reason="rate_limited")
                if not self._halting():
                    self._get_transport()
            except BaseException:
                self._storage.release([q.event_id for q in batch])
                raise
            handled, retry = self._send(batch)
            if retry:
                wait = max(self._pause_deadline - self._monotonic(), 0.0)
                return CycleResult(handled=handled, more=False, wait=wait, reason="retry")
            more = len(batch) == size and not self._stopping.is_set()
            return CycleResult(handled=handled, more=more, wait=interval, reason="sent")

    def _revive_changed(self) -> None:
        """Revive dead letters that died under other delivery settings (once)."""
        self._revived = True
        try:
            revived = self._storage.revive_dead(except_context=self.context)
        except Exception as exc:
            self._warn_once("revive", "telemetry-core: could not revive dead letters: %r", exc)
            return
        if revived:
            logger.info(
                "telemetry-core: the delivery settings changed; %d dead letter(s) will be "
                "sent again",
                revived,
            )

    def _ping(self) -> bool:
        assert self._transport is not None
        busy, self._busy = self._busy, "network" if self._transport_ready else "setup"
        try:
            return bool(self._transport.ping())
        except Exception as exc:
            # The type only: a message could quote the request (and its key).
            logger.debug("telemetry-core: transport ping failed: %s", type(exc).__name__)
            return False
        finally:
            self._transport_ready = True
            self._busy = busy

    def drain(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        total: int = 0,
        max_batches: int | None = None,
    ) -> int:
        """Send every due batch now, in the caller's thread; return events handled.

        Stops when the queue has nothing due, on a retryable failure (the rest
        waits for its retry time), when the rate limit has no tokens left, or
        after ``max_batches`` cycles (default: enough for ``total`` events plus
        some that arrive meanwhile). ``progress(done, total)`` is called after
        every batch.
        """
        size = max(1, min(self.config.submission_batch_size, self.config.burst))
        if max_batches is None:
            max_batches = math.ceil(total / size) + 10
        done = 0
        for _ in range(max_batches):
            cycle = self.run_once(honour_pause=False)
            done += cycle.handled
            self.last_cycle = cycle
            if progress is not None and cycle.handled:
                progress(done, max(total, done))
            if cycle.reason != "sent":
                break
        return done

    # -- sending ----------------------------------------------------------------

    def _send(self, batch: Sequence[QueuedEvent]) -> tuple[int, bool]:
        """Send ``batch``; return (events handled, whether a retryable failure stopped it)."""
        if self._halting():
            self._storage.release([q.event_id for q in batch])
            return 0, False
        events = [q.event for q in batch]
        retry = any(q.retry_count > 0 for q in batch)
        transport = self._get_transport()
        started = self._clock()
        t0 = self._monotonic()
        # The first call of a transport runs its lazy setup (native TLS work
        # without the GIL): stop() waits for it, see the module docstring.
        busy, self._busy = self._busy, "network" if self._transport_ready else "setup"
        try:
            result = transport.submit_batch(events)
        except TransportError as err:
            error = err
        except Exception as exc:
            # A transport plugin bug must not lose events or kill the thread:
            # treat it like a network error, so the batch is retried later.
            error = TransportError(f"transport failed: {exc!r}", retryable=True)
        else:
            self._transport_ready = True
            self._busy = busy
            self._record(started, t0, batch, result=result, retry=retry)
            self._acknowledged(batch, result)
            return len(batch), False
        self._transport_ready = True
        self._busy = busy
        error = redacted(error, self.config.api_key)
        self._record(started, t0, batch, error=error, retry=retry)
        if error.too_large:
            return self._split(batch, error)
        if error.retryable:
            self._failed(batch, error)
            return 0, True
        self._dead(batch, error)
        return len(batch), False

    def _failed(self, batch: Sequence[QueuedEvent], error: TransportError) -> None:
        """A transient failure: reschedule the batch and pause sending."""
        events = [q.event for q in batch]
        self._storage.mark_failed([e.id for e in events], str(error), error.retry_after)
        self._failures += 1
        if error.retry_after is not None:
            delay = min(error.retry_after, self.config.max_retry_after)
            self._server_pause = True
        else:
            delay = self._backoff.next_retry_delay(self._step)
            self._step += 1
            self._server_pause = False
        self._pause_deadline = self._monotonic() + max(delay, 0.0)
        if error.status is None:
            self._offline = True
        if not self._backoff.should_retry(self._failures):
            self._warn_once(
                "parked",
                "telemetry-core: %d consecutive failed attempts (last: %s); pending events "
                "are parked and retried every %.0f s at most until they are delivered or "
                "expire",
                self._failures,
                error,
                delay,
            )
        self._host.batch_failed(events, error)

    def _split(self, batch: Sequence[QueuedEvent], error: TransportError) -> tuple[int, bool]:
        if len(batch) == 1:
            self._dead(batch, error)
            return 1, False
        if self._stopping.is_set():
            self._storage.release([q.event_id for q in batch])
            return 0, False
        middle = len(batch) // 2
        handled, retry = self._send(batch[:middle])
        if retry or self._stopping.is_set():
            self._storage.release([q.event_id for q in batch[middle:]])
            return handled, retry
        more, retry = self._send(batch[middle:])
        return handled + more, retry

    def _acknowledged(self, batch: Sequence[QueuedEvent], result: SubmissionResult) -> None:
        events = [q.event for q in batch]
        self._storage.mark_submitted([e.id for e in events])
        self._failures = 0
        self._step = 0
        self._offline = False
        self._pause_deadline = 0.0
        self._server_pause = False
        self._warned.discard("parked")
        if not self._info_checked:
            self._check_dedup_window()
        if result.rejected:
            # Rejected events are terminal: the collector will never take them.
            self._log.increment_counter("server_rejected", result.rejected)
            for err in result.errors:
                self._log.increment_counter(f"server_rejected:{err.code}", 1)
            self._warn_once(
                "server_rejected",
                "telemetry-core: the collector rejected %d event(s) of a batch (first: %s)",
                result.rejected,
                result.errors[0].code if result.errors else "unknown",
            )
        self._host.batch_submitted(events, result)

    def _check_dedup_window(self) -> None:
        """Once per worker: compare the client's retention with the collector's
        dedup window (see :func:`telemetry_core._dedup_window.learn`)."""
        self._info_checked = True
        transport = self._transport
        if transport is None or self._halting():
            return
        window = learn_dedup_window(self._log, transport, self._clock())
        if window is not None and self.config.retention_days > window:
            self._warn_once(
                "dedup_window",
                "telemetry-core: events are kept %g days (retention_days) but the collector "
                "recognises resent events for %d days only; an event resent later could be "
                "counted twice: set retention_days to %d or less",
                self.config.retention_days,
                window,
                window,
            )

    def _dead(self, batch: Sequence[QueuedEvent], error: TransportError) -> None:
        events = [q.event for q in batch]
        reason = "event too large" if error.too_large else str(error)
        self._storage.mark_dead([e.id for e in events], reason, self.context)
        self._log.increment_counter("dead", len(events))
        status = error.status
        hint = " (check the API key)" if status in (401, 403) else ""
        self._warn_once(
            f"dead:{status}",
            "telemetry-core: the collector refused a batch for good (%s)%s; %d event(s) kept "
            "locally as dead letters, sent again automatically once the endpoint, API key, "
            "CA bundle or library version changes (or with `submit --retry-dead`)",
            reason,
            hint,
            len(events),
        )
        self._host.batch_failed(events, error)

    def _record(
        self,
        started: float,
        t0: float,
        batch: Sequence[QueuedEvent],
        *,
        retry: bool,
        result: SubmissionResult | None = None,
        error: TransportError | None = None,
    ) -> None:
        latency_ms = max((self._monotonic() - t0) * 1000.0, 0.0)
        fields = attempt_fields(
            started, latency_ms, len(batch), retry=retry, result=result, error=error
        )
        try:
            self._log.log_submission(**fields)
        except Exception as exc:
            self._warn_once("log", "telemetry-core: could not write the submission log: %r", exc)
