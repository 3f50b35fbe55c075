"""``track()`` while another process holds the database's write lock (issue 8).

Each round, a separate process takes ``BEGIN EXCLUSIVE`` on an existing telemetry
database and keeps it; the app (a service opened before the lock that has already
recorded, as a running app's has) records 200 events; then the lock is released
and the service is closed, which stores the spilled events. Compared with the
same 200 calls on an unlocked database in alternating rounds. Targets: every call
returns within 5 ms (p99 of single calls, and the slowest), each returns an id,
and all of them are stored afterwards.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import _ours
from bench._harness import Context, Report, Round, interleave, percentile, timed_ops

NAME = "track_locked"
LOCKED = "track(), database locked by another process"
FREE = "track(), database free"
CALLS = 200
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def _stored(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM telemetry_events").fetchone()[0])
    finally:
        conn.close()


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    rounds = ctx.pick(5, 20)
    report = Report(NAME, f"track() with the database locked by another process ({CALLS} calls)")
    report.params = {"calls_per_round": CALLS, "rounds": rounds}
    singles: list[int] = []
    tally = {"ids": 0, "calls": 0, "stored": 0, "expected": 0}

    def locked() -> Callable[[], Round]:
        db = ctx.workdir / "locked.db"
        _ours.close_service(_ours.service(db))  # the app has run before

        def one_round() -> Round:
            svc = _ours.service(db)
            _ours.track(svc)  # a running app: it has recorded before the lock is taken
            svc.event_counts()  # and that event is stored (a read stores the journal)
            before = _stored(db)
            locker = subprocess.Popen(
                [sys.executable, "-c", _LOCKER, str(db)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert locker.stdout is not None and locker.stdin is not None
            assert locker.stdout.readline().strip() == "locked"
            ids: list[object] = []
            try:
                result = timed_ops([lambda: ids.append(_ours.track(svc))] * CALLS)
            finally:
                locker.stdin.write("\n")
                locker.stdin.flush()
                locker.wait(timeout=60)
                locker.stdin.close()
                locker.stdout.close()
            _ours.close_service(svc)  # stores the spilled events
            singles.extend(result.per_op_ns)
            tally["ids"] += sum(1 for i in ids if i is not None)
            tally["calls"] += CALLS
            tally["stored"] += _stored(db) - before
            tally["expected"] += CALLS
            return result

        return one_round

    def free() -> Callable[[], Round]:
        svc = _ours.service(ctx.workdir / "free.db")
        return lambda: timed_ops([lambda: _ours.track(svc)] * CALLS)

    report.rows = interleave({LOCKED: locked, FREE: free}, rounds=rounds, unit="call")
    p99 = percentile(singles, 99) / 1e6 if singles else None
    slowest = max(singles) / 1e6 if singles else None
    report.check_value("p99 of a locked track() call", p99, at_most=5, unit="ms")
    report.check_value("slowest locked track() call", slowest, at_most=5, unit="ms")
    report.check_value(
        "locked calls without an id", tally["calls"] - tally["ids"], at_most=0, unit="calls"
    )
    report.check_value(
        "events not stored after the lock", tally["expected"] - tally["stored"], at_most=0,
        unit="events",
    )  # fmt: skip
    report.notes.append(
        f"{tally['ids']} of {tally['calls']} locked calls returned an id; "
        f"{tally['stored']} of {tally['expected']} stored once the lock was released"
    )
    return report
