"""``track()`` of one event, durable on return, against durable raw and peer queues.

Ours runs with its defaults: ``track()`` appends to the write-behind journal and a
background thread stores the events in the database. So that the comparison is
with rows in a database, each of our rounds ends with one read
(``event_counts()``), which stores what is still journaled, and its time is
added to the round: the median per event includes every event's way into
SQLite (p95 is of the single calls). One more row shows ``write_behind=False``,
each event committed to the database before ``track()`` returns.

Baselines: one ``INSERT`` per transaction with the stdlib ``sqlite3`` (WAL,
``synchronous=NORMAL``, the floor for a durable local write), persist-queue's
``SQLiteAckQueue.put`` and litequeue's ``put``. Every subject writes its own
file in the same folder, and every call returns only once its row is committed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bench import _ours
from bench._harness import Context, Report, Round, interleave, timed_ops

NAME = "track"
OURS = "telemetry-core track()"
OURS_REMOTE = "telemetry-core track(), remote on"
OURS_DIRECT = "telemetry-core track(), remote on, write_behind=False"
RAW = "raw sqlite3 INSERT+COMMIT"
PERSIST = "persist-queue SQLiteAckQueue.put"
LITE = "litequeue put"


def _ours_factory(
    workdir: Path, n: int, *, remote: bool, direct: bool = False
) -> Callable[[], Callable[[], Round]]:
    def factory() -> Callable[[], Round]:
        # Remote on (the production setting): every event is also queued for
        # sending. The endpoint is a loopback port where nothing listens, so the
        # worker fails its first attempt and waits (backoff) while track() runs.
        changes = (
            {
                "remote_enabled": True,
                "endpoint": f"https://127.0.0.1:{_ours.closed_port()}/v1/submit",
            }
            if remote
            else {}
        )
        if direct:
            changes["write_behind"] = False
        name = "ours-direct.db" if direct else ("ours-remote.db" if remote else "ours.db")
        svc = _ours.service(workdir / name, **changes)
        _CLOSERS.append(lambda: _ours.close_service(svc))

        def one_round() -> Round:
            calls = timed_ops([lambda: _ours.track(svc)] * n)
            started = time.perf_counter_ns()
            svc.event_counts()  # a read: what is still journaled is stored first
            stored = time.perf_counter_ns() - started
            return Round(calls.total_ns + stored, calls.ops, calls.per_op_ns)

        return one_round

    return factory


def _raw_factory(workdir: Path, n: int) -> Callable[[], Callable[[], Round]]:
    def factory() -> Callable[[], Round]:
        conn = sqlite3.connect(workdir / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, payload TEXT)")
        _CLOSERS.append(conn.close)

        def op() -> None:
            event_id, payload = _ours.raw_event_json()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO events VALUES (?, ?)", (event_id, payload))
            conn.execute("COMMIT")

        return lambda: timed_ops([op] * n)

    return factory


def _persist_factory(workdir: Path, n: int) -> Callable[[], Callable[[], Round]]:
    def factory() -> Callable[[], Round]:
        from persistqueue import SQLiteAckQueue

        queue = SQLiteAckQueue(str(workdir / "persist"), auto_commit=True)
        _CLOSERS.append(queue.close)

        def op() -> None:
            _id, payload = _ours.raw_event_json()
            queue.put(payload)

        return lambda: timed_ops([op] * n)

    return factory


def _lite_factory(workdir: Path, n: int) -> Callable[[], Callable[[], Round]]:
    def factory() -> Callable[[], Round]:
        from litequeue import LiteQueue

        queue = LiteQueue(str(workdir / "lite.db"))
        _CLOSERS.append(queue.close)

        def op() -> None:
            _id, payload = _ours.raw_event_json()
            queue.put(payload)

        return lambda: timed_ops([op] * n)

    return factory


_CLOSERS: list[Callable[[], object]] = []


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    n = ctx.pick(200, 1000)
    rounds = ctx.pick(5, 20)
    report = Report(NAME, "track() of one event, durable on return (time per event)")
    report.params = {"events_per_round": n, "rounds": rounds}
    work = ctx.workdir / NAME
    work.mkdir(parents=True, exist_ok=True)
    try:
        report.rows = interleave(
            {
                OURS: _ours_factory(work, n, remote=False),
                OURS_REMOTE: _ours_factory(work, n, remote=True),
                OURS_DIRECT: _ours_factory(work, n, remote=True, direct=True),
                RAW: _raw_factory(work, n),
                PERSIST: _persist_factory(work, n),
                LITE: _lite_factory(work, n),
            },
            rounds=rounds,
            unit="event",
        )
    finally:
        while _CLOSERS:
            _CLOSERS.pop()()
    report.check_ratio(OURS, RAW, at_least=0.7)
    report.check_ratio(OURS_REMOTE, RAW, at_least=0.7)
    report.check_ratio(OURS, PERSIST, at_least=5)
    report.notes.append(
        "persist-queue keeps its default synchronous=FULL; litequeue sets WAL + NORMAL itself"
    )
    return report
