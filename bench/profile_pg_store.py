"""Profile ``PostgresStore.ingest_blocking`` in this process: 280 batches of 100
fresh events into a fresh database, with pyinstrument, and the CPU this process
spent per event. ``python -m bench.profile_pg_store`` (PostgreSQL at
postgres@127.0.0.1:5432); bench/results/profile-collector-postgres.txt holds its
output before and after the batch became one JSON parameter.
"""

from __future__ import annotations

import time

from pyinstrument import Profiler

from bench import _cpu, _ours
from telemetry_core.collector.postgres_store import PostgresStore

DATABASE = "telemetry_bench_profile"
BATCHES = 280


def main() -> None:
    """Run the profile and print it."""
    _ours.create_pg_database(DATABASE)
    store = PostgresStore(_ours.pg_url(DATABASE), pool_max=2)
    batches = [[_ours.make_event() for _ in range(100)] for _ in range(BATCHES + 20)]
    now = int(time.time() * 1000)
    try:
        for batch in batches[:20]:  # warm-up
            store._admit(len(batch), "busy")
            store.ingest_blocking(batch, now)
        t0, c0 = time.perf_counter(), _cpu.self_seconds()
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for batch in batches[20:]:
            store._admit(len(batch), "busy")
            store.ingest_blocking(batch, now)
        profiler.stop()
        n = BATCHES * 100
        wall, cpu = (time.perf_counter() - t0) / n * 1e6, (_cpu.self_seconds() - c0) / n * 1e6
        print(f"wall {wall:.1f} us/event, cpu {cpu:.1f} us/event")
        print(profiler.output_text(unicode=False, color=False))
    finally:
        store.close_blocking()


if __name__ == "__main__":
    main()
