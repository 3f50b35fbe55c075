"""Collector ingest with 1, 4 and 16 concurrent clients, SQLite and PostgreSQL.

Each client is a thread with its own urllib3 keep-alive connection, POSTing
pre-encoded batches of 100 fresh events to ``telemetry-collector serve`` (TLS,
loopback); a round times until every client has had its 200s (each sent only
after the batch is committed). The floor is the stdlib ``sqlite3`` inserting
the same events with ``executemany``, one transaction per batch of 100.
PostgreSQL is measured when a server answers on 127.0.0.1:5432 (or at
``TELEMETRY_BENCH_DATABASE_URL``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from bench import _ours, _raw
from bench._harness import Context, Report, Round, Unavailable, interleave
from bench._tls import Certs

NAME = "ingest"
BATCH = 100
API_KEY = "bench-submission-key"
RAW = "raw sqlite3 executemany (1 writer)"
#: The same floor committing with ``synchronous=FULL``, the collector's setting (a
#: 200 must survive power loss); shown beside the target's floor, not instead of it.
RAW_FULL = "raw sqlite3 executemany, synchronous=FULL"


def _pg_url() -> str | None:
    return os.environ.get("TELEMETRY_BENCH_DATABASE_URL") or _ours.fresh_pg_database(
        "telemetry_bench"
    )


def _bodies(count: int) -> list[bytes]:
    return [json.dumps({"events": _ours.event_dicts(BATCH)}).encode() for _ in range(count)]


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    import urllib3

    clients: list[int] = ctx.pick([1, 4], [1, 4, 16])
    batches = ctx.pick(4, 10)  # per client per round
    rounds = ctx.pick(3, 7)
    report = Report(NAME, "collector ingest, concurrent clients (time per event)")
    report.params = {
        "clients": clients,
        "batches_per_client": batches,
        "batch": BATCH,
        "rounds": rounds,
    }
    certs = Certs(ctx.workdir / "tls")
    stores: dict[str, str | None] = {"sqlite": None}
    pg = None if ctx.quick else _pg_url()
    if pg:
        stores["postgres"] = pg
    else:
        report.notes.append("PostgreSQL not measured (no server, or quick run)")
    bases: dict[str, str] = {}
    managers = []
    subjects: dict[str, Callable[[], Callable[[], Round]]] = {}

    def ours(store: str, c: int) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            if store not in bases:
                raise Unavailable("collector not running")
            port = int(bases[store].rsplit(":", 1)[1])
            pools = [
                urllib3.HTTPSConnectionPool(
                    "127.0.0.1",
                    port,
                    ca_certs=str(certs.ca),
                    assert_hostname="127.0.0.1",
                    maxsize=1,
                )
                for _ in range(c)
            ]
            headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}

            def one_round() -> Round:
                work = [_bodies(batches) for _ in range(c)]
                elapsed, errors = _ours.post_batches(pools, work, headers, 120)
                if errors:
                    raise RuntimeError(f"collector answered {errors[0]}")
                return Round(elapsed, c * batches * BATCH)

            return one_round

        return factory

    def raw(synchronous: str = "NORMAL") -> Callable[[], Round]:
        conn = _raw.open_events_floor(ctx.workdir / f"raw-{synchronous.lower()}.db", synchronous)
        managers.append(conn)

        def one_round() -> Round:
            total = 4 * batches
            rows = _raw.events_floor_rows(total, BATCH)
            t0 = time.perf_counter_ns()
            _raw.insert_events_floor(conn, rows)
            return Round(time.perf_counter_ns() - t0, total * BATCH)

        return one_round

    cms = []
    try:
        for store, url in stores.items():
            try:
                cm = _ours.collector(
                    ctx.workdir / store,
                    cert=certs.cert,
                    key=certs.key,
                    api_key=API_KEY,
                    database_url=url,
                )
                (ctx.workdir / store).mkdir(parents=True, exist_ok=True)
                bases[store] = cm.__enter__()
                cms.append(cm)
            except Unavailable as exc:
                report.notes.append(f"{store} collector unavailable: {exc}")
        subjects[RAW] = raw
        subjects[RAW_FULL] = lambda: raw("FULL")
        for store in stores:
            for c in clients:
                subjects[f"collector {store}, {c} clients"] = ours(store, c)
        report.rows = interleave(subjects, rounds=rounds, unit="event", max_seconds=300)
    finally:
        for cm in reversed(cms):
            cm.__exit__(None, None, None)
        for conn in managers:
            conn.close()
    for c in clients:
        check = report.check_ratio(f"collector sqlite, {c} clients", RAW, at_least=0.5)
        if c != 4:
            report.checks.remove(check)
    r4, rf = report.row("collector sqlite, 4 clients"), report.row(RAW_FULL)
    if r4 and rf and r4.per_second and rf.per_second:
        report.notes.append(
            "beside the target: collector sqlite, 4 clients vs the same floor with"
            f" synchronous=FULL (equal durability) = {r4.per_second / rf.per_second:.3f}x"
        )
    report.series = {
        "clients": clients,
        **{
            f"{store}_events_per_s": [
                (r.per_second if (r := report.row(f"collector {store}, {c} clients")) else None)
                for c in clients
            ]
            for store in stores
        },
        "raw_events_per_s": (r.per_second if (r := report.row(RAW)) else None),
    }
    return report
