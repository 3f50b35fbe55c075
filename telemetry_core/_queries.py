"""The service's read side: stats, queue, counts, counters, status and the queue warning.

:class:`Queries` answers the read calls of
:class:`~telemetry_core.service.TelemetryService` from the store as far as
consent lets it be opened (:meth:`StoreAccess.existing
<telemetry_core._store_access.StoreAccess.existing>`): with consent off an
existing file is read without being written, under ``DO_NOT_TRACK`` nothing is
opened and the answers are empty. Counts still held in memory are included,
and the submission stats carry what the last ``submit_now()`` did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from telemetry_core import _sender_state as sender_state
from telemetry_core._status import describe
from telemetry_core._submission_history import submission_history
from telemetry_core.models import QueueStats, SubmissionStats
from telemetry_core.protocols import EventCounts

if TYPE_CHECKING:
    from telemetry_core._counters import Counters
    from telemetry_core._sending import Sending
    from telemetry_core._store_access import StoreAccess
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.plugin_host import PluginHost

__all__ = ["Queries"]


class Queries:
    """The read calls of one service (see the module docstring).

    :param config: returns the effective configuration.
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        access: StoreAccess,
        sending: Sending,
        counters: Counters,
        host: PluginHost,
    ) -> None:
        self._config = config
        self._access = access
        self._sending = sending
        self._counters = counters
        self._host = host

    def submission_stats(self) -> SubmissionStats:
        """Totals from the submission log, with the last ``submit_now()`` call."""
        # existing(): opens the store when recording, and stores this process's
        # journaled events first, so queue_size counts every event track() took.
        opened = self._access.existing()
        if opened is None:
            return SubmissionStats(last_call=self._sending.last_call)
        stats = submission_history(opened.store, opened.storage.stats())
        return attrs.evolve(stats, last_call=self._sending.last_call)

    def queue_stats(self) -> QueueStats:
        """A snapshot of the local queue (zeros when there is no store)."""
        opened = self._access.existing()
        if opened is None:
            return QueueStats(pending=0)
        return opened.storage.stats()

    def event_counts(self) -> dict[str, int]:
        """Locally recorded events by type."""
        opened = self._access.existing()
        if opened is None:
            return {}
        storage = opened.storage
        return dict(storage.event_counts()) if isinstance(storage, EventCounts) else {}

    def counters(self) -> dict[str, int]:
        """The stored counters plus those not written yet."""
        opened = self._access.existing()
        counts = dict(opened.store.counters()) if opened is not None else {}
        for name, n in self._counters.pending().items():
            counts[name] = counts.get(name, 0) + n
        return counts

    def status(self) -> dict[str, Any]:
        """The status document (:func:`telemetry_core._status.describe`)."""
        return describe(
            self._config(),
            self._access.existing(),
            self._sending.worker,
            degraded=self._access.broken,
            loaded=[record.name for record in self._host.plugins()],
        )

    def queue_warning(self, queue: QueueStats | None) -> str | None:
        """The sentence of :func:`telemetry_core._sender_state.queue_warning`
        for ``queue`` (default: the queue now), else None."""
        if queue is None:
            queue = self.queue_stats()
        return sender_state.queue_warning(
            self._config(), queue, lambda: self.submission_stats().last_error
        )
