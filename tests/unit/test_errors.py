"""Typed errors: hierarchy, attributes, reprs without secrets, pickling."""

from __future__ import annotations

import pickle

import pytest

from telemetry_core.errors import (
    ConfigError,
    EventRejected,
    PluginError,
    StorageError,
    TelemetryError,
    TransportError,
)


def test_hierarchy() -> None:
    for cls in (ConfigError, EventRejected, StorageError, PluginError, TransportError):
        assert issubclass(cls, TelemetryError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(EventRejected, ValueError)


def test_config_error_names_the_setting() -> None:
    error = ConfigError("endpoint", "expected https")
    assert error.setting == "endpoint"
    assert error.reason == "expected https"
    assert str(error) == "invalid endpoint: expected https"


def test_event_rejected_carries_its_code() -> None:
    error = EventRejected("invalid_type", "type must match")
    assert error.code == "invalid_type"
    assert str(error) == "invalid_type: type must match"


def test_transport_error_attributes() -> None:
    error = TransportError("503 from collector", retryable=True, retry_after=2.5, status=503)
    assert (error.retryable, error.retry_after, error.status, error.too_large) == (
        True,
        2.5,
        503,
        False,
    )
    assert TransportError("413", retryable=False, status=413, too_large=True).too_large


def test_transport_error_repr_holds_only_the_message_and_its_fields() -> None:
    error = TransportError("connection reset", retryable=True, status=None)
    error.__cause__ = RuntimeError("X-API-Key: sk-secret")
    text = repr(error)
    assert text == (
        "TransportError('connection reset', retryable=True, retry_after=None, status=None)"
    )
    assert "sk-secret" not in text
    assert "sk-secret" not in str(error)


@pytest.mark.parametrize(
    "error",
    [
        TelemetryError("x"),
        ConfigError("endpoint", "bad"),
        EventRejected("pii", "looks like an e-mail address"),
        StorageError("disk full"),
        PluginError("no transport 'x'"),
        TransportError("429", retryable=True, retry_after=3.0, status=429, too_large=False),
    ],
)
def test_errors_survive_pickling(error: TelemetryError) -> None:
    # Errors cross process boundaries (multiprocessing, concurrent.futures).
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
