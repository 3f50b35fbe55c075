"""Failures injected into the SQLite writer's code, with the writer on the store's
thread (a patch in this process does not reach the writer process; the process's
own failures are in test_collector_sqlite_writer_process.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import StatsQuery
from tests.unit.test_collector_sqlite_store import T0, make_events


def _fail_once(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> tuple[threading.Event, list[int]]:
    """Make the writer's ``plan_increments`` raise ``error`` on its first call."""
    from telemetry_core.collector import sqlite_writer

    real = sqlite_writer.plan_increments
    failed = threading.Event()
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            failed.set()
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite_writer, "plan_increments", flaky)
    return failed, calls


@pytest.mark.parametrize(
    "error", [sqlite3.OperationalError("disk I/O error"), RuntimeError("boom")]
)
def test_counters_survive_a_failed_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    failed, calls = _fail_once(monkeypatch, error)

    async def run() -> dict[str, object]:
        store = SQLiteStore(tmp_path / "c.db", writer_process=False)
        await store.record_outcomes(rejected={"pii": 2}, throttled=7, received_ms=T0)
        # the wake-up commit carries only the counters and fails
        assert await asyncio.to_thread(failed.wait, 10)
        await asyncio.wait_for(store.ingest(make_events(1), T0), 10)
        stats = await store.stats(StatsQuery())
        await store.close()
        return stats

    stats = asyncio.run(run())
    assert len(calls) >= 2
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["throttled"] == 7
    assert totals["rejected_by_code"] == {"pii": 2}
