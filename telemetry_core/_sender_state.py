"""What the sending side keeps between processes, reports per call, and warns about.

A CLI app runs one process per command, so the client's rate limit and a pause
the collector asked for (``Retry-After``) are kept in the stored config
(:func:`save`, :func:`restore_limiter`, :func:`stored_server_pause`);
:func:`call_result` says what one ``submit_now()`` call did; :func:`queue_warning`
explains a queue past :data:`QUEUE_WARN_SHARE` of ``max_queue_size``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from telemetry_core._log import logger
from telemetry_core.errors import TelemetryError
from telemetry_core.models import SubmitCall
from telemetry_core.protocols import PersistentLimiter

if TYPE_CHECKING:
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import QueueStats, SubmissionStats
    from telemetry_core.worker import SubmissionWorker

__all__ = [
    "QUEUE_WARN_SHARE",
    "call_result",
    "queue_warning",
    "restore_limiter",
    "save",
    "stored_server_pause",
]

#: The share of ``max_queue_size`` past which the queue is reported as large.
QUEUE_WARN_SHARE: Final = 0.8
#: Stored-config keys of the limiter's state and of a collector-requested pause.
_LIMITER_KEY: Final = "state.limiter"
_SERVER_PAUSE_KEY: Final = "state.server-pause-until"


def call_result(
    before: SubmissionStats,
    after: SubmissionStats,
    worker: SubmissionWorker,
    now: float,
    config: TelemetryConfig,
) -> SubmitCall:
    """One submit_now() call's result, from the totals before and after it."""
    cycle = worker.last_cycle
    reason = cycle.reason if cycle is not None else "empty"
    failed = after.failed - before.failed
    retry_at: float | None = None
    stopped = "done"
    if reason == "rate_limited":
        stopped, retry_at = "rate_limited", now + (cycle.wait if cycle else 0.0)
    elif reason in ("retry", "paused", "offline"):
        stopped = "retry"
        retry_at = worker.pause_until or now + config.submission_interval
    elif reason == "sent":
        stopped = "limit"
    return SubmitCall(
        sent=after.events_sent - before.events_sent,
        accepted=after.events_accepted - before.events_accepted,
        duplicates=after.events_duplicate - before.events_duplicate,
        rejected=after.events_rejected - before.events_rejected,
        failed=failed,
        error=after.last_error if failed else None,
        error_at=after.last_error_at if failed else None,
        stopped=stopped,
        retry_at=retry_at,
    )


def save(opened: Opened, worker: SubmissionWorker | None, now: float) -> None:
    """Write the limiter's state and a server-requested pause to the stored config."""
    limiter = opened.limiter
    if isinstance(limiter, PersistentLimiter):
        opened.store.set_config(_LIMITER_KEY, f"{limiter.state()!r} {now!r}")
    if worker is not None:
        pause = worker.server_pause_until
        stored = opened.store.get_config(_SERVER_PAUSE_KEY)
        # Written when it changed: once a pause has ended, its "0.0" stays.
        if (pause or stored is not None) and stored != repr(pause):
            opened.store.set_config(_SERVER_PAUSE_KEY, repr(pause))


def restore_limiter(opened: Opened, now: float) -> None:
    """Continue the rate limit of earlier processes (a CLI runs one per command)."""
    limiter = opened.limiter
    if not isinstance(limiter, PersistentLimiter):
        return
    try:
        saved = opened.store.get_config(_LIMITER_KEY)
        if saved is not None:
            tokens, at = (float(x) for x in saved.split())
            limiter.restore(tokens, now - at)
    except (ValueError, TelemetryError, sqlite3.Error) as exc:
        logger.debug("telemetry-core: ignoring the saved limiter state: %r", exc)


def stored_server_pause(opened: Opened) -> float:
    """The end (wall clock) of a pause a collector asked for, as saved; 0 if none."""
    try:
        return float(opened.store.get_config(_SERVER_PAUSE_KEY) or 0.0)
    except (ValueError, TelemetryError):
        return 0.0


def queue_warning(
    config: TelemetryConfig, queue: QueueStats, last_error: Callable[[], str | None]
) -> str | None:
    """A sentence when the queue holds more than :data:`QUEUE_WARN_SHARE` of
    ``max_queue_size``: how full, the likely cause and what to do; else None."""
    held = queue.pending + queue.dead
    if held <= QUEUE_WARN_SHARE * config.max_queue_size:
        return None
    share = 100 * held / config.max_queue_size
    full = f"the queue holds {held} events ({share:.0f} % of max-queue-size)"
    if not config.remote_enabled:
        return f"{full}: remote submission is off; run `telemetry enable --remote`"
    if config.transport == "https" and config.endpoint is None:
        return (f"{full}: no endpoint is configured; run "
                "`telemetry enable --remote --endpoint URL`")  # fmt: skip
    error = last_error() or ""
    if any(f" {code}" in error for code in ("401", "403")):
        return (f"{full}: the collector refuses the API key; set the right one with "
                "`telemetry config set remote-api-key KEY`")  # fmt: skip
    if error:
        return (f"{full}: the collector is failing or unreachable ({error[:120]}); events "
                "are retried automatically, `telemetry submit` tries now")  # fmt: skip
    return (f"{full}: events are recorded faster than they are sent; raise "
            "submission-rate-limit or lower submission-interval")  # fmt: skip
