"""The SQLite collector store's writer process: a real child process, killed for real.

The store's semantics in this mode are the whole of test_collector_sqlite_store.py
(every test there runs in both modes); these tests are about the process itself:
its death between batches and during one, its exit with the store, its start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.sqlite_writer_process import WriterProcess
from telemetry_core.collector.store import StatsQuery
from telemetry_core.errors import StorageError
from tests.unit.test_collector_sqlite_store import T0, make_events

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")


def _writer_pid(store: SQLiteStore) -> int:
    sql = store._sql
    assert isinstance(sql, WriterProcess)
    pid = sql.pid
    assert pid is not None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_a_writer_process_killed_between_batches_is_replaced(tmp_path: Path) -> None:
    first, second = make_events(50), make_events(30, ts=T0 + 100)

    async def run() -> tuple[int, int, int, dict[str, object]]:
        store = SQLiteStore(tmp_path / "c.db", writer_process=True)
        accepted = (await store.ingest(first, T0)).accepted
        old = _writer_pid(store)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(old) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        accepted += (await asyncio.wait_for(store.ingest(second, T0), 30)).accepted
        new = _writer_pid(store)
        stats = await store.stats(StatsQuery())
        await store.close()
        return accepted, old, new, stats

    accepted, old, new, stats = asyncio.run(run())
    assert accepted == 80
    assert new != old
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["count"] == 80
    assert _count(tmp_path / "c.db") == 80


def test_a_batch_in_flight_when_the_writer_process_dies_fails_and_its_resend_is_stored(
    tmp_path: Path,
) -> None:
    """The batch's transaction dies with the process (SQLite rolls it back); the
    request gets a retryable StorageError and the client's resend stores it once."""
    big = make_events(60_000)

    async def run() -> tuple[int, int]:
        store = SQLiteStore(tmp_path / "c.db", writer_process=True, max_pending_events=100_000)
        pid = _writer_pid(store)
        before = _cpu_ticks(pid)
        task = asyncio.ensure_future(store.ingest(big, T0))
        # Kill once the child has started working on the batch (its CPU time moves).
        deadline = time.monotonic() + 30
        while _cpu_ticks(pid) < before + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(StorageError, match="writer process ended"):
            await asyncio.wait_for(task, 60)
        stored_after_crash = _count(tmp_path / "c.db")
        accepted = (await asyncio.wait_for(store.ingest(big, T0), 60)).accepted
        await store.close()
        return stored_after_crash, accepted

    stored_after_crash, accepted = asyncio.run(run())
    assert stored_after_crash == 0
    assert accepted == len(big)
    assert _count(tmp_path / "c.db") == len(big)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_the_writer_process_ends_with_the_store(tmp_path: Path) -> None:
    async def run() -> int:
        store = SQLiteStore(tmp_path / "c.db", writer_process=True)
        await store.ingest(make_events(5), T0)
        pid = _writer_pid(store)
        assert _alive(pid)
        await store.close()
        return pid

    pid = asyncio.run(run())
    assert not _alive(pid)
    assert _count(tmp_path / "c.db") == 5


@pytest.mark.parametrize("writer_process", [False, True])
def test_a_file_that_cannot_be_opened_fails_the_start_in_both_modes(
    tmp_path: Path, writer_process: bool
) -> None:
    (tmp_path / "not-a-dir").write_text("a file where a directory should be")
    with pytest.raises(StorageError, match="cannot open collector database"):
        SQLiteStore(tmp_path / "not-a-dir" / "c.db", writer_process=writer_process)
