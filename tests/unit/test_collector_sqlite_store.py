"""Unit tests of the SQLite collector store (real files, real writer thread).

Every test runs twice: with the transactions on the writer thread and in the
writer process ``serve`` uses (``writer_process=True``). Failures injected into
this process's code (thread mode only) are in test_collector_sqlite_thread_faults.py,
the writer process's own failures in test_collector_sqlite_writer_process.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from telemetry_core.collector.sqlite_store import SQLiteStore, read_stats_file
from telemetry_core.collector.sqlite_writer import SQLiteWriter
from telemetry_core.collector.store import CollectorStore, StatsQuery, StoreOverloaded
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event, new_event_id

T0 = 1_700_000_000_000


@pytest.fixture(autouse=True, params=["thread", "process"])
def writer_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the store's transactions run, for every SQLiteStore a test builds."""
    defaults = SQLiteStore.__init__.__kwdefaults__
    assert defaults is not None and "writer_process" in defaults
    monkeypatch.setitem(defaults, "writer_process", request.param == "process")
    return str(request.param)


def make_events(n: int, *, ts: int = T0, etype: str = "cmd") -> list[Event]:
    return [
        Event(
            id=new_event_id(),
            type=etype,
            timestamp=ts + i,
            install_id=f"install-{i % 4}",
            app="demo",
            duration_ms=float(i + 1),
            success=i % 3 != 0,
        )
        for i in range(n)
    ]


def test_is_a_collector_store(tmp_path: Path) -> None:
    async def run() -> None:
        store = SQLiteStore(tmp_path / "c.db")
        assert isinstance(store, CollectorStore)
        await store.close()

    asyncio.run(run())


def test_concurrent_batches_with_overlap_count_once(tmp_path: Path) -> None:
    events = make_events(200)
    commits: list[int] = []

    async def run() -> tuple[list[int], dict[str, object]]:
        store = SQLiteStore(tmp_path / "c.db")
        store.add_commit_observer(lambda _s, n: commits.append(n))
        chunks = [events[i : i + 50] for i in range(0, 200, 25)]  # every event sent twice-ish
        outcomes = await asyncio.gather(*(store.ingest(c, T0) for c in chunks))
        stats = await store.stats(StatsQuery())
        assert store.queue_depth == 0
        await store.close()
        return [o.accepted for o in outcomes], stats

    accepted, stats = asyncio.run(run())
    assert sum(accepted) == 200
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["count"] == 200
    assert totals["duplicates"] == sum(len(events[i : i + 50]) for i in range(0, 200, 25)) - 200
    assert totals["installs"] == 4
    assert sum(commits) == sum(len(events[i : i + 50]) for i in range(0, 200, 25))
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (200,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_duplicate_inside_one_batch_counts_once(tmp_path: Path) -> None:
    (event,) = make_events(1)

    async def run() -> tuple[int, int]:
        store = SQLiteStore(tmp_path / "c.db")
        outcome = await store.ingest([event, event, event], T0)
        await store.close()
        return outcome.accepted, outcome.duplicates

    assert asyncio.run(run()) == (1, 2)


def test_restart_keeps_exactly_once(tmp_path: Path) -> None:
    events = make_events(10)

    async def run() -> int:
        first = SQLiteStore(tmp_path / "c.db")
        await first.ingest(events, T0)
        await first.close()
        second = SQLiteStore(tmp_path / "c.db")
        outcome = await second.ingest(events, T0)
        await second.close()
        return outcome.duplicates

    assert asyncio.run(run()) == 10
    stats = read_stats_file(tmp_path / "c.db", StatsQuery())
    assert stats["totals"]["count"] == 10


def test_late_event_lands_in_its_own_hour(tmp_path: Path) -> None:
    late = make_events(1, ts=T0 - 5 * 3_600_000)

    async def run() -> dict[str, object]:
        store = SQLiteStore(tmp_path / "c.db")
        await store.ingest(make_events(1), T0)
        await store.ingest(late, T0 + 60_000)
        stats = await store.stats(StatsQuery())
        await store.close()
        return stats

    stats = asyncio.run(run())
    series = stats["series"]
    assert isinstance(series, list)
    starts = [s["bucket_start"] for s in series]
    assert starts == sorted(starts) and len(starts) == 2
    assert starts[0] == (T0 - 5 * 3_600_000) // 3_600_000 * 3_600_000


def test_overloaded_store_refuses(tmp_path: Path) -> None:
    async def run() -> None:
        store = SQLiteStore(tmp_path / "c.db", max_pending_events=10)
        # another connection holds the write lock, so the writer cannot commit yet
        blocker = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        first = asyncio.ensure_future(store.ingest(make_events(10), T0))
        await asyncio.sleep(0)
        assert store.queue_depth == 10
        with pytest.raises(StoreOverloaded):
            await store.ingest(make_events(5), T0)
        blocker.execute("COMMIT")
        blocker.close()
        assert (await first).accepted == 10
        await store.close()

    asyncio.run(run())


def test_close_drains_pending_batches(tmp_path: Path) -> None:
    async def run() -> list[int]:
        store = SQLiteStore(tmp_path / "c.db")
        tasks = [asyncio.ensure_future(store.ingest(make_events(20), T0)) for _ in range(5)]
        await asyncio.sleep(0)
        await store.close()
        return [(await t).accepted for t in tasks]

    assert asyncio.run(run()) == [20] * 5
    assert read_stats_file(tmp_path / "c.db", StatsQuery())["totals"]["count"] == 100


def test_outcomes_and_cleanup(tmp_path: Path) -> None:
    async def run() -> tuple[int, dict[str, object]]:
        store = SQLiteStore(tmp_path / "c.db")
        await store.ingest(make_events(3), T0)
        await store.record_outcomes(rejected={"pii": 2}, throttled=7, received_ms=T0)
        deleted = await store.cleanup(1, T0 + 2 * 86_400_000)
        stats = await store.stats(StatsQuery())
        await store.close()
        return deleted, stats

    deleted, stats = asyncio.run(run())
    assert deleted == 3
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["count"] == 3  # rollups survive retention
    assert totals["rejected_by_code"] == {"pii": 2}
    assert totals["throttled"] == 7


def test_filters(tmp_path: Path) -> None:
    async def run() -> dict[str, object]:
        store = SQLiteStore(tmp_path / "c.db")
        await store.ingest(make_events(3) + make_events(2, etype="other"), T0)
        stats = await store.stats(StatsQuery(event_type="other", app="demo"))
        await store.close()
        return stats

    stats = asyncio.run(run())
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["by_type"] == {"other": 2}


def test_closed_store_and_missing_file(tmp_path: Path) -> None:
    async def run() -> None:
        store = SQLiteStore(tmp_path / "c.db")
        await store.close()
        with pytest.raises(StorageError):
            await store.ingest(make_events(1), T0)

    asyncio.run(run())
    with pytest.raises(StorageError):
        read_stats_file(tmp_path / "missing.db", StatsQuery())


def test_stats_read_works_for_a_path_with_uri_characters(tmp_path: Path) -> None:
    """Review finding 7: '#', '?' and '%' in the path stay part of it (no stray file)."""
    path = tmp_path / "we?ird#1%20.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        try:
            await store.ingest(make_events(3), T0)
        finally:
            await store.close()

    asyncio.run(fill())
    stats = read_stats_file(path, StatsQuery())
    assert stats["totals"]["count"] == 3
    stray = [p.name for p in tmp_path.iterdir() if not p.name.startswith(path.name)]
    assert stray == []  # the unquoted URI created "we" (cut at '?')


def test_retention_deletes_in_chunks_and_lets_batches_commit_between(tmp_path: Path) -> None:
    """Review finding 11: retention deletes ``cleanup_chunk`` rows per transaction and
    re-queues itself behind waiting batches, so a batch handed in while a long
    deletion runs commits before the deletion ends."""
    day = 86_400_000
    now = T0 + 100 * day

    async def run() -> tuple[int, list[str], int]:
        store = SQLiteStore(tmp_path / "c.db", synchronous="OFF", cleanup_chunk=10)
        done: list[str] = []
        try:
            for i in range(20):
                await store.ingest(make_events(100, ts=T0 + i * 1000), T0)
            await store.ingest(make_events(7), now)  # recent: kept

            async def cleanup() -> int:
                deleted = await store.cleanup(30, now)
                done.append("cleanup")
                return deleted

            async def ingest() -> None:
                await store.ingest(make_events(1), now)
                done.append("ingest")

            deleted, _ = await asyncio.gather(cleanup(), ingest())
            count = (await store.stats(StatsQuery()))["totals"]["count"]
        finally:
            await store.close()
        with sqlite3.connect(tmp_path / "c.db") as conn:
            (left,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        conn.close()
        assert count == 2008  # rollups are kept
        return deleted, done, left

    deleted, done, left = asyncio.run(run())
    assert deleted == 2000
    assert left == 8
    assert done == ["ingest", "cleanup"]


def test_one_group_first_occurrence_wins_across_batches_and_case(tmp_path: Path) -> None:
    """Within one transaction the first occurrence of an id (compared lowercased) is
    the new one; later ones, in the same or a later batch of the group, are duplicates."""
    a, b, c = make_events(3)
    b_upper = Event(**{**{f: getattr(b, f) for f in b.__struct_fields__}, "id": b.id.upper()})

    async def run() -> list[tuple[bool, ...]]:
        store = SQLiteStore(tmp_path / "c.db")
        await store.ingest([c], T0)  # already stored before the group
        await store.close()
        writer = SQLiteWriter(tmp_path / "c.db")
        counters: dict[tuple[int, str], int] = {}
        writer._conn.execute("BEGIN IMMEDIATE")
        outcomes = writer.write_group([([a, b, a], T0), ([b_upper, c], T0)], counters)
        writer._conn.execute("COMMIT")
        writer.close()
        assert counters == {(T0 - T0 % 3_600_000, "duplicate"): 3}
        return outcomes

    assert asyncio.run(run()) == [(True, True, False), (False, False)]
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (3,)
        assert conn.execute("SELECT SUM(count) FROM rollups").fetchone() == (3,)
    conn.close()


def test_a_batch_larger_than_one_insert_is_stored_whole(tmp_path: Path) -> None:
    """250 new events take three multi-row INSERTs (100, 100, 50); none is lost."""
    events = make_events(250)

    async def run() -> int:
        store = SQLiteStore(tmp_path / "c.db")
        outcome = await store.ingest(events + events[:3], T0)
        await store.close()
        return outcome.accepted

    assert asyncio.run(run()) == 250
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (250,)
        assert conn.execute("SELECT SUM(count) FROM rollups").fetchone() == (250,)
    conn.close()


def test_a_non_sqlite_error_fails_the_group_and_keeps_the_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A NaN duration passes the store (the HTTP layer refuses it) and fails the
    # histogram bucketing: an internal error, on the thread or in the process.
    broken = Event(
        id=new_event_id(), type="cmd", timestamp=T0, install_id="i", app="demo",
        duration_ms=float("nan"),
    )  # fmt: skip
    first, second = [*make_events(3), broken], make_events(2, ts=T0 + 10)

    async def run() -> tuple[int, dict[str, object]]:
        store = SQLiteStore(tmp_path / "c.db")
        with pytest.raises(StorageError, match="internal error"):
            await asyncio.wait_for(store.ingest(first, T0), 10)
        assert store.queue_depth == 0
        outcome = await asyncio.wait_for(store.ingest(second, T0), 10)
        stats = await store.stats(StatsQuery())
        await store.close()
        return outcome.accepted, stats

    with caplog.at_level(logging.ERROR, logger="telemetry_core.collector"):
        accepted, stats = asyncio.run(run())
    assert accepted == 2
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["count"] == 2  # the failed group was rolled back
    assert any("writer failed" in r.getMessage() for r in caplog.records)


def test_a_failing_commit_observer_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_seconds: float, _events: int) -> None:
        raise ValueError("observer bug")

    async def run() -> None:
        store = SQLiteStore(tmp_path / "c.db")
        store.add_commit_observer(broken)
        await store.ingest(make_events(1), T0)
        await store.ingest(make_events(1, ts=T0 + 5), T0)
        await store.close()

    with caplog.at_level(logging.ERROR, logger="telemetry_core.collector"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records].count(
        "commit observer failed (further failures are not logged)"
    ) == 1
