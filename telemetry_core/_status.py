"""The service's status: what is configured and in use, as one plain dict.

Used by :meth:`TelemetryService.status` and the CLI's ``status --json`` (whose
keys are documented in docs/client.md). The API key is never included, only
whether one is set.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import attrs

from telemetry_core._dedup_window import stored as stored_dedup_window
from telemetry_core._write_behind import count_spilled
from telemetry_core.errors import TelemetryError
from telemetry_core.models import QueueStats

if TYPE_CHECKING:
    from telemetry_core._providers import Opened
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.worker import SubmissionWorker

__all__ = ["describe"]


def describe(
    config: TelemetryConfig,
    opened: Opened | None,
    worker: SubmissionWorker | None,
    *,
    degraded: str | None,
    loaded: list[str],
) -> dict[str, Any]:
    """The status document (see the module docstring)."""
    queue = opened.storage.stats() if opened is not None else QueueStats(pending=0)
    window = _dedup_window(opened)
    return {
        "app": config.app,
        "app_version": config.app_version,
        "db_path": str(config.db_path),
        "db_exists": config.db_path.exists(),
        "enabled": config.recording,
        "remote_enabled": config.sending,
        "endpoint": config.endpoint,
        "api_key_set": config.api_key is not None,
        "do_not_track": config.do_not_track,
        "install_id": opened.install_id if opened is not None else None,
        "degraded": degraded,
        "queue": attrs.asdict(queue),
        "spilled": count_spilled(config.db_path),
        "collector_dedup_window_days": window,
        "retention_exceeds_dedup_window": window is not None and config.retention_days > window,
        "worker": {
            "running": worker is not None and worker.running,
            "paused_until": worker.pause_until if worker and worker.pause_until else None,
            "offline": worker.offline if worker is not None else False,
        },
        "plugins": {
            "transport": config.transport,
            "storage": config.storage,
            "backoff": config.backoff,
            "limiter": config.limiter,
            "loaded": loaded,
        },
    }


def _dedup_window(opened: Opened | None) -> int | None:
    """The collector's dedup window (days) as the worker last learned it."""
    if opened is None:
        return None
    try:
        return stored_dedup_window(opened.store)
    except (TelemetryError, ValueError, sqlite3.Error):
        return None
