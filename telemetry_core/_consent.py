"""Consent: what ``enable()`` and ``disable()`` change, and the withdrawal kept on disk.

The user's consent lives in two places: the effective configuration of the
running service, and the stored config keys ``enabled``, ``remote-enabled``
and ``remote-endpoint`` that the CLI and later processes read (DESIGN §5).
:func:`granted` and :func:`withdrawn` give the new configuration,
:func:`store_grant` and :func:`store_withdrawal` write the keys, and
:func:`apply_stored_withdrawal` makes a withdrawal the user stored win over
consent the app's code gives.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from telemetry_core.errors import ConfigError, TelemetryError

if TYPE_CHECKING:
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.local_store import LocalStore

__all__ = [
    "apply_stored_withdrawal",
    "granted",
    "store_grant",
    "store_withdrawal",
    "withdrawn",
]


def granted(config: TelemetryConfig, *, remote: bool, endpoint: str | None) -> TelemetryConfig:
    """``config`` with recording (and, with ``remote``, sending) on; the
    endpoint validated. Raises :class:`ConfigError` under ``DO_NOT_TRACK``."""
    if config.do_not_track:
        raise ConfigError(
            "enabled", "DO_NOT_TRACK is set in the environment; unset it to enable telemetry"
        )
    changes: dict[str, Any] = {"enabled": True}
    if remote:
        changes["remote_enabled"] = True
    if endpoint is not None:
        changes["endpoint"] = endpoint
    return config.evolve(**changes)


def withdrawn(config: TelemetryConfig, *, remote_only: bool) -> TelemetryConfig:
    """``config`` with sending (and, unless ``remote_only``, recording) off."""
    changes: dict[str, Any] = {"remote_enabled": False}
    if not remote_only:
        changes["enabled"] = False
    return config.evolve(**changes)


def store_grant(store: LocalStore, *, remote: bool, endpoint: str | None) -> None:
    """Write the consent :func:`granted` gave to the stored config."""
    store.set_config("enabled", "true")
    if remote:
        store.set_config("remote-enabled", "true")
    if endpoint is not None:
        store.set_config("remote-endpoint", endpoint)


def store_withdrawal(store: LocalStore, *, remote_only: bool) -> None:
    """Write the withdrawal :func:`withdrawn` made to the stored config."""
    store.set_config("remote-enabled", "false")
    if not remote_only:
        store.set_config("enabled", "false")


def apply_stored_withdrawal(config: TelemetryConfig, opened: Opened) -> TelemetryConfig:
    """``config`` with a withdrawal the user stored (``telemetry disable``, or
    ``disable --remote``) applied: it beats consent the app's code gives (DESIGN §5)."""
    try:
        enabled = opened.store.get_config("enabled")
        remote = opened.store.get_config("remote-enabled")
    except (TelemetryError, sqlite3.Error):
        return config
    if enabled == "false" and config.enabled:
        return config.evolve(enabled=False, remote_enabled=False)
    if remote == "false" and config.remote_enabled:
        return config.evolve(remote_enabled=False)
    return config
