"""Immutable values passed between the service, the worker and the plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from telemetry_core.schema import Event, EventError

__all__ = [
    "Clock",
    "ProviderInfo",
    "QueueStats",
    "QueuedEvent",
    "SubmissionResult",
    "SubmissionStats",
    "SubmitCall",
]

#: A zero-argument callable returning seconds as a float. Wall clocks
#: (``time.time``) date events and retries; monotonic clocks drive limiters.
Clock = Callable[[], float]


@attrs.frozen(kw_only=True)
class SubmissionResult:
    """What the collector said about one submitted batch (a 2xx answer).

    ``accepted + rejected + duplicates`` equals the batch size for a
    well-behaved collector. ``errors`` holds one entry per rejected event, with
    its index in the batch. ``latency_ms`` is the request's round trip.
    """

    accepted: int
    rejected: int = 0
    duplicates: int = 0
    errors: tuple[EventError, ...] = ()
    status: int = 200
    latency_ms: float = 0.0

    @property
    def success(self) -> bool:
        """True when no event of the batch was rejected."""
        return self.rejected == 0


@attrs.frozen(kw_only=True)
class QueuedEvent:
    """A queue entry claimed by :meth:`Storage.dequeue`, with its event."""

    event: Event
    retry_count: int
    enqueued_at: float
    last_error: str | None = None

    @property
    def event_id(self) -> str:
        """The event's id, which is also the queue entry's key."""
        return self.event.id


@attrs.frozen(kw_only=True)
class QueueStats:
    """A cheap snapshot of the queue.

    ``pending`` counts entries that will be sent (due now, scheduled for a retry,
    or leased to a sender); ``due`` those that may be dequeued now; ``leased``
    those claimed by a sender whose lease has not expired; ``dead`` those a
    permanent refusal made dead letters, kept locally and resent only once the
    delivery settings change (or by hand). ``parked`` counts the pending entries
    that failed the backoff's ``max_retries`` consecutive times: still pending,
    still retried at the backoff cap. ``next_attempt_at`` is the wall-clock time
    of the earliest scheduled retry among pending entries that are not due
    (None when there is none). ``dropped`` counts entries removed without
    delivery, by reason (the bundled storage writes ``"queue_full"`` and
    ``"expired"``: older than the retention).
    """

    pending: int
    due: int = 0
    leased: int = 0
    dead: int = 0
    parked: int = 0
    next_attempt_at: float | None = None
    dropped: Mapping[str, int] = attrs.field(factory=dict)
    oldest_enqueued_at: float | None = None


@attrs.frozen(kw_only=True)
class SubmitCall:
    """What one :meth:`TelemetryService.submit_now` call did (not the running totals).

    ``sent`` events went out in ``requests`` requests: ``accepted``,
    ``duplicates`` and ``rejected`` are the collector's verdicts; ``failed``
    counts requests that failed, the last with ``error`` at ``error_at``.
    ``stopped`` says why the call ended: ``done`` (nothing due is left),
    ``rate_limited`` (the client rate limit paused sending), ``server_pause``
    (the collector asked to wait with ``Retry-After``; nothing was sent),
    ``retry`` (a failure; the rest is retried automatically), ``off`` (remote
    submission is off) or ``limit`` (the call's batch cap). ``retry_at`` is the
    wall-clock time (epoch seconds) of the next attempt when the call left
    events waiting, else None.
    """

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    error: str | None = None
    error_at: float | None = None
    stopped: str = "done"
    retry_at: float | None = None

    @property
    def delivered(self) -> bool:
        """True when the call ended with nothing due left and no failure."""
        return self.stopped == "done" and self.failed == 0


@attrs.frozen(kw_only=True)
class SubmissionStats:
    """Submission history, computed from the local submission log.

    Totals count requests (``submissions``) and events; ``success_rate`` is the
    share of requests that got a 2xx; latency percentiles are in milliseconds
    over the logged requests. ``queue_size`` and ``dead`` describe the queue at
    the time of the snapshot. ``last_error`` is the newest failed request's
    error, at ``last_error_at``, and is cleared once a later request succeeds.
    ``last_call`` is what this process's latest ``submit_now()`` did (the value
    ``submit_now()`` returns carries its own call), else None.
    """

    submissions: int = 0
    successful: int = 0
    failed: int = 0
    events_sent: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    events_duplicate: int = 0
    retries: int = 0
    network_errors: int = 0
    success_rate: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    last_submission_at: float | None = None
    last_error: str | None = None
    queue_size: int = 0
    dead: int = 0
    last_error_at: float | None = None
    last_call: SubmitCall | None = None


@attrs.frozen(kw_only=True)
class ProviderInfo:
    """One provider a plugin offers: its ``kind`` (``transport``, ``storage``,
    ``backoff`` or ``limiter``), the ``name`` configuration selects it by, and a
    one-line ``description``."""

    kind: str
    name: str
    description: str = ""
