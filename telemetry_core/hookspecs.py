"""Hook specifications of telemetry-core.

Plugins implement these with the :data:`hookimpl` marker. Provider hooks
(``telemetry_make_*``) build the transport, storage, backoff and limiter chosen
by name in :class:`~telemetry_core.config.TelemetryConfig`; a plugin returns
``None`` for names it does not provide. Observer hooks see events and batches
go by. Implementations must accept exactly the parameters they use, by name:
pluggy does not pass parameter defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import random

    from telemetry_core.config import TelemetryConfig
    from telemetry_core.errors import TransportError
    from telemetry_core.models import Clock, ProviderInfo, SubmissionResult
    from telemetry_core.protocols import Backoff, Limiter, SQLiteDatabase, Storage, Transport
    from telemetry_core.schema import Event, PropertyValue

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

#: Project name, entry-point group and marker name of the plugin system.
PROJECT_NAME = "telemetry_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations: ``@hookimpl def telemetry_make_transport(...)``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- providers --------------------------------------------------------------


@hookspec
def telemetry_list_providers() -> list[ProviderInfo]:  # type: ignore[empty-body]
    """Describe the providers this plugin offers.

    Called by ``telemetry plugins`` and when a configured provider name does not
    resolve, to list the names that would.

    :return: one :class:`~telemetry_core.models.ProviderInfo` per provider.
    """


@hookspec(firstresult=True)
def telemetry_make_transport(name: str, config: TelemetryConfig) -> Transport | None:
    """Build the transport selected by ``config.transport``.

    Called once per service, lazily, when the worker first submits (so that
    importing telemetry-core never imports network libraries).

    :param name: the transport name from configuration, e.g. ``"https"``.
    :param config: the effective configuration (endpoint, API key, CA bundle, timeout).
    :return: a :class:`~telemetry_core.protocols.Transport`, or ``None`` if this
        plugin does not provide ``name``.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def telemetry_make_storage(
    name: str,
    config: TelemetryConfig,
    store: SQLiteDatabase,
    backoff: Backoff,
    clock: Clock,
) -> Storage | None:
    """Build the event store and queue selected by ``config.storage``.

    Called once per service when it opens, before any event is recorded.

    :param name: the storage name from configuration, e.g. ``"sqlite"``.
    :param config: the effective configuration (queue size, retention, lease).
    :param store: the local SQLite file, as a
        :class:`~telemetry_core.protocols.SQLiteDatabase` handle (the core's
        tables migrated; read-only when the service only views an existing
        file). A storage may keep its tables there, versioned with
        ``store.migrate_part``; one that keeps its data elsewhere may ignore it.
    :param backoff: the backoff provider, which schedules failed entries.
    :param clock: wall clock in seconds.
    :return: a :class:`~telemetry_core.protocols.Storage`, or ``None`` if this
        plugin does not provide ``name``.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def telemetry_make_backoff(
    name: str, config: TelemetryConfig, rng: random.Random, clock: Clock
) -> Backoff | None:
    """Build the retry policy selected by ``config.backoff``.

    :param name: the backoff name from configuration, e.g. ``"exponential-jitter"``.
    :param config: the effective configuration (base and maximum delay, retries).
    :param rng: the source of jitter; tests pass a seeded ``random.Random``.
    :param clock: wall clock in seconds, for ``next_retry_timestamp``.
    :return: a :class:`~telemetry_core.protocols.Backoff`, or ``None`` if this
        plugin does not provide ``name``.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def telemetry_make_limiter(name: str, config: TelemetryConfig, clock: Clock) -> Limiter | None:
    """Build the submission rate limiter selected by ``config.limiter``.

    :param name: the limiter name from configuration, e.g. ``"token-bucket"``.
    :param config: the effective configuration (events per minute, burst).
    :param clock: a monotonic clock in seconds.
    :return: a :class:`~telemetry_core.protocols.Limiter`, or ``None`` if this
        plugin does not provide ``name``.

    Stops at first non-None result.
    """


# -- observers --------------------------------------------------------------


@hookspec
def telemetry_scrub_event(event_type: str, properties: dict[str, PropertyValue]) -> None:
    """Remove or mask personal data in an event's properties before it is stored.

    Called for every tracked event, before validation and storage, by every
    plugin in turn; each sees the previous ones' changes. Modify ``properties``
    in place. Raise :class:`~telemetry_core.errors.EventRejected` to drop the
    event (it is counted, never stored).

    :param event_type: the event's type, e.g. ``"command_executed"``.
    :param properties: the event's properties, a mutable flat mapping.
    """


@hookspec
def telemetry_event_recorded(event: Event) -> None:
    """Called after ``event`` has been durably stored (and queued, if remote
    submission is on). Runs in the caller's thread: keep it fast.

    :param event: the stored event, as it will be sent.
    """


@hookspec
def telemetry_batch_submitted(events: Sequence[Event], result: SubmissionResult) -> None:
    """Called by the worker after the collector acknowledged a batch.

    :param events: the events of the batch, in the order sent.
    :param result: the collector's answer (accepted, rejected, duplicates).
    """


@hookspec
def telemetry_batch_failed(events: Sequence[Event], error: TransportError) -> None:
    """Called by the worker after a batch could not be delivered.

    :param events: the events of the batch, in the order sent.
    :param error: why; ``error.retryable`` says whether they will be retried.
    """
