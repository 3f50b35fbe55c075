"""Unit tests of the collector's retention loop (a real SQLite store, an injected sleep)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from telemetry_core.collector import retention
from telemetry_core.collector.aggregation import DAY_MS
from telemetry_core.collector.retention import Retention
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import StatsQuery
from tests.conftest import build_event

NOW_MS = 1_800_000_000_000


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        (n,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    conn.close()
    return int(n)


def test_a_run_deletes_raw_events_past_retention_and_keeps_rollups(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def scenario() -> tuple[int | None, int]:
        store = SQLiteStore(path)
        old = [build_event(timestamp=NOW_MS - 40 * DAY_MS) for _ in range(3)]
        recent = [build_event(timestamp=NOW_MS - DAY_MS) for _ in range(2)]
        await store.ingest(old, NOW_MS - 31 * DAY_MS)
        await store.ingest(recent, NOW_MS - DAY_MS)
        loop = Retention(store, retention_days=30, interval_s=3600, now_ms=lambda: NOW_MS)
        deleted = await loop.run_once()
        total = (await store.stats(StatsQuery()))["totals"]["count"]
        await store.close()
        return deleted, total

    deleted, total = asyncio.run(scenario())
    assert deleted == 3
    assert _count(path, "events") == 2
    assert total == 5  # the rollups of deleted events stay


def test_a_failed_run_is_logged_and_reported_as_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore(SQLiteStore):
        async def cleanup(self, retention_days: int, now_ms: int) -> int:
            raise RuntimeError("a bug in cleanup")

    async def scenario() -> tuple[int | None, int | None]:
        broken = BrokenStore(tmp_path / "b.db")
        closed = SQLiteStore(tmp_path / "c.db")
        await closed.close()  # cleanup on a closed store is a StorageError
        results = []
        for store in (broken, closed):
            loop = Retention(store, retention_days=1, interval_s=1, now_ms=lambda: NOW_MS)
            results.append(await loop.run_once())
        await broken.close()
        return results[0], results[1]

    with caplog.at_level(logging.INFO, logger="telemetry_core.collector"):
        assert asyncio.run(scenario()) == (None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert "retention failed unexpectedly" in messages
    assert any(m.startswith("retention failed error=") for m in messages)


def test_the_loop_runs_again_after_each_pause_until_cancelled(tmp_path: Path) -> None:
    pauses: list[float] = []
    runs: list[int] = []

    class CountingStore(SQLiteStore):
        async def cleanup(self, retention_days: int, now_ms: int) -> int:
            runs.append(now_ms)
            if len(runs) == 2:
                raise RuntimeError("one bad run must not end the loop")
            return await super().cleanup(retention_days, now_ms)

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 4:
            raise asyncio.CancelledError

    async def scenario() -> None:
        store = CountingStore(tmp_path / "c.db")
        loop = Retention(
            store, retention_days=1, interval_s=0.0, now_ms=lambda: NOW_MS, sleep=sleep
        )
        with pytest.raises(asyncio.CancelledError):
            await loop.run_forever()
        await store.close()

    asyncio.run(scenario())
    assert len(runs) == 4
    # A zero interval still pauses MIN_PAUSE_S, so a failing run cannot spin.
    assert pauses == [retention.MIN_PAUSE_S] * 4


def test_the_pause_is_the_interval_when_longer_than_the_minimum(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    try:
        loop = Retention(store, retention_days=1, interval_s=3600.0, now_ms=lambda: NOW_MS)
        assert loop.pause_s == 3600.0
    finally:
        asyncio.run(store.close())
