"""The SQLite collector store's day tables (real files, the real writer thread).

The day tables hold the hourly rollups, histograms and install sets summed per
UTC day; stats read whole days from them and the hours at the edges of a range
from the hourly tables. Reading the hourly tables alone is the reference.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry_core.collector.aggregation import DAY_MS, build_stats
from telemetry_core.collector.sqlite_store import SQLiteStore, read_stats_file
from telemetry_core.collector.store import HOUR_MS, StatsQuery
from telemetry_core.collector.store_sql import SQLITE, Fetch, Span, read_stats_data
from telemetry_core.schema import Event
from tests.day_tables import (
    DAY_TABLES,
    T0,
    batches_with_duplicates,
    day_tables,
    days_from_hours,
    random_queries,
    spread_events,
    stats_with_and_without_days,
)


async def _ingest(path: Path, batches: list[list[Event]]) -> None:
    store = SQLiteStore(path, synchronous="OFF")  # durability is not under test here
    half = len(batches) // 2
    try:
        for batch in batches[:half]:  # one transaction each: day rows grow across them
            await store.ingest(batch, T0)
        await asyncio.gather(*(store.ingest(b, T0) for b in batches[half:]))
    finally:
        await store.close()


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[Path, list[Event]]]:
    rng = random.Random(11)
    events = spread_events(rng, 400)
    path = tmp_path / "c.db"
    asyncio.run(_ingest(path, batches_with_duplicates(rng, events)))
    yield path, events


def _rows(path: Path) -> Any:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return rows


def test_day_tables_agree_with_the_hourly_tables_after_ingest(
    filled: tuple[Path, list[Event]],
) -> None:
    path, events = filled
    found = day_tables(_rows(path))
    assert found == days_from_hours(_rows(path))
    assert sum(row[3] for row in found["day_rollups"]) == len(events)
    assert any(row[7] is not None for row in found["day_rollups"])  # percentiles are kept


def test_ranges_with_partial_edge_days_read_as_from_the_hourly_tables(
    filled: tuple[Path, list[Event]],
) -> None:
    path, _ = filled
    conn = sqlite3.connect(path)
    try:
        fetch: Fetch = lambda sql, args: conn.execute(sql, args).fetchall()  # noqa: E731
        for query in random_queries(random.Random(5), 120):
            with_days, hourly = stats_with_and_without_days(fetch, query, SQLITE)
            assert with_days == hourly, query
    finally:
        conn.close()


def test_a_range_with_partial_edge_days_counts_only_its_hours(
    filled: tuple[Path, list[Event]],
) -> None:
    """From 10:00 on the first day to 05:30 on the fourth: the first and the last
    series of each key count the events of those hours only, the days between
    count whole days, and every event in the range is counted once."""
    path, events = filled
    query = StatsQuery(
        from_ms=T0 + 10 * HOUR_MS, to_ms=T0 + 3 * DAY_MS + 5 * HOUR_MS + 1, bucket="day"
    )
    span = Span.of(query)
    assert span.days == ((T0 + DAY_MS, T0 + 3 * DAY_MS),)
    assert span.hours == (
        (T0 + 10 * HOUR_MS, T0 + DAY_MS),
        (T0 + 3 * DAY_MS, T0 + 3 * DAY_MS + 6 * HOUR_MS),
    )
    stats = read_stats_file(path, query)
    inside = [e for e in events if T0 + 10 * HOUR_MS <= e.timestamp < T0 + 3 * DAY_MS + 6 * HOUR_MS]
    assert stats["totals"]["count"] == len(inside)
    assert stats["totals"]["installs"] == len({(e.app, e.install_id) for e in inside})
    for day in range(4):
        start = T0 + day * DAY_MS
        expected = sum(1 for e in inside if start <= e.timestamp < start + DAY_MS)
        got = sum(s["count"] for s in stats["series"] if s["bucket_start"] == start)
        assert got == expected > 0


def test_an_earlier_collectors_file_is_backfilled_once_when_opened(
    filled: tuple[Path, list[Event]],
) -> None:
    """A file without day tables (as an earlier collector left it) is read from
    its hourly tables, and gets day tables equal to those ingest keeps when a
    collector opens it; later batches add to them."""
    path, _ = filled
    kept = day_tables(_rows(path))
    query = StatsQuery(from_ms=T0 + 3 * HOUR_MS, to_ms=T0 + 4 * DAY_MS, bucket="day")
    before = read_stats_file(path, query)
    conn = sqlite3.connect(path)
    for table in DAY_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    assert read_stats_file(path, query) == before  # read-only, from the hourly tables
    rng = random.Random(3)
    more = spread_events(rng, 50)
    asyncio.run(_ingest(path, [more]))
    assert day_tables(_rows(path)) == days_from_hours(_rows(path))
    assert {r[:3] for r in kept["day_rollups"]} <= {
        r[:3] for r in day_tables(_rows(path))["day_rollups"]
    }


def test_retention_keeps_day_rows_with_the_hourly_rows(filled: tuple[Path, list[Event]]) -> None:
    """Retention deletes raw events only: the day rows stay, as the hourly rows
    do, and the stats of the range do not change."""
    path, events = filled
    query = StatsQuery(bucket="day")
    before = read_stats_file(path, query)
    days_before = day_tables(_rows(path))

    async def retention() -> int:
        store = SQLiteStore(path)
        try:
            return await store.cleanup(retention_days=1, now_ms=T0 + 400 * DAY_MS)
        finally:
            await store.close()

    assert asyncio.run(retention()) == len(events)
    assert _rows(path)("SELECT COUNT(*) FROM events") == [(0,)]
    assert day_tables(_rows(path)) == days_before
    assert read_stats_file(path, query) == before
    assert before["totals"]["count"] == len(events)


def test_stats_over_whole_days_equal_the_hourly_reference_document(
    filled: tuple[Path, list[Event]],
) -> None:
    path, _ = filled
    query = StatsQuery(from_ms=T0, to_ms=T0 + 5 * DAY_MS, bucket="day")
    conn = sqlite3.connect(path)
    try:
        data = read_stats_data(lambda sql, args: conn.execute(sql, args).fetchall(), query, SQLITE)
        hourly = read_stats_data(
            lambda sql, args: conn.execute(sql, args).fetchall(), query, SQLITE, day_tables=False
        )
    finally:
        conn.close()
    assert data.series_percentiles  # read from the day tables
    assert not hourly.series_percentiles
    assert build_stats(query, data) == build_stats(query, hourly)
