"""Pages written per committed record: ``python -m bench.wal_pages [commits]``.

A WAL commit appends one frame per page it changed, so the growth of the
``-wal`` file over N commits (automatic checkpoints off while counting) is the
number of pages a record touches. Compared: the raw floor of the ``track``
benchmark (one INSERT into a table with a text primary key) and the ``sqlite``
storage's ``record()`` with and without queueing, each after 3000 warm-up
commits so the b-trees have their working depth.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import _ours

_FRAME = 24 + 4096  # frame header + one page at the default page size


def _frames(path: Path, conn: sqlite3.Connection, op: Callable[[], object], n: int) -> float:
    for _ in range(3000):
        op()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(n):
        op()
    frames = (os.path.getsize(f"{path}-wal") - 32) / _FRAME / n
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    return frames


def main(n: int = 2000) -> None:
    """Print pages written per commit for each subject."""
    with tempfile.TemporaryDirectory(prefix="telemetry-pages-") as tmp:
        work = Path(tmp)
        raw_path = work / "raw.db"
        conn = sqlite3.connect(raw_path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, payload TEXT)")

        def raw() -> None:
            event_id, payload = _ours.raw_event_json()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO events VALUES (?, ?)", (event_id, payload))
            conn.execute("COMMIT")

        print(f"raw sqlite3 INSERT+COMMIT          {_frames(raw_path, conn, raw, n):.2f} pages")
        conn.close()
        for enqueue in (True, False):
            path = work / f"ours-{enqueue}.db"
            queue = _ours.Queue(path)
            try:
                pages = _frames(
                    path,
                    queue.store.connection(),
                    lambda e=enqueue, q=queue: q.storage.record(_ours.make_event(), enqueue=e),
                    n,
                )
            finally:
                queue.close()
            label = "queued (remote on)" if enqueue else "local only (remote off)"
            print(f"ours record(), {label:<20} {pages:.2f} pages")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
