"""The PostgreSQL collector store's day tables (real PostgreSQL).

The same expectations as the SQLite store's (tests/unit/test_collector_day_tables.py),
with batches written by two collectors at once, a database of an earlier
collector migrated when a collector opens it, and retention.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import psycopg
import pytest

from telemetry_core.collector.aggregation import DAY_MS
from telemetry_core.collector.postgres_store import PostgresStore, read_stats_database
from telemetry_core.collector.store import HOUR_MS, StatsQuery
from telemetry_core.collector.store_sql import POSTGRES
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

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def _ingest_concurrently(url: str, batches: list[list[Event]]) -> None:
    """Two collectors (stores) write alternate batches from two threads each."""
    stores = [PostgresStore(url, pool_min=1, pool_max=2) for _ in range(2)]
    errors: list[BaseException] = []

    def work(store: PostgresStore, mine: list[list[Event]]) -> None:
        try:
            for batch in mine:
                store._admit(len(batch), "busy")
                store.ingest_blocking(batch, T0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[i % 2], batches[i::4])) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for store in stores:
            store.close_blocking()
    assert not errors


def _rows(url: str) -> Any:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchall()

    return rows


@pytest.fixture
def filled(pg_url: str) -> tuple[str, list[Event]]:
    rng = random.Random(21)
    events = spread_events(rng, 400)
    _ingest_concurrently(pg_url, batches_with_duplicates(rng, events))
    return pg_url, events


def test_day_tables_agree_with_the_hourly_tables_after_concurrent_ingest(
    filled: tuple[str, list[Event]],
) -> None:
    url, events = filled
    found = day_tables(_rows(url))
    assert found == days_from_hours(_rows(url))
    assert sum(row[3] for row in found["day_rollups"]) == len(events)


def test_ranges_with_partial_edge_days_read_as_from_the_hourly_tables(
    filled: tuple[str, list[Event]],
) -> None:
    url, _ = filled
    with psycopg.connect(url) as conn:

        def fetch(sql: str, args: Any) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        for query in random_queries(random.Random(6), 80):
            with_days, hourly = stats_with_and_without_days(fetch, query, POSTGRES)
            assert with_days == hourly, query


def test_a_range_with_partial_edge_days_counts_every_event_in_it_once(
    filled: tuple[str, list[Event]],
) -> None:
    url, events = filled
    low, high = T0 + 10 * HOUR_MS + 5, T0 + 3 * DAY_MS + 5 * HOUR_MS + 1
    stats = read_stats_database(url, StatsQuery(from_ms=low, to_ms=high, bucket="day"))
    inside = [e for e in events if T0 + 10 * HOUR_MS <= e.timestamp < T0 + 3 * DAY_MS + 6 * HOUR_MS]
    assert stats["totals"]["count"] == len(inside) > 0
    assert stats["totals"]["installs"] == len({(e.app, e.install_id) for e in inside})
    assert sorted({s["bucket_start"] for s in stats["series"]}) == [
        T0 + d * DAY_MS for d in range(4)
    ]


def test_a_database_of_an_earlier_collector_is_backfilled_when_opened(
    filled: tuple[str, list[Event]],
) -> None:
    """Without day tables the database is read from its hourly tables (read-only
    reader); the first collector to open it fills them from the hourly tables,
    equal to what ingest keeps, and later batches add to them."""
    url, _ = filled
    query = StatsQuery(from_ms=T0 + 7 * HOUR_MS, to_ms=T0 + 4 * DAY_MS + 1, bucket="day")
    before = read_stats_database(url, query)
    with psycopg.connect(url) as conn:
        for table in DAY_TABLES:
            conn.execute(f"DROP TABLE {table}")
    assert read_stats_database(url, query) == before
    more = spread_events(random.Random(4), 60)
    _ingest_concurrently(url, [more[:30], more[30:]])
    assert day_tables(_rows(url)) == days_from_hours(_rows(url))
    assert read_stats_database(url, StatsQuery(bucket="day"))["totals"]["count"] == 460


def test_retention_keeps_day_rows_with_the_hourly_rows(
    filled: tuple[str, list[Event]],
) -> None:
    url, events = filled
    query = StatsQuery(bucket="day")
    before = read_stats_database(url, query)
    days_before = day_tables(_rows(url))
    store = PostgresStore(url, pool_min=1, pool_max=2)
    try:
        deleted = asyncio.run(store.cleanup(retention_days=1, now_ms=T0 + 400 * DAY_MS))
    finally:
        store.close_blocking()
    assert deleted == len(events)
    assert _rows(url)("SELECT count(*) FROM events") == [(0,)]
    assert day_tables(_rows(url)) == days_before
    assert read_stats_database(url, query) == before
