"""The raw floor for queue operations: the stdlib ``sqlite3`` and nothing else.

One table keyed by a UUID, a payload, a due time and a lease, with the index a
FIFO-of-due-entries queue needs; WAL and ``synchronous=NORMAL`` like ours. Each
method is one transaction, as each of our storage calls is.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from bench import _ours

_SCHEMA = """
CREATE TABLE IF NOT EXISTS q (
  seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, payload TEXT NOT NULL,
  next_retry_at REAL NOT NULL, retry_count INTEGER NOT NULL DEFAULT 0,
  lease_until REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS q_due ON q (next_retry_at, seq);
"""


class RawQueue:
    """A minimal durable claim/delete queue on one SQLite connection."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def fill(self, n: int, chunk: int = 50_000) -> None:
        """Add ``n`` due entries, ``chunk`` per transaction."""
        done = 0
        while done < n:
            step = min(chunk, n - done)
            rows = [_ours.raw_event_json() for _ in range(step)]
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO q (id, payload, next_retry_at) VALUES (?, ?, 0)", rows
            )
            self.conn.execute("COMMIT")
            done += step

    def claim(self, n: int, lease: float = 60.0) -> list[tuple[str, str]]:
        """Lease up to ``n`` due entries, oldest first; return (id, payload) pairs."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        rows = self.conn.execute(
            "UPDATE q SET lease_until = ?, next_retry_at = ? WHERE seq IN ("
            " SELECT seq FROM q WHERE next_retry_at <= ? ORDER BY next_retry_at, seq LIMIT ?)"
            " RETURNING id, payload",
            (now + lease, now + lease, now, n),
        ).fetchall()
        self.conn.execute("COMMIT")
        return rows

    def delete(self, ids: Sequence[str]) -> None:
        """Remove delivered entries."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("DELETE FROM q WHERE id = ?", [(i,) for i in ids])
        self.conn.execute("COMMIT")

    def fail(self, ids: Sequence[str], error: str) -> None:
        """Count a failed attempt and reschedule, one UPDATE of all the rows."""
        marks = ",".join("?" * len(ids))
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            f"UPDATE q SET retry_count = retry_count + 1, next_retry_at = ?, last_error = ?,"
            f" lease_until = NULL WHERE id IN ({marks})",
            (time.time() + 60.0, error, *ids),
        )
        self.conn.execute("COMMIT")

    def count(self) -> int:
        """Entries in the queue."""
        return int(self.conn.execute("SELECT count(*) FROM q").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def open_events_floor(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """The collector ingest floor's table: events keyed by id with a JSON payload,
    WAL, ``synchronous`` as given (the collector itself commits with ``FULL``)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, type TEXT,"
        " ts INTEGER, install_id TEXT, payload TEXT)"
    )
    return conn


def events_floor_rows(batches: int, batch: int) -> list[list[tuple[str, str, int, str, str]]]:
    """``batches`` batches of ``batch`` fresh events as the floor's rows."""
    return [
        [
            (e["id"], e["type"], e["timestamp"], e["install_id"], json.dumps(e))
            for e in _ours.event_dicts(batch)
        ]
        for _ in range(batches)
    ]


def insert_events_floor(
    conn: sqlite3.Connection, rows: list[list[tuple[str, str, int, str, str]]]
) -> None:
    """Insert each batch with one ``executemany`` in a transaction of its own."""
    for batch in rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
