"""PostgreSQL collector store against a real server (one fresh database per test).

Skipped when PostgreSQL at 127.0.0.1:5432 is unreachable, except under
``CI=true`` where that is a failure (see :mod:`tests.integration.pg`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest
import trustme

from telemetry_core.collector.postgres_store import PostgresStore
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import (
    CollectorStore,
    IngestOutcome,
    StatsQuery,
    StoreOverloaded,
)
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event, SubmitRequest, new_event_id
from tests.integration.collector_process import CollectorProcess
from tests.integration.pg import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RECEIVED = T0 + 3 * DAY


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    """A PostgresStore on the fresh database, closed after the test."""
    opened = PostgresStore(pg_url, pool_min=1, pool_max=4)
    yield opened
    asyncio.run(opened.close())


def _events(rng: random.Random, n: int) -> list[Event]:
    """``n`` distinct events over three apps, four types, 60 hours and 12 installs."""
    events = []
    for _ in range(n):
        ts = T0 + rng.randrange(60 * HOUR)
        events.append(
            Event(
                id=new_event_id(ts),
                type=rng.choice(["cmd.run", "cmd.build", "error", "startup"]),
                timestamp=ts,
                install_id=f"install-{rng.randrange(12)}",
                app=rng.choice(["ax", "bx", "cx"]),
                app_version="1.2.3",
                session_id=rng.choice([None, "s1", "s2"]),
                duration_ms=rng.choice([None, 0.0, rng.uniform(0.1, 5000.0)]),
                success=rng.choice([None, True, True, False]),
                properties={"n": rng.randrange(100), "ok": rng.random() < 0.5},
            )
        )
    return events


def _with_duplicates(rng: random.Random, events: list[Event], batches: int) -> list[list[Event]]:
    """Split ``events`` into batches, resending about a third of them (also within a batch)."""
    sends = list(events) + rng.sample(events, len(events) // 3)
    rng.shuffle(sends)
    size = max(1, len(sends) // batches)
    out = [sends[i : i + size] for i in range(0, len(sends), size)]
    out[0].append(out[0][0])  # a repeat inside one batch
    return out


def _count_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_store_implements_the_interface(store: PostgresStore) -> None:
    assert isinstance(store, CollectorStore)
    assert store.queue_depth == 0


def test_ingest_exactly_once_and_reports_duplicates(store: PostgresStore, pg_url: str) -> None:
    rng = random.Random(1)
    events = _events(rng, 20)

    async def scenario() -> tuple[IngestOutcome, IngestOutcome, dict]:
        first = await store.ingest([*events, events[3], events[0]], RECEIVED)
        # Another spelling of the same UUID is the same event.
        upper = [Event(**{**_fields(events[5]), "id": events[5].id.upper()})]
        second = await store.ingest(events[:10] + upper, RECEIVED + HOUR)
        return first, second, await store.stats(StatsQuery())

    first, second, stats = asyncio.run(scenario())
    assert first.inserted == (True,) * 20 + (False, False)
    assert (first.accepted, first.duplicates) == (20, 2)
    assert second.inserted == (False,) * 11
    assert stats["totals"]["count"] == 20
    assert stats["totals"]["duplicates"] == 13
    assert _count_rows(pg_url, "events") == 20


def _fields(event: Event) -> dict:
    return {f: getattr(event, f) for f in event.__struct_fields__}


def test_concurrent_duplicate_batches_from_two_stores_count_once(pg_url: str) -> None:
    """Eight threads on two stores (two collectors' worth of pools) send overlapping batches."""
    rng = random.Random(7)
    events = _events(rng, 400)
    batches = [b for _ in range(3) for b in _with_duplicates(rng, events, 6)]
    stores = [PostgresStore(pg_url, pool_min=1, pool_max=4) for _ in range(2)]
    outcomes: list[IngestOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8, timeout=30)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for batch in batches[index::8]:
                outcome = asyncio.run(stores[index % 2].ingest(batch, RECEIVED))
                with lock:
                    outcomes.append(outcome)
        except BaseException as exc:  # reported below, with the test's own assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    try:
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        sent = sum(len(b) for b in batches)
        assert sum(o.accepted for o in outcomes) == len(events)
        assert sum(o.duplicates for o in outcomes) == sent - len(events)
        stats = asyncio.run(stores[0].stats(StatsQuery()))
        assert stats["totals"]["count"] == len(events)
        assert stats["totals"]["duplicates"] == sent - len(events)
        expected = _exact_totals(events)
        assert stats["totals"]["by_type"] == expected["by_type"]
        assert stats["totals"]["success"] == expected["success"]
        assert stats["totals"]["failure"] == expected["failure"]
        assert stats["totals"]["installs"] == expected["installs"]
    finally:
        for opened in stores:
            asyncio.run(opened.close())


def _exact_totals(events: list[Event]) -> dict:
    by_type: dict[str, int] = {}
    for e in events:
        by_type[e.type] = by_type.get(e.type, 0) + 1
    return {
        "by_type": dict(sorted(by_type.items())),
        "success": sum(e.success is True for e in events),
        "failure": sum(e.success is False for e in events),
        "installs": len({(e.app, e.install_id) for e in events}),
    }


@pytest.mark.parametrize(
    "query",
    [
        StatsQuery(),
        StatsQuery(bucket="day"),
        StatsQuery(app="bx"),
        StatsQuery(event_type="error", bucket="day"),
        StatsQuery(from_ms=T0 + 5 * HOUR + 17, to_ms=T0 + 30 * HOUR, app="ax"),
    ],
    ids=["all-hour", "all-day", "app", "type-day", "range-app"],
)
def test_same_stats_as_the_sqlite_store(pg_url: str, tmp_path: Path, query: StatsQuery) -> None:
    rng = random.Random(42)
    events = _events(rng, 300)
    batches = _with_duplicates(rng, events, 7)

    async def fill(target: CollectorStore) -> dict:
        for i, batch in enumerate(batches):
            await target.ingest(batch, RECEIVED + i * HOUR)
        await target.record_outcomes(
            rejected={"pii": 2, "invalid_type": 1}, throttled=5, received_ms=RECEIVED
        )
        # Counters may be buffered until the next transaction (store.py): resend a
        # batch (all duplicates now) so both stores have committed them.
        await target.ingest(batches[0], RECEIVED)
        try:
            return await target.stats(query)
        finally:
            await target.close()

    from_sqlite = asyncio.run(fill(SQLiteStore(tmp_path / "collector.db")))
    from_postgres = asyncio.run(fill(PostgresStore(pg_url, pool_min=1, pool_max=2)))
    assert from_postgres == from_sqlite
    assert from_postgres["series"], "the query should select some rollups"


def test_outcome_counters_and_commit_observer(store: PostgresStore) -> None:
    seen: list[tuple[float, int]] = []
    store.add_commit_observer(lambda seconds, n: seen.append((seconds, n)))
    events = _events(random.Random(3), 5)

    async def scenario() -> dict:
        await store.record_outcomes(rejected={"pii": 3}, throttled=0, received_ms=RECEIVED)
        await store.record_outcomes(
            rejected={"pii": 1, "invalid_id": 0}, throttled=4, received_ms=RECEIVED + DAY
        )
        await store.ingest(events, RECEIVED)
        return await store.stats(StatsQuery())

    stats = asyncio.run(scenario())
    assert stats["totals"]["rejected_by_code"] == {"pii": 4}
    assert stats["totals"]["rejected"] == 4
    assert stats["totals"]["throttled"] == 4
    assert [n for _, n in seen] == [5]
    assert all(seconds >= 0 for seconds, _ in seen)
    # Counters are filtered by the hour of reception.
    later = asyncio.run(store.stats(StatsQuery(from_ms=RECEIVED + HOUR)))
    assert later["totals"]["throttled"] == 4
    assert later["totals"]["rejected_by_code"] == {"pii": 1}


def test_cleanup_deletes_old_raw_events_and_keeps_rollups(
    store: PostgresStore, pg_url: str
) -> None:
    events = _events(random.Random(5), 30)

    async def scenario() -> tuple[int, dict]:
        await store.ingest(events[:10], RECEIVED)
        await store.ingest(events[10:], RECEIVED + 10 * DAY)
        deleted = await store.cleanup(retention_days=5, now_ms=RECEIVED + 12 * DAY)
        return deleted, await store.stats(StatsQuery())

    deleted, stats = asyncio.run(scenario())
    assert deleted == 10
    assert _count_rows(pg_url, "events") == 20
    assert stats["totals"]["count"] == 30
    # A resent old event is new again for the raw table: retention bounds dedup,
    # which the client's much shorter retry horizon makes harmless.
    assert asyncio.run(store.cleanup(retention_days=5, now_ms=RECEIVED + 12 * DAY)) == 0


def test_overloaded_store_refuses_new_work(pg_url: str) -> None:
    """A batch blocked on another transaction's row lock holds the pending depth."""
    store = PostgresStore(pg_url, pool_min=1, pool_max=2, max_pending_events=3)
    events = _events(random.Random(9), 3)
    blocker = psycopg.connect(pg_url)
    try:
        # An uncommitted claim of the first event's dedup key holds its row lock.
        blocker.execute(
            "INSERT INTO event_ids (app, id, received_ms) VALUES (%s, %s, 0)",
            (events[0].app, events[0].id),
        )

        async def scenario() -> tuple[IngestOutcome, int, bool]:
            pending = asyncio.ensure_future(store.ingest(events, RECEIVED))
            await asyncio.sleep(0)  # let ingest count its events and hand them over
            depth = store.queue_depth
            refused = False
            try:
                await store.ingest(_events(random.Random(10), 1), RECEIVED)
            except StoreOverloaded:
                refused = True
            # The waiting transaction sees the blocker roll back and inserts all three.
            await asyncio.to_thread(blocker.rollback)
            return await pending, depth, refused

        outcome, depth, refused = asyncio.run(scenario())
        assert depth == 3
        assert refused
        assert outcome.accepted == 3
        assert store.queue_depth == 0
    finally:
        blocker.close()
        asyncio.run(store.close())


def test_concurrent_schema_creation_is_safe(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)

    def start() -> None:
        try:
            barrier.wait()
            stores.append(PostgresStore(pg_url, pool_min=1, pool_max=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for opened in stores:
        asyncio.run(opened.close())
    assert errors == []
    assert len(stores) == 4


def test_closed_store_refuses_work(store: PostgresStore) -> None:
    asyncio.run(store.close())
    with pytest.raises(StorageError, match="closed"):
        asyncio.run(store.ingest(_events(random.Random(2), 1), RECEIVED))
    asyncio.run(store.close())  # idempotent


def test_unreachable_database_never_reveals_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://someone:{secret}@127.0.0.1:9/nothing"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError) as info:
        PostgresStore(url, connect_timeout=1.0)
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert "user=someone password=*** dbname=nothing host=127.0.0.1 port=9" in str(info.value)
    assert secret not in caplog.text


def test_two_collector_processes_count_concurrent_duplicates_once(
    pg_url: str, tmp_path: Path, tls_ca: trustme.CA
) -> None:
    """Two ``telemetry-collector serve`` processes on one database, real HTTPS.

    Every batch is posted to both collectors at the same time, and some events
    travel in several batches: each event must be stored and counted once.
    """
    rng = random.Random(11)
    now = int(time.time() * 1000)
    events = [
        Event(
            id=new_event_id(),
            type=rng.choice(["cmd.run", "cmd.build", "error"]),
            timestamp=now - rng.randrange(3 * HOUR),
            install_id=f"install-{rng.randrange(20)}",
            app="ax",
            duration_ms=rng.uniform(1.0, 900.0),
            success=rng.random() < 0.8,
            properties={"n": rng.randrange(10)},
        )
        for _ in range(300)
    ]
    batches = _with_duplicates(rng, events, 8)
    with (
        CollectorProcess(
            tls_ca, tmp_path / "a", ["--database-url", pg_url], extra_args=["--pool-max", "2"]
        ) as first,
        CollectorProcess(tls_ca, tmp_path / "b", ["--database-url", pg_url]) as second,
    ):
        collectors = [first, second]
        answers: list[dict] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        jobs = [(batch, c) for batch in batches for c in collectors]
        barrier = threading.Barrier(len(jobs), timeout=30)

        def post(batch: list[Event], collector: CollectorProcess) -> None:
            try:
                body = msgspec.json.encode(SubmitRequest(events=batch))
                with httpx.Client(verify=collector.ssl_context(), timeout=30) as client:
                    barrier.wait()
                    response = client.post(
                        f"{collector.base_url}/v1/submit",
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-API-Key": collector.api_key,
                        },
                    )
                assert response.status_code == 200, response.text
                with lock:
                    answers.append(response.json())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=post, args=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert not any(t.is_alive() for t in threads)
        assert errors == [], f"{errors}\n{first.log()}\n{second.log()}"

        sent = 2 * sum(len(b) for b in batches)
        assert sum(a["accepted"] for a in answers) == len(events)
        assert sum(a["duplicates"] for a in answers) == sent - len(events)
        assert sum(a["rejected"] for a in answers) == 0

        expected = _exact_totals(events)
        for collector in collectors:
            with httpx.Client(verify=collector.ssl_context(), timeout=30) as client:
                response = client.get(
                    f"{collector.base_url}/v1/stats",
                    headers={"Authorization": f"Bearer {collector.admin_token}"},
                )
            assert response.status_code == 200, response.text
            totals = response.json()["totals"]
            assert totals["count"] == len(events)
            assert totals["duplicates"] == sent - len(events)
            assert totals["by_type"] == expected["by_type"]
            assert totals["success"] == expected["success"]
            assert totals["installs"] == expected["installs"]
        codes = [c.stop() for c in collectors]
    assert codes == [0, 0], f"{first.log()}\n{second.log()}"
    assert all("Application shutdown complete" in c.log() for c in collectors)
    assert _count_rows(pg_url, "events") == len(events)
    # The connection string never reaches the logs (it may hold a password).
    assert pg_url not in first.log() + second.log()


def test_deadlocked_transaction_is_retried_with_its_counters(store: PostgresStore) -> None:
    """A deadlock victim's work is redone; buffered counters are neither lost nor doubled."""
    asyncio.run(store.record_outcomes(rejected={"pii": 2}, throttled=0, received_ms=RECEIVED))
    attempts: list[int] = []

    def body(cur: psycopg.Cursor, counters: dict) -> str:
        attempts.append(len(attempts) + 1)
        cur.execute("SELECT 1")
        if len(attempts) == 1:
            raise psycopg.errors.DeadlockDetected("injected deadlock")
        return "done"

    assert store._transaction(body) == "done"
    assert attempts == [1, 2]
    stats = asyncio.run(store.stats(StatsQuery()))
    assert stats["totals"]["rejected_by_code"] == {"pii": 2}


#: A statement the server fails with a deadlock (SQLSTATE 40P01) on its first
#: call in the test and runs cleanly afterwards (the marker table exists then).
_DEADLOCK_ONCE = """
DO $$ BEGIN
    IF to_regclass('deadlock_marker') IS NULL THEN
        RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
    END IF;
END $$
"""


def test_a_pipelined_transaction_reports_a_server_error_at_commit_and_retries(
    store: PostgresStore, pg_url: str
) -> None:
    """The ingest path sends its last statements and COMMIT in one round trip: an error
    the server raises among them arrives at commit, is retried like any deadlock, and the
    connection goes back to the pool idle, with the counters neither lost nor doubled."""
    asyncio.run(store.record_outcomes(rejected={"pii": 3}, throttled=0, received_ms=RECEIVED))
    attempts: list[str] = []

    def body(cur: psycopg.Cursor, counters: dict) -> str:
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
        cur.execute(_DEADLOCK_ONCE)  # fails only when the pipeline is synced
        attempts.append("sent")
        if len(attempts) == 2:
            return "done"
        # the first attempt's error must not surface before the commit: create the
        # marker from another connection, so the retry's statement runs cleanly
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("CREATE TABLE deadlock_marker ()")
        return "first"

    assert store._transaction(body, pipelined=True) == "done"
    assert attempts == ["sent", "sent"]
    stats = asyncio.run(store.stats(StatsQuery()))
    assert stats["totals"]["rejected_by_code"] == {"pii": 3}
    # Every pooled connection is idle (none handed back inside an aborted transaction).
    with store._pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_failed_pipelined_transaction_keeps_its_counters_and_the_pool_usable(
    store: PostgresStore,
) -> None:
    """A permanent error in the pipelined tail becomes a StorageError; nothing of the
    transaction is stored, the buffered counters stay for the next one."""
    asyncio.run(store.record_outcomes(rejected={"pii": 1}, throttled=0, received_ms=RECEIVED))

    def body(cur: psycopg.Cursor, counters: dict) -> None:
        cur.execute("SELECT 1")
        cur.fetchall()
        counters[(RECEIVED - RECEIVED % 3_600_000, "duplicate")] = 7
        cur.execute("SELECT 1 / 0")

    with pytest.raises(StorageError, match="DivisionByZero"):
        store._transaction(body, pipelined=True)
    events = _events(random.Random(11), 10)
    assert list(asyncio.run(store.ingest(events, RECEIVED)).inserted) == [True] * 10
    totals = asyncio.run(store.stats(StatsQuery()))["totals"]
    assert totals["count"] == 10
    assert totals["rejected_by_code"] == {"pii": 1}
    assert totals["duplicates"] == 0


def test_stats_command_reads_the_postgres_store(store: PostgresStore, pg_url: str) -> None:
    events = _events(random.Random(8), 25)
    asyncio.run(store.ingest(events, RECEIVED))
    result = subprocess.run(
        [sys.executable, "-m", "telemetry_core.collector", "stats", "--json", "--bucket", "day"],
        env={**os.environ, "TELEMETRY_COLLECTOR_DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["totals"]["count"] == 25
    assert document["totals"]["by_type"] == _exact_totals(events)["by_type"]
    assert {row["bucket_start"] % DAY for row in document["series"]} == {0}


def test_nul_characters_do_not_poison_a_batch(store: PostgresStore, pg_url: str) -> None:
    """PostgreSQL text refuses NUL; such values are stored with U+FFFD, not retried forever."""
    hostile = Event(
        id=new_event_id(T0),
        type="cmd.run",
        timestamp=T0,
        install_id="in\x00stall",
        app="ax\x00",
        session_id="s\x00",
        app_version="1\x00",
        properties={"k": "v\x00w", "n": 1},
    )
    plain = _events(random.Random(4), 3)
    outcome = asyncio.run(store.ingest([hostile, *plain], RECEIVED))
    assert outcome.inserted == (True,) * 4
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT app, install_id, session_id, app_version, properties->>'k' FROM events "
            "WHERE id = %s",
            (hostile.id,),
        ).fetchone()
    assert row == ("ax\ufffd", "in\ufffdstall", "s\ufffd", "1\ufffd", "v\ufffdw")
    stats = asyncio.run(store.stats(StatsQuery(app="ax\ufffd")))
    assert stats["totals"]["count"] == 1


def test_ingest_runs_its_transaction_in_one_pipeline(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch path is the pipelined one (its upserts and COMMIT in one round trip)."""
    calls: list[str] = []
    real = PostgresStore._in_pipeline

    def counting(conn: psycopg.Connection, body: object, counters: dict) -> object:
        calls.append("pipelined")
        return real(conn, body, counters)  # type: ignore[arg-type]

    monkeypatch.setattr(PostgresStore, "_in_pipeline", staticmethod(counting))
    outcome = asyncio.run(store.ingest(_events(random.Random(12), 5), RECEIVED))
    assert outcome.accepted == 5
    assert calls == ["pipelined"]


def test_a_text_spelling_the_nul_escape_is_stored_as_sent(
    store: PostgresStore, pg_url: str
) -> None:
    """The batch is checked for NUL once, in its JSON; a property that spells the escape
    out (backslash, u, 0000) and one with a real NUL in the same batch are told apart."""
    spelled = Event(
        id=new_event_id(T0), type="cmd.run", timestamp=T0, install_id="i1", app="ax",
        properties={"k": "\\u0000 as text"},
    )  # fmt: skip
    real = Event(
        id=new_event_id(T0), type="cmd.run", timestamp=T0, install_id="i2", app="ax",
        properties={"k": "real\x00nul"},
    )  # fmt: skip
    assert asyncio.run(store.ingest([spelled], RECEIVED)).inserted == (True,)
    assert asyncio.run(store.ingest([spelled, real], RECEIVED)).inserted == (False, True)
    with psycopg.connect(pg_url) as conn:
        rows = dict(
            conn.execute("SELECT install_id, properties->>'k' FROM events WHERE app = 'ax'")
        )
    assert rows == {"i1": "\\u0000 as text", "i2": "real\ufffdnul"}


def test_rejections_are_visible_to_every_collector_on_postgres() -> None:
    """Review finding 6: rejected/throttled counters recorded by one collector are
    written at once, so another collector on the same database reports them
    without the first one ever writing a batch."""

    async def run(url: str) -> tuple[int, int]:
        a = PostgresStore(url, pool_max=2)
        b = PostgresStore(url, pool_max=2)
        try:
            await asyncio.gather(
                a.record_outcomes(rejected={"invalid_type": 2}, throttled=0, received_ms=T_REVIEW),
                a.record_outcomes(rejected={}, throttled=5, received_ms=T_REVIEW),
            )
            totals = (await b.stats(StatsQuery()))["totals"]
        finally:
            await a.close()
            await b.close()
        return int(totals["rejected"]), int(totals["throttled"])

    with fresh_database() as url:
        assert asyncio.run(run(url)) == (2, 5)


T_REVIEW = 1_800_000_000_000


def test_a_failing_commit_observer_is_logged_once(
    store: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_seconds: float, _events: int) -> None:
        raise ValueError("observer bug")

    store.add_commit_observer(broken)
    events = _events(random.Random(7), 2)

    async def run() -> None:
        await store.ingest(events[:1], RECEIVED)
        await store.ingest(events[1:], RECEIVED)

    with caplog.at_level(logging.ERROR, logger="telemetry_core.collector"):
        asyncio.run(run())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("commit observer failed (further failures are not logged)") == 1
