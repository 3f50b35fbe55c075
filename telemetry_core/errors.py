"""Typed errors raised by telemetry-core.

App-facing calls (``TelemetryService.track`` and friends) never let these escape
unless strict mode is on; they exist so that plugins, the worker, the CLI and tests
can tell failures apart without matching on strings.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "EventRejected",
    "PluginError",
    "StorageError",
    "TelemetryError",
    "TransportError",
]


class TelemetryError(Exception):
    """Base class of every error telemetry-core raises on purpose."""


class ConfigError(TelemetryError, ValueError):
    """A configuration value is invalid.

    ``setting`` names the offending setting (for example ``"endpoint"``) so the
    message a user sees always says which knob to turn; ``reason`` is the
    message without that prefix.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"invalid {setting}: {message}")
        self.setting = setting
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-style constructors break the default ``cls(*args)`` unpickling.
        return (type(self), (self.setting, self.reason), self.__dict__)


class EventRejected(TelemetryError, ValueError):
    """An event was refused before storage (bad type, bad properties, privacy).

    ``code`` is a short machine-readable reason such as ``"invalid_type"``,
    ``"too_many_properties"`` or ``"pii"``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reason), self.__dict__)


class StorageError(TelemetryError):
    """The local store could not be opened, migrated, read or written."""


class PluginError(TelemetryError):
    """A plugin failed to load, or a provider name does not resolve."""


class TransportError(TelemetryError):
    """A batch could not be delivered.

    ``retryable`` says whether sending the same batch again may succeed (network
    errors, 408, 429, 502, 503, 504). ``retry_after`` is the server's requested
    pause in seconds when it sent ``Retry-After``, else ``None``. ``status`` is
    the HTTP status when there was a response. ``too_large`` marks a 413, which
    the worker answers by splitting the batch.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        too_large: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.too_large = too_large

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_transport_error,
            (
                type(self),
                str(self),
                {
                    "retryable": self.retryable,
                    "retry_after": self.retry_after,
                    "status": self.status,
                    "too_large": self.too_large,
                },
            ),
            self.__dict__,
        )

    def __repr__(self) -> str:
        return (
            f"TransportError({str(self)!r}, retryable={self.retryable}, "
            f"retry_after={self.retry_after}, status={self.status})"
        )


def _rebuild_transport_error(
    cls: type[TransportError], message: str, fields: dict[str, Any]
) -> TransportError:
    return cls(message, **fields)
