"""The PostgreSQL store's layout for 100 million events (real PostgreSQL).

Raw events live in daily partitions by reception time, dedup in ``event_ids``
keyed ``(app, id)``; retention drops whole partitions; a database written by a
collector from before partitioning is migrated forward when a collector opens it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import msgspec.structs
import psycopg
import pytest

from telemetry_core.collector.postgres_store import PARTITIONS_AHEAD_DAYS, PostgresStore
from telemetry_core.collector.store import StatsQuery
from telemetry_core.schema import Event, new_event_id

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url, pool_min=1, pool_max=4)
    yield opened
    asyncio.run(opened.close())


def _events(rng: random.Random, n: int, app: str = "ax") -> list[Event]:
    out = []
    for _ in range(n):
        ts = T0 + rng.randrange(48 * HOUR)
        out.append(
            Event(
                id=new_event_id(ts),
                type=rng.choice(["cmd.run", "error"]),
                timestamp=ts,
                install_id=f"install-{rng.randrange(5)}",
                app=app,
                duration_ms=rng.choice([None, rng.uniform(0.1, 900.0)]),
                success=rng.choice([None, True, False]),
                properties={"n": rng.randrange(100)},
            )
        )
    return out


def _partitions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_events_are_stored_in_daily_partitions_created_ahead(
    store: PostgresStore, pg_url: str
) -> None:
    ahead = _partitions(pg_url)
    assert len(ahead) == PARTITIONS_AHEAD_DAYS  # today and the days after it
    asyncio.run(store.ingest(_events(random.Random(1), 5), T0 + 2 * DAY + 5))
    asyncio.run(store.ingest(_events(random.Random(2), 5), T0 + 3 * DAY))
    assert {"events_20260103", "events_20260104"} <= set(_partitions(pg_url))
    assert _count(pg_url, "SELECT count(*) FROM events_20260103") == 5
    assert _count(pg_url, "SELECT count(*) FROM events_20260104") == 5


def test_a_resent_event_is_a_duplicate_on_another_day_and_an_id_is_scoped_by_app(
    store: PostgresStore, pg_url: str
) -> None:
    events = _events(random.Random(3), 10)
    other_app = [msgspec.structs.replace(e, app="bx") for e in events[:2]]

    async def scenario() -> tuple[int, int, int, dict[str, object]]:
        first = await store.ingest(events, T0 + DAY)
        again = await store.ingest(events[:4], T0 + 9 * DAY)  # another partition
        scoped = await store.ingest(other_app, T0 + 9 * DAY)
        return first.accepted, again.duplicates, scoped.accepted, await store.stats(StatsQuery())

    accepted, duplicates, scoped, stats = asyncio.run(scenario())
    assert (accepted, duplicates, scoped) == (10, 4, 2)
    assert _count(pg_url, "SELECT count(*) FROM events") == 12
    totals = stats["totals"]
    assert isinstance(totals, dict)
    assert totals["count"] == 12 and totals["duplicates"] == 4


def test_retention_drops_whole_partitions_and_forgets_their_ids(
    store: PostgresStore, pg_url: str
) -> None:
    old, kept = _events(random.Random(4), 7), _events(random.Random(5), 3)

    async def scenario() -> tuple[int, int]:
        await store.ingest(old, T0 + 5 * HOUR)
        await store.ingest(kept, T0 + 6 * DAY + HOUR)
        deleted = await store.cleanup(retention_days=5, now_ms=T0 + 6 * DAY + 2 * HOUR)
        resent = await store.ingest(old[:2] + kept[:1], T0 + 6 * DAY + 3 * HOUR)
        return deleted, resent.accepted

    deleted, accepted_again = asyncio.run(scenario())
    assert deleted == 7
    assert "events_20260101" not in _partitions(pg_url)
    # The cut-off day (Jan 2) ended before now - 5 days; Jan 7 holds the kept events.
    assert _count(pg_url, "SELECT count(*) FROM events_20260107") == 3 + 2
    assert _count(pg_url, "SELECT count(*) FROM event_ids") == 3 + 2
    # Past retention an id is new again (the documented dedup window); a kept one is not.
    assert accepted_again == 2


def test_a_partition_dropped_by_another_process_is_recreated_on_ingest(
    store: PostgresStore, pg_url: str
) -> None:
    asyncio.run(store.ingest(_events(random.Random(6), 2), T0))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE events_20260101")
    outcome = asyncio.run(store.ingest(_events(random.Random(7), 3), T0 + HOUR))
    assert outcome.accepted == 3
    assert _count(pg_url, "SELECT count(*) FROM events_20260101") == 3


_LEGACY_SCHEMA = """
CREATE TABLE events (
    id UUID PRIMARY KEY, app TEXT NOT NULL, type TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL, install_id TEXT NOT NULL,
    session_id TEXT, app_version TEXT, duration_ms DOUBLE PRECISION, success BOOLEAN,
    properties JSONB NOT NULL
);
CREATE INDEX events_received ON events (received_ms);
"""


def test_an_unpartitioned_events_table_is_migrated_forward_once(pg_url: str) -> None:
    """A database of a collector from before partitioning: rows move into the
    partitions and ``event_ids``, and their ids stay duplicates."""
    events = _events(random.Random(8), 6)
    with psycopg.connect(pg_url) as conn:
        conn.execute(_LEGACY_SCHEMA)
        for i, e in enumerate(events):
            conn.execute(
                "INSERT INTO events (id, app, type, timestamp_ms, received_ms, install_id, "
                "properties) VALUES (%s, %s, %s, %s, %s, %s, '{}')",
                (e.id, e.app, e.type, e.timestamp, T0 + i * DAY, e.install_id),
            )
    stores = [PostgresStore(pg_url, pool_min=1, pool_max=2) for _ in range(2)]
    try:
        outcome = asyncio.run(stores[1].ingest(events, T0 + 8 * DAY))
    finally:
        for s in stores:
            asyncio.run(s.close())
    assert outcome.duplicates == 6 and outcome.accepted == 0
    assert _count(pg_url, "SELECT count(*) FROM events") == 6
    assert _count(pg_url, "SELECT count(*) FROM events_20260106") == 1
    assert (
        _count(pg_url, "SELECT count(*) FROM pg_class WHERE relname = 'events_unpartitioned'") == 0
    )
    assert _count(pg_url, "SELECT count(*) FROM pg_partitioned_table") == 1
