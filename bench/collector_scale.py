"""Collector throughput: the HTTP stack, and 1 vs 2 worker processes on PostgreSQL.

Four clients (threads, one urllib3 keep-alive TLS connection each) POST
pre-encoded batches of 100 fresh events to ``telemetry-collector serve``; a round
ends when every batch has its 200 (sent only after the commit). Subjects, all
running at once and measured interleaved:

- PostgreSQL, one process, with uvicorn's pure-Python ``h11`` parser or
  ``httptools``, on asyncio's loop or ``uvloop`` (bench/_http_stack.py picks them);
- PostgreSQL, ``--workers 2``;
- SQLite, one process, ``h11`` and ``httptools``, against the raw ``executemany``
  floor of bench/ingest.py.

Each round also reads the CPU time the collector processes and the PostgreSQL
backends serving them used (``/proc``), which gives the capacity plan of
docs/operations.md: events per second per collector core and per PostgreSQL core.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import _cpu, _ours, _raw
from bench._harness import Context, Report, Round, Unavailable, interleave
from bench._tls import Certs

NAME = "collector_scale"
BATCH = 100
CLIENTS = 4
API_KEY = "bench-submission-key"
DATABASE = "telemetry_bench_scale"
RAW = "raw sqlite3 executemany (1 writer)"

#: name -> (BENCH_HTTP, BENCH_LOOP)
STACKS: dict[str, tuple[str, str]] = {
    "h11 + asyncio": ("h11", "asyncio"),
    "h11 + uvloop": ("h11", "uvloop"),
    "httptools + uvloop": ("httptools", "uvloop"),
}


def _backend_pids(url: str) -> list[int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (DATABASE,),
        ).fetchall()
    return [int(r[0]) for r in rows]


class _WaitSampler:
    """Samples what the busy PostgreSQL backends of the bench database wait on,
    every 20 ms while a round runs: the share waiting on a lock is what keeps
    batches (of one collector or of several) from running side by side."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = 0
        self.locked = 0

    def __enter__(self) -> _WaitSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self._url, autocommit=True) as conn:
            deadline = time.monotonic() + 300  # bounded, whatever the round does
            while not self._stop.wait(0.02) and time.monotonic() < deadline:
                for (waiting,) in conn.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE datname = %s"
                    " AND pid <> pg_backend_pid() AND state <> 'idle'",
                    (DATABASE,),
                ).fetchall():
                    self.busy += 1
                    self.locked += waiting == "Lock"


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    import urllib3

    batches = ctx.pick(3, 10)  # per client per round
    rounds = ctx.pick(3, 7)
    report = Report(NAME, "collector throughput: HTTP stack, worker processes (time per event)")
    report.params = {"clients": CLIENTS, "batches_per_client": batches, "batch": BATCH}
    report.params["rounds"] = rounds
    certs = Certs(ctx.workdir / "tls")
    pg = _ours.fresh_pg_database(DATABASE)
    if pg is None:
        report.notes.append("PostgreSQL not measured (no server at 127.0.0.1:5432)")
    configs: dict[str, dict[str, Any]] = {}
    for stack, (http, loop) in STACKS.items():
        env = {"BENCH_HTTP": http, "BENCH_LOOP": loop}
        configs[f"sqlite, 1 process, {stack}"] = {"env": env, "url": None, "extra": ()}
        if pg:
            configs[f"postgres, 1 process, {stack}"] = {"env": env, "url": pg, "extra": ()}
    if pg:
        for stack in ("h11 + uvloop", "httptools + uvloop"):
            http, loop = STACKS[stack]
            configs[f"postgres, --workers 2, {stack}"] = {
                "env": {"BENCH_HTTP": http, "BENCH_LOOP": loop},
                "url": pg,
                "extra": ("--workers", "2", "--pool-max", "4"),
            }
    cms: list[Any] = []
    sqlite_conns: list[sqlite3.Connection] = []
    cpu: dict[str, dict[str, float]] = {}

    def ours(label: str, base: str, pids: list[int], url: str | None) -> Callable[[], Round]:
        port = int(base.rsplit(":", 1)[1])
        pools = [
            urllib3.HTTPSConnectionPool(
                "127.0.0.1", port, ca_certs=str(certs.ca), assert_hostname="127.0.0.1", maxsize=1
            )
            for _ in range(CLIENTS)
        ]
        headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
        procs = pids + [c for p in pids for c in _cpu.children(p)]
        used = cpu.setdefault(
            label,
            {
                "collector_s": 0.0,
                "postgres_s": 0.0,
                "clients_s": 0.0,
                "events": 0,
                "busy_samples": 0,
                "lock_samples": 0,
            },
        )
        sampler = _WaitSampler(url) if url else None

        def one_round() -> Round:
            work = [
                [json.dumps({"events": _ours.event_dicts(BATCH)}).encode() for _ in range(batches)]
                for _ in range(CLIENTS)
            ]
            backends = _backend_pids(url) if url else []
            c0, b0, l0 = _cpu.total(procs), _cpu.total(backends), _cpu.self_seconds()
            with sampler or contextlib.nullcontext():
                elapsed, errors = _ours.post_batches(pools, work, headers, 120)
            if sampler is not None:
                used["busy_samples"], used["lock_samples"] = sampler.busy, sampler.locked
            used["collector_s"] += _cpu.total(procs) - c0
            used["postgres_s"] += _cpu.total(backends) - b0
            used["clients_s"] += _cpu.self_seconds() - l0
            used["events"] += CLIENTS * batches * BATCH
            if errors:
                raise RuntimeError(f"collector answered {errors[0]}")
            return Round(elapsed, CLIENTS * batches * BATCH)

        return one_round

    def raw() -> Callable[[], Round]:
        conn = _raw.open_events_floor(ctx.workdir / "raw.db")
        sqlite_conns.append(conn)

        def one_round() -> Round:
            rows = _raw.events_floor_rows(CLIENTS * batches, BATCH)
            t0 = time.perf_counter_ns()
            _raw.insert_events_floor(conn, rows)
            return Round(time.perf_counter_ns() - t0, CLIENTS * batches * BATCH)

        return one_round

    subjects: dict[str, Callable[[], Callable[[], Round]]] = {RAW: raw}
    try:
        for n, (label, config) in enumerate(configs.items()):
            pids: list[int] = []
            workdir = ctx.workdir / f"c{n}"
            workdir.mkdir(parents=True, exist_ok=True)
            cm = _ours.collector(
                workdir,
                cert=certs.cert,
                key=certs.key,
                api_key=API_KEY,
                database_url=config["url"],
                extra=config["extra"],
                module="bench._http_stack",
                env_extra=config["env"],
                pids=pids,
            )
            try:
                base = cm.__enter__()
            except Unavailable as exc:
                report.notes.append(f"{label}: unavailable: {exc}")
                continue
            cms.append(cm)
            subjects[label] = functools.partial(ours, label, base, pids, config["url"])
        report.rows = interleave(subjects, rounds=rounds, unit="event", max_seconds=400)
    finally:
        for cm in reversed(cms):
            cm.__exit__(None, None, None)
        for conn in sqlite_conns:
            conn.close()
    _checks(report, cpu)
    return report


def _checks(report: Report, cpu: dict[str, dict[str, float]]) -> None:
    for stack in ("h11 + uvloop", "httptools + uvloop"):
        report.check_ratio(
            f"postgres, --workers 2, {stack}", f"postgres, 1 process, {stack}", at_least=1.6
        )
    report.check_ratio(
        "postgres, 1 process, httptools + uvloop", "postgres, 1 process, h11 + uvloop", at_least=1.0
    )
    report.check_ratio(
        "sqlite, 1 process, httptools + uvloop", "sqlite, 1 process, h11 + uvloop", at_least=1.0
    )
    report.check_ratio("sqlite, 1 process, h11 + uvloop", RAW, at_least=0.5)
    report.check_ratio("sqlite, 1 process, httptools + uvloop", RAW, at_least=0.5)
    for label, used in cpu.items():
        events = used["events"]
        if not events:
            continue
        row = report.row(label)
        per_collector = used["collector_s"] / events * 1e6
        per_pg = used["postgres_s"] / events * 1e6
        per_client = used["clients_s"] / events * 1e6
        if row is not None:
            row.extra["collector_cpu_us_per_event"] = round(per_collector, 1)
            row.extra["postgres_cpu_us_per_event"] = round(per_pg, 1)
            row.extra["load_generator_cpu_us_per_event"] = round(per_client, 1)
        pg_part = (
            f", PostgreSQL backends {per_pg:.1f} µs/event = {1e6 / per_pg:,.0f} events/s per core"
            if per_pg
            else ""
        )
        if used["busy_samples"]:
            share = used["lock_samples"] / used["busy_samples"]
            pg_part += f", busy backends waiting on a lock {100 * share:.0f} % of samples"
            if row is not None:
                row.extra["lock_wait_share"] = round(share, 3)
        report.notes.append(
            f"{label}: collector CPU {per_collector:.1f} µs/event = "
            f"{1e6 / per_collector:,.0f} events/s per core{pg_part}; "
            f"load generator {per_client:.1f} µs/event"
        )
