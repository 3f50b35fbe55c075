"""Sending one claimed batch through the transport, and what its answer does (DESIGN §7).

:class:`BatchSender` holds the worker's transport (built on the first send; the
first call of a new transport runs its lazy setup, native TLS work the worker's
``stop()`` waits for), sends a batch, splits it in halves on ``413``, and
applies the answer: delivered entries leave the queue (and the
:class:`~telemetry_core._retry_state.RetryState` is reset), a transient
failure reschedules them and pauses sending, a permanent refusal dead-letters
them under the delivery fingerprint in force. Every attempt goes to the
submission log; the ``batch_submitted`` / ``batch_failed`` hooks are told.

Overlap (``send(batch, meanwhile=...)``, what ``drain()`` uses): when the
transport can split a request (an optional ``begin_batch(events)`` that puts
the batch on the wire and returns a call that waits for the answer), this
thread runs ``meanwhile`` (the worker claims the
next batch there) while the collector handles the request; the bookkeeping of
a delivered batch (its submission log row, ``mark_submitted``, counters,
hooks) is deferred to the next request's ``meanwhile``, or to
:meth:`BatchSender.settle`. One thread, one request in flight: batches go out
in queue order, and no second thread contends for the GIL (a helper thread
that sent the request was measured slower than no overlap at all). A
delivered batch stays leased until it is settled: a process killed in
between sends it again, and the collector recognises it by its ids
(at-least-once, as before).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from telemetry_core._attempts import attempt_fields, redacted
from telemetry_core._dedup_window import learn as learn_dedup_window
from telemetry_core._log import logger
from telemetry_core.errors import TransportError

if TYPE_CHECKING:
    from telemetry_core._retry_state import RetryState
    from telemetry_core._worker_thread import WorkerThread
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock, QueuedEvent, SubmissionResult
    from telemetry_core.plugin_host import PluginHost
    from telemetry_core.protocols import Storage, Transport
    from telemetry_core.worker import SubmissionLog

__all__ = ["BatchSender"]


@attrs.frozen
class _Delivered:
    """A delivered batch whose bookkeeping waits for :meth:`BatchSender.settle`."""

    batch: Sequence[QueuedEvent]
    result: SubmissionResult
    started: float
    latency_ms: float
    retry: bool


class BatchSender:
    """Sends the batches of one worker (see the module docstring).

    :param config: returns the worker's configuration.
    :param context: returns the worker's delivery fingerprint.
    :param thread: the worker's thread (what it is inside; whether it halts).
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        context: Callable[[], str],
        host: PluginHost,
        storage: Storage,
        log: SubmissionLog,
        retry: RetryState,
        thread: WorkerThread,
        clock: Clock,
        monotonic: Clock,
        warn_once: Callable[..., None],
    ) -> None:
        self._config = config
        self._context = context
        self._host = host
        self._storage = storage
        self._log = log
        self._retry = retry
        self._thread = thread
        self._clock = clock
        self._monotonic = monotonic
        self._warn_once = warn_once
        self.transport: Transport | None = None
        #: Whether a call of the current transport has returned (its lazy setup is done).
        self.transport_ready = False
        self._info_checked = False
        self._unsettled: _Delivered | None = None

    # -- the transport ------------------------------------------------------------

    def get_transport(self) -> Transport:
        """The transport, built on first need."""
        if self.transport is None:
            # Python imports under the GIL, not C code without it: stop() gives
            # no grace for this (a daemon thread here just ends at finalization).
            with self._thread.inside("build"):
                self.transport = self._host.make_transport(self._config())
                self.transport_ready = False
        return self.transport

    def _call_phase(self) -> str:
        # The first call of a transport runs its lazy setup (native TLS work
        # without the GIL): stop() waits for it, see the worker's docstring.
        return "network" if self.transport_ready else "setup"

    def ping(self) -> bool:
        """Whether the collector answers again (a built transport's ``ping()``)."""
        assert self.transport is not None
        try:
            with self._thread.inside(self._call_phase()):
                return bool(self.transport.ping())
        except Exception as exc:
            # The type only: a message could quote the request (and its key).
            logger.debug("telemetry-core: transport ping failed: %s", type(exc).__name__)
            return False
        finally:
            self.transport_ready = True

    def release_idle(self) -> None:
        """Let the transport drop its idle connections (when it can)."""
        release = getattr(self.transport, "release_idle", None)
        if release is None:
            return
        try:
            release()
        except Exception as exc:
            logger.debug("telemetry-core: releasing idle connections failed: %r", exc)
        # The next call builds a TLS context again (native work without the
        # GIL): it is a setup phase that stop() waits for, as the first one was.
        self.transport_ready = False

    def close(self) -> None:
        """Close the transport's connections; the next send builds a new one."""
        transport, self.transport = self.transport, None
        self.transport_ready = False
        if transport is not None:
            try:
                transport.close()
            except Exception as exc:
                logger.debug("telemetry-core: closing the transport failed: %r", exc)

    # -- a batch ---------------------------------------------------------------------

    def send(
        self,
        batch: Sequence[QueuedEvent],
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[int, bool]:
        """Send ``batch``; return (events handled, whether a retryable failure stopped it).

        With ``meanwhile``, overlap it with the request and defer the
        bookkeeping of a delivered batch (see the module docstring); an error
        it raises is raised again once the batch's answer has been applied.
        """
        if self._thread.halting():
            self.settle()
            self._storage.release([q.event_id for q in batch])
            return 0, False
        transport = self.get_transport()
        begin = getattr(transport, "begin_batch", None)
        if begin is None:
            meanwhile = None  # nothing to overlap the request with: the plain path
        if meanwhile is None:
            self.settle()
        events = [q.event for q in batch]
        retry = any(q.retry_count > 0 for q in batch)
        started = self._clock()
        t0 = self._monotonic()
        side_error: Exception | None = None
        try:
            with self._thread.inside(self._call_phase()):
                if meanwhile is None or begin is None:  # (begin: for the type checker)
                    result = transport.submit_batch(events)
                else:
                    # A new transport's setup (TLS context, handshake) runs in
                    # begin_batch, in this thread, inside the setup phase.
                    answer = begin(events)
                    with self._thread.inside("local"):
                        side_error = self._overlap(meanwhile)
                    result = answer()
        except TransportError as err:
            error = err
        except Exception as exc:
            # A transport plugin bug must not lose events or kill the thread:
            # treat it like a network error, so the batch is retried later.
            error = TransportError(f"transport failed: {exc!r}", retryable=True)
        else:
            self.transport_ready = True
            latency_ms = self._latency(t0)
            self._retry.delivered()
            self._unsettled = _Delivered(batch, result, started, latency_ms, retry)
            if meanwhile is None or not self._info_checked:
                self.settle()
            self._raise(side_error)
            return len(batch), False
        self.transport_ready = True
        self.settle()
        error = redacted(error, self._config().api_key)
        self._record(started, self._latency(t0), batch, error=error, retry=retry)
        outcome = self._failure(batch, error)
        self._raise(side_error)
        return outcome

    def _overlap(self, meanwhile: Callable[[], None]) -> Exception | None:
        """Run ``meanwhile`` after settling the previous batch; return its error."""
        try:
            self.settle()
            meanwhile()
        except Exception as exc:
            return exc
        return None

    @staticmethod
    def _raise(error: Exception | None) -> None:
        if error is not None:
            raise error

    def _failure(self, batch: Sequence[QueuedEvent], error: TransportError) -> tuple[int, bool]:
        """Apply a refused or failed attempt (split, retry later, or dead letters)."""
        if error.too_large:
            return self._split(batch, error)
        if error.retryable:
            self._failed(batch, error)
            return 0, True
        self._dead(batch, error)
        return len(batch), False

    def settle(self) -> None:
        """Do the deferred bookkeeping of a delivered batch, if any (see the module docstring)."""
        done, self._unsettled = self._unsettled, None
        if done is None:
            return
        batch, result = done.batch, done.result
        self._record(done.started, done.latency_ms, batch, result=result, retry=done.retry)
        self._acknowledged(batch, result)

    def _split(self, batch: Sequence[QueuedEvent], error: TransportError) -> tuple[int, bool]:
        if len(batch) == 1:
            self._dead(batch, error)
            return 1, False
        if self._thread.stopping:
            self._storage.release([q.event_id for q in batch])
            return 0, False
        middle = len(batch) // 2
        handled, retry = self.send(batch[:middle])
        if retry or self._thread.stopping:
            self._storage.release([q.event_id for q in batch[middle:]])
            return handled, retry
        more, retry = self.send(batch[middle:])
        return handled + more, retry

    def _failed(self, batch: Sequence[QueuedEvent], error: TransportError) -> None:
        """A transient failure: reschedule the batch and pause sending."""
        events = [q.event for q in batch]
        self._storage.mark_failed([e.id for e in events], str(error), error.retry_after)
        delay = self._retry.failed(error, self._config().max_retry_after)
        if self._retry.newly_parked():
            logger.warning(
                "telemetry-core: %d consecutive failed attempts (last: %s); pending events "
                "are parked and retried every %.0f s at most until they are delivered or "
                "expire",
                self._retry.failures,
                error,
                delay,
            )
        self._host.batch_failed(events, error)

    def _acknowledged(self, batch: Sequence[QueuedEvent], result: SubmissionResult) -> None:
        events = [q.event for q in batch]
        self._storage.mark_submitted([e.id for e in events])
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
        transport = self.transport
        if transport is None or self._thread.halting():
            return
        window = learn_dedup_window(self._log, transport, self._clock())
        retention = self._config().retention_days
        if window is not None and retention > window:
            self._warn_once(
                "dedup_window",
                "telemetry-core: events are kept %g days (retention_days) but the collector "
                "recognises resent events for %d days only; an event resent later could be "
                "counted twice: set retention_days to %d or less",
                retention,
                window,
                window,
            )

    def _dead(self, batch: Sequence[QueuedEvent], error: TransportError) -> None:
        events = [q.event for q in batch]
        reason = "event too large" if error.too_large else str(error)
        self._storage.mark_dead([e.id for e in events], reason, self._context())
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

    def _latency(self, t0: float) -> float:
        return max((self._monotonic() - t0) * 1000.0, 0.0)

    def _record(
        self,
        started: float,
        latency_ms: float,
        batch: Sequence[QueuedEvent],
        *,
        retry: bool,
        result: SubmissionResult | None = None,
        error: TransportError | None = None,
    ) -> None:
        fields = attempt_fields(
            started, latency_ms, len(batch), retry=retry, result=result, error=error
        )
        try:
            self._log.log_submission(**fields)
        except Exception as exc:
            self._warn_once("log", "telemetry-core: could not write the submission log: %r", exc)
