"""What the submission log says, summed up for ``status`` and ``get_submission_stats()``.

The worker appends one row per request to the core's ``telemetry_submissions``
table (:meth:`LocalStore.log_submission
<telemetry_core.local_store.LocalStore.log_submission>`) and counts totals in
``telemetry_counters``; :func:`submission_history` reads both back as a
:class:`~telemetry_core.models.SubmissionStats`: lifetime totals, latency
percentiles over the logged requests (nearest rank), the last error unless a
later request succeeded, and the queue figures it is given.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from telemetry_core.models import QueueStats, SubmissionStats

if TYPE_CHECKING:
    from telemetry_core.local_store import LocalStore

__all__ = ["submission_history"]

_LATENCIES_SQL = "SELECT latency_ms FROM telemetry_submissions ORDER BY latency_ms"
_LAST_SQL = "SELECT max(started_at) FROM telemetry_submissions"
# The newest error, unless a later request succeeded (then it is old news).
_LAST_ERROR_SQL = (
    "SELECT error, started_at FROM telemetry_submissions WHERE error IS NOT NULL"
    " AND id > coalesce((SELECT max(id) FROM telemetry_submissions"
    " WHERE error IS NULL), 0) ORDER BY id DESC LIMIT 1"
)


def submission_history(store: LocalStore, queue: QueueStats) -> SubmissionStats:
    """The submission history of ``store`` with the queue figures of ``queue``."""
    counts = store.counters()
    total = counts.get("submissions.total", 0)
    successful = counts.get("submissions.successful", 0)
    latencies = [float(r[0]) for r in store.read(_LATENCIES_SQL)]
    last = store.read(_LAST_SQL)
    last_error = store.read(_LAST_ERROR_SQL)
    return SubmissionStats(
        submissions=total,
        successful=successful,
        failed=counts.get("submissions.failed", 0),
        events_sent=counts.get("events.sent", 0),
        events_accepted=counts.get("events.accepted", 0),
        events_rejected=counts.get("events.rejected", 0),
        events_duplicate=counts.get("events.duplicate", 0),
        retries=counts.get("submissions.retries", 0),
        network_errors=counts.get("submissions.network_errors", 0),
        success_rate=successful / total if total else 0.0,
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        latency_p99_ms=_percentile(latencies, 99),
        last_submission_at=None if last[0][0] is None else float(last[0][0]),
        last_error=str(last_error[0][0]) if last_error else None,
        last_error_at=float(last_error[0][1]) if last_error else None,
        queue_size=queue.pending,
        dead=queue.dead,
    )


def _percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list, or ``None`` when empty."""
    if not ordered:
        return None
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]
