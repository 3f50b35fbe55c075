"""Unit tests of the SQL planning both collector stores share (a real SQLite database)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from telemetry_core.collector.aggregation import bucket_index
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import HOUR_MS, StatsQuery
from telemetry_core.collector.store_sql import (
    POSTGRES,
    SQLITE,
    Dedupe,
    plan_increments,
    read_stats_data,
)
from tests.conftest import build_event

H0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


def test_dedupe_keeps_the_first_occurrence_of_an_id_not_already_stored() -> None:
    dedupe = Dedupe(stored={"a"})
    assert dedupe.verdicts(["a", "b", "c", "b"]) == (False, True, True, False)
    # the claims of one batch hold for the next batch of the same transaction
    assert dedupe.verdicts(["c", "d"]) == (False, True)


def test_increments_are_summed_per_hour_and_sorted_by_key() -> None:
    events = [
        build_event("zeta", timestamp=H0 + 5, app="b", duration_ms=10.0, success=True),
        build_event("alpha", timestamp=H0 + HOUR_MS, app="a", success=False, install_id="i2"),
        build_event("zeta", timestamp=H0 + 7, app="b", duration_ms=10.0, success=None),
    ]
    plan = plan_increments(events)
    assert plan.rollups == [("a", "alpha", H0 + HOUR_MS, 1, 0, 1), ("b", "zeta", H0, 2, 1, 0)]
    assert plan.buckets == [("b", "zeta", H0, bucket_index(10.0), 2)]
    assert plan.installs == [
        ("a", "alpha", H0 + HOUR_MS, "i2"),
        ("b", "zeta", H0, events[0].install_id),
    ]


def test_the_dialects_differ_only_in_placeholder_and_modulo() -> None:
    statements: dict[str, list[str]] = {"sqlite": [], "postgres": []}
    for name, dialect in (("sqlite", SQLITE), ("postgres", POSTGRES)):

        def fetch(sql: str, args: object, name: str = name) -> list[tuple[int, ...]]:
            statements[name].append(sql)
            return [(0,)] if "COUNT(*)" in sql else []

        read_stats_data(fetch, StatsQuery(app="x", event_type="y", bucket="day"), dialect)
    # the whole days (rollups, buckets), the hours after the last whole day
    # (rollups, buckets, installs), the counters and the distinct installs
    assert len(statements["sqlite"]) == 7
    translated = [s.replace("%%", "%").replace("%s", "?") for s in statements["postgres"]]
    assert translated == statements["sqlite"]


def test_stats_statements_filter_by_app_type_and_range(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "c.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        await store.ingest(
            [
                build_event("cmd", timestamp=H0, app="a", duration_ms=5.0, install_id="i1"),
                build_event("cmd", timestamp=H0 + 1, app="a", install_id="i2"),
                build_event("cmd", timestamp=H0 + 2, app="b", install_id="i1"),
                build_event("other", timestamp=H0 + 3 * HOUR_MS, app="a", install_id="i1"),
            ],
            H0,
        )
        await store.close()

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    try:
        query = StatsQuery(from_ms=H0, to_ms=H0 + HOUR_MS, app="a", event_type="cmd")
        data = read_stats_data(lambda sql, args: conn.execute(sql, args).fetchall(), query, SQLITE)
    finally:
        conn.close()
    assert data.rollups == [("a", "cmd", H0, 2, 0, 0)]
    assert data.buckets == [("a", "cmd", H0, bucket_index(5.0), 1)]
    assert data.series_installs == [("a", "cmd", H0, 2)]
    assert data.total_installs == 2
    assert data.counters == {}
