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

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from telemetry_core._version import __version__

if TYPE_CHECKING:
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

#: Public name -> the module that defines it. A CLI that imports the package
#: only pays for the modules it then uses (PEP 562).
_LAZY: dict[str, str] = {
    "ConfigError": "telemetry_core.errors",
    "EventRejected": "telemetry_core.errors",
    "PluginError": "telemetry_core.errors",
    "StorageError": "telemetry_core.errors",
    "TelemetryError": "telemetry_core.errors",
    "TransportError": "telemetry_core.errors",
    "TelemetryConfig": "telemetry_core.config",
    "hookimpl": "telemetry_core.hookspecs",
    "QueuedEvent": "telemetry_core.models",
    "QueueStats": "telemetry_core.models",
    "SubmissionResult": "telemetry_core.models",
    "SubmissionStats": "telemetry_core.models",
    "Event": "telemetry_core.schema",
    "ServerInfo": "telemetry_core.schema",
    "TelemetryService": "telemetry_core.service",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'telemetry_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not."""
    return sorted(set(globals()) | set(__all__))
