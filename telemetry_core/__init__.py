"""telemetry-core: privacy-first usage telemetry.

Record anonymous events locally, queue them durably, and submit them in the
background to a collector::

    from telemetry_core import TelemetryConfig, TelemetryService

    config = TelemetryConfig.from_env(app="automatosx")
    with TelemetryService(config) as telemetry:
        telemetry.track("command_executed", {"command": "run"}, duration_ms=12.5, success=True)

Importing this package imports neither the network stack (urllib3), nor the
command line (click), nor the collector.
"""

from telemetry_core._version import __version__
from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import (
    ConfigError,
    EventRejected,
    PluginError,
    StorageError,
    TelemetryError,
    TransportError,
)
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import QueuedEvent, QueueStats, SubmissionResult, SubmissionStats
from telemetry_core.schema import Event, ServerInfo
from telemetry_core.service import TelemetryService

__all__ = [
    "ConfigError",
    "Event",
    "EventRejected",
    "PluginError",
    "QueueStats",
    "QueuedEvent",
    "ServerInfo",
    "StorageError",
    "SubmissionResult",
    "SubmissionStats",
    "TelemetryConfig",
    "TelemetryError",
    "TelemetryService",
    "TransportError",
    "__version__",
    "hookimpl",
]
