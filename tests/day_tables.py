"""Checks of the collector's day tables shared by the SQLite and PostgreSQL tests.

Each takes ``rows(sql)``, which runs one statement on the store's database and
returns its rows, so the same expectations hold for both stores.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from telemetry_core.collector.aggregation import DAY_MS, build_stats, percentile_buckets
from telemetry_core.collector.store import HOUR_MS, StatsQuery
from telemetry_core.collector.store_sql import Dialect, Fetch, read_stats_data
from telemetry_core.schema import Event, new_event_id

Rows = Callable[[str], Sequence[Sequence[Any]]]

#: 2026-01-01T00:00:00Z: the events lie on the five days from here.
T0 = 1_767_225_600_000
DAYS = 5

DAY_TABLES = ("day_rollups", "day_rollup_buckets", "day_installs", "day_app_installs")


def spread_events(rng: random.Random, n: int) -> list[Event]:
    """``n`` events over :data:`DAYS` days, 2 apps, 3 types and 6 installs, some
    without a duration or an outcome."""
    events = []
    for _ in range(n):
        ts = T0 + rng.randrange(DAYS * DAY_MS)
        events.append(
            Event(
                id=new_event_id(ts),
                type=rng.choice(["cmd.run", "cmd.build", "error"]),
                timestamp=ts,
                install_id=f"install-{rng.randrange(6)}",
                app=rng.choice(["ax", "by"]),
                duration_ms=rng.choice([None, 0.0, rng.uniform(0.05, 5000.0)]),
                success=rng.choice([None, True, False]),
            )
        )
    return events


def batches_with_duplicates(rng: random.Random, events: list[Event]) -> list[list[Event]]:
    """``events`` in batches of up to 40, with a fifth of them sent a second time."""
    sends = events + rng.sample(events, len(events) // 5)
    rng.shuffle(sends)
    return [sends[i : i + 40] for i in range(0, len(sends), 40)]


def day_tables(rows: Rows) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of the four day tables."""
    return {table: {tuple(r) for r in rows(f"SELECT * FROM {table}")} for table in DAY_TABLES}


def days_from_hours(rows: Rows) -> dict[str, set[tuple[Any, ...]]]:
    """What the day tables must hold, computed here from the hourly tables."""
    counts: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for app, etype, hour, count, success, failure in rows("SELECT * FROM rollups"):
        row = counts[(app, etype, hour - hour % DAY_MS)]
        row[0] += count
        row[1] += success
        row[2] += failure
    hists: dict[tuple[str, str, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for app, etype, hour, bucket, count in rows("SELECT * FROM rollup_buckets"):
        hists[(app, etype, hour - hour % DAY_MS)][bucket] += count
    installs = {
        (app, etype, hour - hour % DAY_MS, install)
        for app, etype, hour, install in rows("SELECT * FROM installs")
    }
    per_day: dict[tuple[str, str, int], int] = defaultdict(int)
    for app, etype, day, _ in installs:
        per_day[(app, etype, day)] += 1
    return {
        "day_rollups": {
            (*key, *counts[key], per_day[key], *percentile_buckets(hists.get(key, {})))
            for key in counts
        },
        "day_rollup_buckets": {
            (*key, bucket, n) for key, hist in hists.items() for bucket, n in hist.items()
        },
        "day_installs": installs,
        "day_app_installs": {(app, day, install) for app, _, day, install in installs},
    }


def random_queries(rng: random.Random, n: int) -> list[StatsQuery]:
    """``n`` queries over the events' days: ranges with and without partial
    days at either edge (to the millisecond), some filtered, both grains."""
    queries = [StatsQuery(bucket="day"), StatsQuery(bucket="hour")]
    while len(queries) < n:
        low = T0 - DAY_MS + rng.randrange((DAYS + 1) * DAY_MS)
        if rng.random() < 0.3:
            low -= low % DAY_MS  # a range starting at midnight
        high = low + 1 + rng.randrange(4 * DAY_MS)
        if rng.random() < 0.3:
            high -= high % HOUR_MS  # ending on an hour
        queries.append(
            StatsQuery(
                from_ms=low,
                to_ms=max(low + 1, high),
                app=rng.choice([None, None, "ax", "nope"]),
                event_type=rng.choice([None, None, "cmd.run"]),
                bucket=rng.choice(["day", "hour"]),
            )
        )
    return queries


def stats_with_and_without_days(
    fetch: Fetch, query: StatsQuery, dialect: Dialect
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stats document of ``query`` read with the day tables and from the hourly tables alone."""
    with_days = build_stats(query, read_stats_data(fetch, query, dialect, day_tables=True))
    hourly = build_stats(query, read_stats_data(fetch, query, dialect, day_tables=False))
    return with_days, hourly
