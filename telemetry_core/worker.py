"""The submission worker: a background thread that drains the queue to the collector.

One :class:`SubmissionWorker` per service. Every ``submission_interval`` (or
at once when woken) it runs one *cycle*: honour a server-requested pause, check
that the collector is reachable again after a network error, take tokens from
the rate limiter, claim a due batch from the storage, send it through the
transport and mark the outcome. Every attempt is written to the submission
log, which is where :class:`~telemetry_core.models.SubmissionStats` come from.

The worker is the cycle and the public face; its parts do the rest: the thread
that runs cycles and waits is :class:`~telemetry_core._worker_thread.WorkerThread`,
the pause, backoff and offline rules live in
:class:`~telemetry_core._retry_state.RetryState`, and sending a batch (the
transport, splits, what each answer does) is
:class:`~telemetry_core._batch_sender.BatchSender`.

The worker never holds the only copy of an event: entries stay in the durable
queue under a lease until they are acknowledged, so stopping (or killing) the
process at any point loses nothing; at worst a batch is sent twice and the
collector deduplicates it.

Shutdown: once :meth:`SubmissionWorker.stop` has been called, the thread
starts no new network call (nor a new cycle); it only finishes the database
call or request it is in, gives back its leases and ends. :meth:`stop` waits
for it at most its ``timeout``, plus up to
:data:`~telemetry_core._worker_thread.SHUTDOWN_GRACE` when the thread is inside
a short local (SQLite) call or inside the first call of a new transport,
rather than waiting on the network. A daemon thread left inside native code
that runs without the GIL when the process exits crashes it: C ``exit()`` runs
OpenSSL's own exit handler (``OPENSSL_cleanup``), which frees the library's
global state under the thread's feet (SIGSEGV, after Python's faulthandler has
already been uninstalled, so nothing is printed). The first call of a
transport is where the https transport builds its TLS context lazily: it loads
the CA bundle (about 50 ms of OpenSSL work without the GIL) and makes the first
handshake. Later calls mostly wait in ``poll()``, which is safe to abandon.
Before a wait of :data:`~telemetry_core._worker_thread.RELEASE_IDLE_AFTER`
seconds or more the worker lets the transport drop its connections and TLS
context (``release_idle()``, when the transport has one); the call after that
is a first call again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from telemetry_core._batch_sender import BatchSender
from telemetry_core._forksafe import (
    BACKGROUND_LOCK_BUDGET,
    LOCK_SLICE_MS,
    fork_guard,
    set_lock_budget,
)
from telemetry_core._log import logger
from telemetry_core._retry_state import RetryState
from telemetry_core._worker_thread import SHUTDOWN_GRACE, WorkerThread
from telemetry_core.delivery import delivery_context

if TYPE_CHECKING:
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock, QueuedEvent
    from telemetry_core.plugin_host import PluginHost
    from telemetry_core.protocols import Backoff, Limiter, Storage, Transport

__all__ = [
    "SHUTDOWN_GRACE",
    "WORKER_LOCK_BUDGET",
    "CycleResult",
    "SubmissionLog",
    "SubmissionWorker",
]

#: How long the worker's thread may wait in all for another writer's lock (seconds).
WORKER_LOCK_BUDGET: Final = BACKGROUND_LOCK_BUDGET


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
    ``offline``, ``rate_limited``, ``retry`` or ``stopping``.
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
        self._storage = storage
        self._limiter = limiter
        self._clock = clock
        self._monotonic = monotonic
        self._warned: set[str] = set()
        self._retry = RetryState(backoff, monotonic)
        self._runner = WorkerThread(
            cycle=self.run_once,
            after_cycle=after_cycle,
            setup=thread_setup,
            before_long_wait=lambda: self._sender.release_idle(),  # noqa: PLW0108 (made below)
            interval=lambda: self.config.submission_interval,
            warn_once=self._warn_once,
        )
        self._sender = BatchSender(
            config=lambda: self.config,
            context=lambda: self.context,
            host=host,
            storage=storage,
            log=log,
            retry=self._retry,
            thread=self._runner,
            clock=clock,
            monotonic=monotonic,
            warn_once=self._warn_once,
        )
        # One batch at a time, whether sent by the thread or by drain().
        self._send_lock = threading.RLock()
        # The next batch, claimed by drain() while the previous one was in
        # flight; the next cycle (of either thread) sends it first.
        self._prefetched: list[QueuedEvent] = []
        self._revived = False
        self._context: str | None = None
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
        return self._runner.running

    @property
    def pause_until(self) -> float:
        """Wall-clock time before which the loop will not send (0 when not paused)."""
        return self._retry.pause_until(self._clock())

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last delivered batch."""
        return self._retry.failures

    @property
    def context(self) -> str:
        """The delivery fingerprint of this worker's configuration."""
        if self._context is None:
            self._context = delivery_context(self.config)
        return self._context

    @property
    def server_pause_until(self) -> float:
        """Wall-clock end of a pause the collector asked for (``Retry-After``), else 0."""
        return self._retry.server_pause_until(self._clock())

    def clear_pause(self) -> None:
        """Forget every pause, the server's included (``submit --force``)."""
        self._retry.clear_pause()

    @property
    def offline(self) -> bool:
        """True after a network error, until ``transport.ping()`` succeeds."""
        return self._retry.offline

    @property
    def transport(self) -> Transport | None:
        """The transport, once the first send has built it."""
        return self._sender.transport

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    # -- thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread if it is not running (idempotent)."""
        self._runner.start()

    def wake(self) -> None:
        """Run the next cycle now instead of at the end of the interval."""
        self._runner.wake()

    def flush(self, timeout: float) -> bool:
        """At exit of a short-lived process: let the thread send what is due,
        waiting at most ``timeout``; True when it ran out of due events.

        Does nothing (False) when the thread is not running, is offline or in
        a backoff pause: exiting must not wait on a collector known to be away.
        """
        if timeout <= 0 or not self.running or self._retry.offline:
            return False
        if self.pause_until:
            return False
        return self._runner.flush(timeout)

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
        return self._runner.stop(timeout, grace)

    def close(self) -> None:
        """Close the transport's connections (call after :meth:`stop`)."""
        self._sender.close()

    # -- one cycle ------------------------------------------------------------

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

    def run_once(self, *, honour_pause: bool = True, overlap: bool = False) -> CycleResult:
        """Run one cycle: claim at most one batch and send it (with its splits).

        :param honour_pause: respect the pause that follows a failure. A pause
            the server asked for with ``Retry-After`` is always respected.
        :param overlap: while the request is in flight, claim the next batch
            and leave this one's bookkeeping to the next request (``drain()``;
            see :mod:`telemetry_core._batch_sender`). The caller then calls
            :meth:`finish_overlap` when it is done.
        """
        interval = self.config.submission_interval
        with self._send_lock:
            if self._runner.halting():
                return CycleResult(handled=0, more=False, wait=0.0, reason="stopping")
            left = self._retry.holds(honour_backoff=honour_pause)
            if left:
                return CycleResult(handled=0, more=False, wait=left, reason="paused")
            if not self._revived:
                self._revive_changed()
            if self._retry.offline and self._sender.transport is not None:
                if self._runner.halting() or not self._sender.ping():
                    return CycleResult(handled=0, more=False, wait=interval, reason="offline")
                self._retry.offline = False
            size = max(1, min(self.config.submission_batch_size, self.config.burst))
            if not self._limiter.can_submit(1):
                return CycleResult(
                    handled=0, more=False, wait=self._limiter.wait_time(1), reason="rate_limited"
                )
            batch, self._prefetched = self._prefetched, []
            if not batch:
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
                if not self._runner.halting():
                    self._sender.get_transport()
            except BaseException:
                self._storage.release([q.event_id for q in batch])
                raise
            meanwhile = None
            if overlap and len(batch) == size:
                meanwhile = lambda: self._prefetch(size)  # noqa: E731
            handled, retry = self._sender.send(batch, meanwhile)
            if retry:
                wait = self._retry.left()
                return CycleResult(handled=handled, more=False, wait=wait, reason="retry")
            more = len(batch) == size and not self._runner.stopping
            return CycleResult(handled=handled, more=more, wait=interval, reason="sent")

    def _prefetch(self, size: int) -> None:
        """Claim the next batch while one is in flight (when another may be sent)."""
        if self._runner.stopping or not self._limiter.can_submit(1):
            return
        self._prefetched = self._storage.dequeue(size)

    def finish_overlap(self) -> None:
        """Settle the last delivered batch and give back a batch claimed ahead."""
        with self._send_lock:
            batch, self._prefetched = self._prefetched, []
            try:
                self._sender.settle()
            finally:
                if batch:
                    self._storage.release([q.event_id for q in batch])

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
        try:
            for _ in range(max_batches):
                cycle = self.run_once(honour_pause=False, overlap=True)
                done += cycle.handled
                self.last_cycle = cycle
                if progress is not None and cycle.handled:
                    progress(done, max(total, done))
                if cycle.reason != "sent":
                    break
        finally:
            self.finish_overlap()
        return done
