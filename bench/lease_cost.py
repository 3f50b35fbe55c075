"""What a claim that does not rewrite rows would save: ``python -m bench.lease_cost [cycles]``.

The batch cycle (``dequeue(100)`` + ``mark_submitted``) of the ``sqlite``
storage claims its entries by rewriting them (lease owner, expiry, next
attempt), and entries carry their event's payload, so a claim rewrites about
ten leaf pages that the delivery rewrites again. This script compares, on two
queues filled alike:

- **current**: the storage's own ``dequeue(100)`` + ``mark_submitted``;
- **range lease (sketch)**: the same select of due entries, then one row
  ``(owner, first id, last id, expiry)`` in a lease table instead of the
  rewrite, and the same delivery (moved to the stored events, deleted, the
  queue's hole count kept), in plain SQL;
- **row leases (sketch)**: the same, with one narrow row ``(entry id, owner,
  expiry)`` per claimed entry in a lease table keyed by the entry's id (what
  keeps today's per-entry semantics), deleted with the delivery.

The sketches only price the writes: they keep none of the lease semantics the
storage keeps (the due selection skipping leased entries, stale leases, the
index-only statistics), so they are the most such designs could save, not
designs. Printed: WAL frames per cycle (automatic checkpoints
off while counting) and the median time of a cycle over interleaved rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _ours

BATCH = 100


def _frames(conn: Any, cycle: Callable[[], None], n: int) -> float:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(n):
        cycle()
    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    return float(frames) / n


def main(cycles: int = 20) -> None:
    """Print frames and time per cycle for both subjects."""
    from telemetry_core_plugins import sqlite_storage as sql

    rounds = 12
    with tempfile.TemporaryDirectory(prefix="telemetry-lease-") as tmp:
        work = Path(tmp)
        need = (rounds + 3) * cycles * BATCH + 30 * BATCH
        queues = [_ours.Queue(work / f"{name}.db") for name in ("current", "range", "rows")]
        current_q, sketch_q, rows_q = queues
        try:
            for queue in queues:
                queue.record(need)
            storage, store = current_q.storage, sketch_q.store
            store.connection().execute(
                "CREATE TABLE bench_leases (owner TEXT, first_id INTEGER, last_id INTEGER,"
                " expires_at REAL)"
            )
            rows_store = rows_q.store
            rows_store.connection().execute(
                "CREATE TABLE bench_row_leases"
                " (id INTEGER PRIMARY KEY, owner TEXT, expires_at REAL)"
            )

            def current() -> None:
                batch = storage.dequeue(BATCH)
                storage.mark_submitted([q.event_id for q in batch])

            def sketch() -> None:
                now = time.time()
                with store.transaction() as conn:
                    rows = conn.execute(sql._SELECT_DUE, (now, now + 3600, BATCH)).fetchall()
                    conn.execute(
                        "INSERT INTO bench_leases VALUES ('bench', ?, ?, ?)",
                        (rows[0][0], rows[-1][0], now + 60),
                    )
                sql._batch_decoder.decode(b"[" + b",".join(r[5] for r in rows) + b"]")
                ids = json.dumps([r[0] for r in rows])
                with store.transaction() as conn:
                    before = int(conn.execute(sql._MAX_ID).fetchone()[0])
                    conn.execute(sql._ARCHIVE + sql._BY_ROW_IDS, (ids,))
                    deleted = conn.execute(sql._DROP_ROWS, (ids,)).rowcount
                    conn.execute("DELETE FROM bench_leases WHERE first_id = ?", (rows[0][0],))
                    sql._deleted(conn, deleted, before)

            def row_leases() -> None:
                now = time.time()
                with rows_store.transaction() as conn:
                    rows = conn.execute(sql._SELECT_DUE, (now, now + 3600, BATCH)).fetchall()
                    ids = json.dumps([r[0] for r in rows])
                    conn.execute(
                        "INSERT OR REPLACE INTO bench_row_leases"
                        " SELECT value, 'bench', ? FROM json_each(?)",
                        (now + 60, ids),
                    )
                sql._batch_decoder.decode(b"[" + b",".join(r[5] for r in rows) + b"]")
                with rows_store.transaction() as conn:
                    before = int(conn.execute(sql._MAX_ID).fetchone()[0])
                    conn.execute(sql._ARCHIVE + sql._BY_ROW_IDS, (ids,))
                    deleted = conn.execute(sql._DROP_ROWS, (ids,)).rowcount
                    conn.execute(
                        "DELETE FROM bench_row_leases WHERE id IN (SELECT value FROM json_each(?))",
                        (ids,),
                    )
                    sql._deleted(conn, deleted, before)

            subjects = {
                "current": current,
                "range lease (sketch)": sketch,
                "row leases (sketch)": row_leases,
            }
            for cycle in subjects.values():  # warm-up: b-trees at their working depth
                for _ in range(10):
                    cycle()
            conns = {
                "current": current_q.store.connection(),
                "range lease (sketch)": store.connection(),
                "row leases (sketch)": rows_store.connection(),
            }
            frames = {name: _frames(conns[name], c, cycles) for name, c in subjects.items()}
            times: dict[str, list[float]] = {name: [] for name in subjects}
            for r in range(rounds):
                order = list(subjects.items())
                for name, cycle in order if r % 2 == 0 else reversed(order):
                    t0 = time.perf_counter()
                    for _ in range(cycles):
                        cycle()
                    times[name].append((time.perf_counter() - t0) / cycles)
        finally:
            for queue in queues:
                queue.close()
    for name in subjects:
        print(
            f"{name:22s} {frames[name]:6.1f} WAL frames/cycle"
            f"  {statistics.median(times[name]) * 1e3:6.3f} ms/cycle (median of {rounds} rounds)"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
