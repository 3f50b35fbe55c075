"""What one ``track()`` call does once consent allows it, and what its failures do.

:class:`Tracker` runs the call: the store is opened first (so that a rejection
can be counted there), the :class:`~telemetry_core.recorder.Recorder` builds the
checked event, the :class:`~telemetry_core._event_writer.EventWriter` stores
it (queued when sending, spilled while another process holds the lock), the
``telemetry_event_recorded`` hooks are told and the worker is started when
events can be sent. A failure never reaches the app (DESIGN §4): a rejected
event is counted (``rejected:<code>``), a store failure is counted in memory
(``failed:<error>``: the store has just failed, counting there now would wait
or fail a second time), each kind is logged once; under ``config.strict`` both
raise instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from telemetry_core.errors import EventRejected, StorageError, TelemetryError
from telemetry_core.recorder import counter_name

if TYPE_CHECKING:
    from telemetry_core._counters import Counters
    from telemetry_core._event_writer import EventWriter
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.plugin_host import PluginHost
    from telemetry_core.recorder import Recorder
    from telemetry_core.schema import PropertyValue

__all__ = ["Tracker"]


class Tracker:
    """Records the events of one service (see the module docstring).

    :param config: returns the effective configuration.
    :param open_store: opens the store (once), None when telemetry is degraded.
    :param start_worker: starts the worker unless it is running (events are queued).
    """

    def __init__(
        self,
        *,
        config: Callable[[], TelemetryConfig],
        open_store: Callable[[], Opened | None],
        recorder: Recorder,
        writer: EventWriter,
        host: PluginHost,
        counters: Counters,
        start_worker: Callable[[], object],
    ) -> None:
        self._config = config
        self._open_store = open_store
        self._recorder = recorder
        self._writer = writer
        self._host = host
        self._counters = counters
        self._start_worker = start_worker

    def track(
        self,
        event_type: str,
        properties: Mapping[str, PropertyValue] | None,
        duration_ms: float | None,
        success: bool | None,
        session_id: str | None,
    ) -> str | None:
        """The event's id, or None when it was not recorded (counted, warned once)."""
        try:
            # Opened first, so that a rejection can be counted in the store.
            opened = self._open_store()
            if opened is None:
                return None
            config = self._config()
            event = self._recorder.build(
                (opened.install_id, config.app, config.app_version),
                event_type,
                properties,
                duration_ms=duration_ms,
                success=success,
                session_id=session_id,
                remember=opened.scrubbed_clean,
            )
            # Write the checked event (and queue it when sending), then notify.
            if not self._writer.write(opened, event, enqueue=config.sending):
                return None
            self._host.event_recorded(event)
            if config.sending:
                self._start_worker()
            return event.id
        except EventRejected as exc:
            self._counters.count(counter_name("rejected", exc.code))
            if self._config().strict:
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
            if self._config().strict:
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
