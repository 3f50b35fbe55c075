"""PostgreSQL at scale: ingest with 10 million stored events, stats over a year.

Three databases:

- ``telemetry_bench_empty``: the collector's schema and nothing else;
- ``telemetry_bench_10m``: the same schema holding 10 million events (quick: 1
  million) received over the last 30 days in 8 apps, written server-side with
  ``INSERT ... SELECT generate_series`` into ``event_ids`` and the daily
  partitions of ``events``, exactly the rows a collector writes; the fill is kept
  between runs (a marker table records its size);
- ``telemetry_bench_stats``: a year of hourly rollups (2 apps x 6 types x 8,760
  hours, 10 histogram buckets and 5 installs per rollup hour), also generated
  server-side, and the day tables filled from them by the collector's own
  migration statements.

Ingest: :class:`PostgresStore` in this process, two threads each committing
batches of 100 fresh events (the work of two requests in flight), measured on
the empty and the filled database in interleaved rounds. Stats:
``GET /v1/stats`` over the whole year (``bucket=day`` and ``bucket=hour``) from
``telemetry-collector serve`` on the stats database, over TLS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bench import _ours
from bench._harness import Context, Report, Round, Unavailable, interleave, timed_ops
from bench._tls import Certs

NAME = "pg_scale"
BATCH = 100
THREADS = 2
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
FILL_DAYS = 30
FILL_CHUNK = 1_000_000
EMPTY = "ingest, empty database"
APPS, TYPES, BUCKETS, INSTALLS = 2, 6, 10, 5
_DAY_TABLES = ("day_rollups", "day_rollup_buckets", "day_installs", "day_app_installs")


def _filled(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT rows FROM bench_fill").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def _fill(url: str, rows: int) -> float:
    """Write ``rows`` events as a collector stores them; return the seconds it took."""
    import psycopg

    from telemetry_core.collector.postgres_store import (
        SCHEMA_LOCK_KEY,
        PostgresStore,
        _create_partitions,
    )

    PostgresStore(url, pool_max=1).close_blocking()  # the schema, as a collector creates it
    now = int(time.time() * 1000)
    start = now - FILL_DAYS * DAY_MS
    span = now - start - 60_000
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            _create_partitions(conn.cursor(), start, now)
        for low in range(1, rows + 1, FILL_CHUNK):
            high = min(rows, low + FILL_CHUNK - 1)
            gen = (
                f"SELECT g, {start} + g::bigint * {span} / {rows} AS ms, "
                "CASE WHEN g % 4 = 0 THEN 'bench' ELSE 'app-' || (g % 8) END AS app "
                f"FROM generate_series({low}, {high}) AS g"
            )
            uid = (
                "(lpad(to_hex(ms), 12, '0') || '7' || lpad(to_hex(g % 4096), 3, '0') || '8' "
                "|| lpad(to_hex(g), 15, '0'))::uuid"
            )
            conn.execute(
                f"INSERT INTO event_ids (app, id, received_ms) SELECT app, {uid}, ms FROM ({gen}) s"
            )
            conn.execute(
                "INSERT INTO events (app, id, type, timestamp_ms, received_ms, install_id, "
                "session_id, app_version, duration_ms, success, properties) "
                f"SELECT app, {uid}, 'cmd.' || (g % 6), ms - 500, ms, md5((g % 50000)::text), "
                "NULL, '1.4.2', (g % 3000)::float8, g % 10 <> 0, "
                "jsonb_build_object('command', 'build', 'exit_code', g % 3, 'cached', g % 2 = 0)"
                f" FROM ({gen}) s"
            )
        conn.execute("VACUUM ANALYZE event_ids")
        conn.execute("VACUUM ANALYZE events")
        conn.execute("CREATE TABLE bench_fill (rows BIGINT)")
        conn.execute("INSERT INTO bench_fill VALUES (%s)", (rows,))
    return time.perf_counter() - t0


def _fill_rollups(url: str) -> float:
    """A year of hourly rollups ending now, and the day tables filled from them
    with the statements of the collector's migration; return the seconds it took."""
    import psycopg

    from telemetry_core.collector.postgres_store import PostgresStore
    from telemetry_core.collector.store_sql import BACKFILL_DAY_TABLES

    PostgresStore(url, pool_max=1).close_blocking()
    end = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    start = end - 365 * 24 * HOUR_MS
    keys = (
        f"SELECT 'app-' || a AS app, 'cmd.' || t AS type, h AS hour_ms "
        f"FROM generate_series(1, {APPS}) a, generate_series(1, {TYPES}) t, "
        f"generate_series({start}, {end - HOUR_MS}, {HOUR_MS}) h"
    )
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rollups SELECT app, type, hour_ms, 120, 110, 10 FROM (" + keys + ") k"
        )
        conn.execute(
            "INSERT INTO rollup_buckets SELECT app, type, hour_ms, 300 + b * 7, 12 "
            f"FROM ({keys}) k, generate_series(1, {BUCKETS}) b"
        )
        conn.execute(
            "INSERT INTO installs SELECT app, type, hour_ms, "
            f"md5((i + hour_ms / {HOUR_MS} % 40)::text) "
            f"FROM ({keys}) k, generate_series(1, {INSTALLS}) i"
        )
        for statement in BACKFILL_DAY_TABLES:
            conn.execute(statement)
        for table in ("rollups", "rollup_buckets", "installs", *_DAY_TABLES):
            conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - t0


def _ingest(url: str, batches: int, stores: list[Any]) -> Callable[[], Callable[[], Round]]:
    def factory() -> Callable[[], Round]:
        from telemetry_core.collector.postgres_store import PostgresStore

        store = PostgresStore(url, pool_max=THREADS)
        stores.append(store)

        def worker(work: list[list[Any]]) -> None:
            for batch in work:
                store._admit(len(batch), "busy")
                store.ingest_blocking(batch, int(time.time() * 1000))

        def one_round() -> Round:
            work = [
                [[_ours.make_event(f"{n:032x}") for n in range(BATCH)] for _ in range(batches)]
                for _ in range(THREADS)
            ]
            threads = [threading.Thread(target=worker, args=(w,)) for w in work]
            t0 = time.perf_counter_ns()
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            return Round(time.perf_counter_ns() - t0, THREADS * batches * BATCH)

        return one_round

    return factory


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    rows = ctx.pick(1_000_000, 10_000_000)
    batches = ctx.pick(10, 40)
    rounds = ctx.pick(3, 9)
    report = Report(NAME, "PostgreSQL at scale: ingest at depth, stats over a year")
    report.params = {"stored": rows, "threads": THREADS, "batches_per_thread": batches}
    report.params["rounds"] = rounds
    full = f"ingest, {rows / 1e6:g} million events stored"
    try:
        _ours.create_pg_database("telemetry_bench_empty")
        name = f"telemetry_bench_{rows // 1_000_000}m"
        _ours.create_pg_database(name, keep=True)
    except Exception as exc:
        report.notes.append(f"PostgreSQL not measured: {exc}")
        return report
    if _filled(_ours.pg_url(name)) != rows:
        _ours.create_pg_database(name)
        seconds = _fill(_ours.pg_url(name), rows)
        report.notes.append(f"filled {rows:,} events server-side in {seconds:.0f} s")
    else:
        report.notes.append(f"reused the {rows:,} events of an earlier run")
    stores: list[Any] = []
    try:
        report.rows = interleave(
            {
                EMPTY: _ingest(_ours.pg_url("telemetry_bench_empty"), batches, stores),
                full: _ingest(_ours.pg_url(name), batches, stores),
            },
            rounds=rounds,
            unit="event",
            max_seconds=600,
        )
    finally:
        for store in stores:
            store.close_blocking()
    report.check_ratio(full, EMPTY, at_least=0.8)
    _stats(ctx, report)
    return report


def _stats(ctx: Context, report: Report) -> None:
    import urllib3

    _ours.create_pg_database("telemetry_bench_stats")
    seconds = _fill_rollups(_ours.pg_url("telemetry_bench_stats"))
    hours = 365 * 24
    report.notes.append(
        f"stats: {APPS * TYPES * hours:,} rollups, {APPS * TYPES * hours * BUCKETS:,} histogram"
        f" buckets, {APPS * TYPES * hours * INSTALLS:,} install rows generated in {seconds:.0f} s"
    )
    certs = Certs(ctx.workdir / "tls")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    end = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    start = end - 365 * 24 * HOUR_MS
    headers = {"Authorization": "Bearer bench-admin-token"}
    subjects: dict[str, Callable[[], Callable[[], Round]]] = {}
    try:
        with _ours.collector(
            ctx.workdir,
            cert=certs.cert,
            key=certs.key,
            api_key="bench-submission-key",
            database_url=_ours.pg_url("telemetry_bench_stats"),
        ) as base:
            port = int(base.rsplit(":", 1)[1])
            pool = urllib3.HTTPSConnectionPool(
                "127.0.0.1", port, ca_certs=str(certs.ca), assert_hostname="127.0.0.1"
            )
            for bucket in ("day", "hour"):
                path = f"/v1/stats?from={start}&to={end}&bucket={bucket}"

                def get(path: str = path) -> None:
                    r = pool.request("GET", path, headers=headers)
                    if r.status != 200:
                        raise RuntimeError(f"{r.status} {r.data[:200]!r}")

                subjects[f"GET /v1/stats, a year, bucket={bucket}"] = lambda get=get: (
                    lambda: timed_ops([get] * 5)
                )
            rows = interleave(subjects, rounds=ctx.pick(3, 7), unit="query", max_seconds=120)
    except Unavailable as exc:
        report.notes.append(f"stats not measured: {exc}")
        return
    report.rows.extend(rows)
    day = report.row("GET /v1/stats, a year, bucket=day")
    report.check_value(
        "GET /v1/stats over a year of hourly rollups (bucket=day)",
        day.median_ns / 1e6 if day and day.median_ns else None,
        at_most=50,
        unit="ms",
    )
