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
import sys
import time
from pathlib import Path

import pytest

from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.sqlite_writer import SQLiteWriter
from telemetry_core.collector.sqlite_writer_process import WriterFailed, WriterProcess
from telemetry_core.collector.store import StatsQuery
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event
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
        with pytest.raises(StorageError, match="writer process ended"):
            await _ingest_killing_the_writer(store, big)
        stored_after_crash = _count(tmp_path / "c.db")
        accepted = (await asyncio.wait_for(store.ingest(big, T0), 60)).accepted
        await store.close()
        return stored_after_crash, accepted

    stored_after_crash, accepted = asyncio.run(run())
    assert stored_after_crash == 0
    assert accepted == len(big)
    assert _count(tmp_path / "c.db") == len(big)


async def _ingest_killing_the_writer(store: SQLiteStore, events: list[Event]) -> None:
    """Ingest ``events`` and SIGKILL the writer process once it is working on them
    (its CPU time moves); return what the ingest returns or raise what it raises."""
    pid = _writer_pid(store)
    before = _cpu_ticks(pid)
    task = asyncio.ensure_future(store.ingest(events, T0))
    deadline = time.monotonic() + 30
    while _cpu_ticks(pid) < before + 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(task, 60)


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


def test_counters_of_a_commit_killed_midway_are_written_once(tmp_path: Path) -> None:
    """Outcome counters ride in the batch's transaction; when the process dies before
    that commit, they are kept for the next one: neither lost nor doubled."""
    big = make_events(60_000)

    async def run() -> dict[str, object]:
        store = SQLiteStore(tmp_path / "c.db", writer_process=True, max_pending_events=100_000)
        await store.record_outcomes(rejected={"pii": 2}, throttled=3, received_ms=T0)
        with pytest.raises(StorageError):
            await _ingest_killing_the_writer(store, big)
        await asyncio.wait_for(store.ingest(make_events(2, ts=T0 + 7), T0), 30)
        stats = await store.stats(StatsQuery())
        await store.close()
        return stats

    totals = asyncio.run(run())["totals"]
    assert isinstance(totals, dict)
    assert totals["rejected_by_code"] == {"pii": 2}
    assert totals["throttled"] == 3
    assert totals["count"] == 2


def test_a_commit_is_known_to_have_happened_after_its_process_died(tmp_path: Path) -> None:
    """Each commit records its number in its own transaction: after a death the
    parent reads it back to tell a lost answer from a lost commit."""
    writer = SQLiteWriter(tmp_path / "c.db")
    writer.commit([(make_events(1), T0)], {}, sequence=41)
    writer.close()
    process = WriterProcess(tmp_path / "c.db")
    try:
        assert process._committed(41)
        assert not process._committed(42)
    finally:
        process.close()


def test_a_hung_writer_process_is_killed_after_its_wait_and_replaced(tmp_path: Path) -> None:
    process = WriterProcess(tmp_path / "c.db", call_wait=1.0)
    try:
        old = process.pid
        assert old is not None
        os.kill(old, signal.SIGSTOP)
        with pytest.raises(WriterFailed, match="did not answer within 1 s") as failed:
            process.commit([(make_events(3), T0)], {})
        assert not failed.value.committed
        assert not _alive(old)
        assert process.commit([(make_events(3, ts=T0 + 5), T0)], {}) == [(True, True, True)]
        assert process.pid not in (None, old)
    finally:
        process.close()
    assert _count(tmp_path / "c.db") == 3


def test_closing_after_the_writer_process_died_leaves_nothing_open(tmp_path: Path) -> None:
    """(The suite turns a ResourceWarning or an unraisable BrokenPipeError into a failure.)"""
    process = WriterProcess(tmp_path / "c.db")
    pid = process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.close()
    process.close()
    assert process.pid is None


def test_the_collector_s_stop_signals_do_not_end_its_writer_process(tmp_path: Path) -> None:
    """Ctrl-C or a stop signal sent to the collector's process group finds the writer
    in a session of its own, and a signal sent to the writer itself is ignored: it
    ends when the collector closes its pipe, after the last commit."""
    process = WriterProcess(tmp_path / "c.db")
    try:
        pid = process.pid
        assert pid is not None
        assert os.getpgid(pid) != os.getpgid(0)
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(pid, sig)
        # The child has taken its pending signals by the time it answers a request.
        assert process.commit([(make_events(2), T0)], {}) == [(True, True)]
        assert process.pid == pid
        assert _alive(pid)
    finally:
        process.close()
    assert not _alive(pid)


def test_a_writer_process_that_cannot_start_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(StorageError, match="cannot start the writer process"):
        SQLiteStore(tmp_path / "c.db", writer_process=True)
