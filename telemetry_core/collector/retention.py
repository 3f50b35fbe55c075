"""Retention: the background loop that deletes raw events past their days.

Rollups, histogram buckets, install sets and counters are kept forever; only
raw events go, and with them the dedup window (an event id is recognised as a
duplicate only while its raw event is kept).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from telemetry_core.collector.store import CollectorStore
from telemetry_core.errors import StorageError

__all__ = ["MIN_PAUSE_S", "Retention"]

log = logging.getLogger("telemetry_core.collector")

#: Shortest pause between two retention runs, so a failing run cannot spin.
MIN_PAUSE_S = 1.0


class Retention:
    """Deletes raw events received more than ``retention_days`` ago, every ``interval_s``.

    ``now_ms`` is the wall clock in milliseconds; ``sleep`` waits between runs
    (injected by tests). A failing run is logged and the loop goes on: one bad
    run must not end retention for the life of the process.
    """

    def __init__(
        self,
        store: CollectorStore,
        *,
        retention_days: int,
        interval_s: float,
        now_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.retention_days = retention_days
        self.interval_s = interval_s
        self._now_ms = now_ms
        self._sleep = sleep

    @property
    def pause_s(self) -> float:
        """The pause between two runs: ``interval_s``, at least :data:`MIN_PAUSE_S`."""
        return max(MIN_PAUSE_S, self.interval_s)

    async def run_once(self) -> int | None:
        """Run retention once; return the number of events deleted, or None when it failed."""
        try:
            deleted = await self.store.cleanup(self.retention_days, self._now_ms())
        except StorageError as exc:
            log.warning("retention failed error=%s", exc)
            return None
        except Exception:
            log.exception("retention failed unexpectedly")
            return None
        log.info("retention deleted=%d", deleted)
        return deleted

    async def run_forever(self) -> None:
        """Run retention now and then after every pause, until cancelled."""
        while True:
            await self.run_once()
            await self._sleep(self.pause_s)
