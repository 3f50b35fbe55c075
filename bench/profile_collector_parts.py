"""Where the SQLite collector's ingest time goes, part by part.

``python -m bench.profile_collector_parts [seconds] [clients]`` measures, one
after the other on this machine:

1. the collector as ``ingest`` runs it (SQLite, TLS on loopback, ``clients``
   threads POSTing pre-encoded batches of 100 fresh events): events/s, the CPU of
   its event-loop thread and of its writer thread per event (``/proc``), and the
   CPU of the load generator (this process's client threads);
2. the same collector with the writer's commit left out
   (this module started as ``python -m bench.profile_collector_parts serve ...``, a
   bench-only entry point: every batch is answered as stored, nothing touches the file):
   the ceiling of the HTTP side, TLS, parsing and validation;
3. the writer alone, in this process: groups of four 100-event batches through
   the store's commit, with ``synchronous=FULL`` as the collector commits;
4. the raw floor of ``ingest``: stdlib ``sqlite3`` ``executemany``, one
   transaction per 100 rows, ``synchronous=NORMAL``.

It ends with the arithmetic docs/performance.md cites: the CPU one event costs
in all (HTTP side + writer + load generator) against what two cores give.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import _cpu, _ours
from bench._tls import Certs

API_KEY = "bench-submission-key"
BATCH = 100
_TICK = os.sysconf("SC_CLK_TCK")


def _thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid``, keyed ``tid:name``."""
    found: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[f"{tid}:{name}"] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def _bodies(n: int) -> list[bytes]:
    return [json.dumps({"events": _ours.event_dicts(BATCH)}).encode() for _ in range(n)]


def _drive(work: Path, seconds: float, clients: int, module: str) -> dict[str, Any]:
    """Run one collector under ``clients`` POSTing threads; return rates and CPU."""
    import urllib3

    (work / "store").mkdir(parents=True)
    certs = Certs(work / "tls")
    pids: list[int] = []
    # About as many batches as the collector takes in ``seconds`` at 60k events/s.
    per_client = max(10, int(seconds * 600 / clients))
    work_lists = [_bodies(per_client) for _ in range(clients)]
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    with _ours.collector(
        work / "store", cert=certs.cert, key=certs.key, api_key=API_KEY, module=module, pids=pids
    ) as base:
        port = int(base.rsplit(":", 1)[1])
        pools = [
            urllib3.HTTPSConnectionPool(
                "127.0.0.1", port, ca_certs=str(certs.ca), assert_hostname="127.0.0.1", maxsize=1
            )
            for _ in range(clients)
        ]
        for pool in pools:  # warm-up: connections, TLS sessions, caches
            pool.request("POST", "/v1/submit", body=_bodies(1)[0], headers=headers)
        errors: list[str] = []

        def client(pool: urllib3.HTTPSConnectionPool, bodies: list[bytes]) -> None:
            for body in bodies:
                r = pool.request("POST", "/v1/submit", body=body, headers=headers)
                if r.status != 200:
                    errors.append(f"{r.status} {r.data[:200]!r}")
                    return

        threads = [
            threading.Thread(target=client, args=(p, w))
            for p, w in zip(pools, work_lists, strict=True)
        ]
        before, self_before = _thread_seconds(pids[0]), _cpu.self_seconds()
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        elapsed = time.perf_counter() - t0
        after, self_after = _thread_seconds(pids[0]), _cpu.self_seconds()
        if errors:
            raise RuntimeError(f"collector answered {errors[0]}")
    events = clients * per_client * BATCH
    per_thread = {
        name: (after[name] - before.get(name, 0.0)) * 1e6 / events
        for name in after
        if after[name] - before.get(name, 0.0) > 0
    }
    # Python does not name its threads for the OS here: the event loop is the
    # main thread (tid = pid); the writer is the busiest of the others.
    main_tid = f"{pids[0]}:"
    loop = sum(v for k, v in per_thread.items() if k.startswith(main_tid))
    others = sorted((v for k, v in per_thread.items() if not k.startswith(main_tid)), reverse=True)
    return {
        "events_per_s": events / elapsed,
        "loop_us": loop,
        "writer_us": others[0] if others else 0.0,
        "other_us": sum(others[1:]),
        "load_generator_us": (self_after - self_before) * 1e6 / events,
    }


def _writer_alone(work: Path, groups: int) -> dict[str, float]:
    """The store's commit alone: ``groups`` groups of four 100-event batches."""
    import msgspec

    from telemetry_core.collector.sqlite_store import SQLiteStore, _Batch
    from telemetry_core.schema import Event

    class _NoLoop:
        def call_soon_threadsafe(self, *args: object) -> None:
            pass

    decode = msgspec.json.Decoder(list[Event]).decode
    store = SQLiteStore(work / "writer.db")
    try:
        now = int(time.time() * 1000)
        prepared = [
            [
                _Batch(decode(json.dumps(_ours.event_dicts(BATCH))), now, _NoLoop(), None)  # type: ignore[arg-type]
                for _ in range(4)
            ]
            for _ in range(groups)
        ]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        for group in prepared:
            store._commit_group(group)
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    finally:
        asyncio.run(store.close())
    events = groups * 4 * BATCH
    return {"wall_us": wall * 1e6 / events, "cpu_us": cpu * 1e6 / events}


def _raw_floor(work: Path, batches: int) -> float:
    """Events/s of the ``ingest`` floor (executemany, one transaction per batch)."""
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT, ts INTEGER,"
        " install_id TEXT, payload TEXT)"
    )
    rows = [
        [
            (e["id"], e["type"], e["timestamp"], e["install_id"], json.dumps(e))
            for e in _ours.event_dicts(BATCH)
        ]
        for _ in range(batches)
    ]
    t0 = time.perf_counter()
    for batch in rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return batches * BATCH / elapsed


def main(seconds: float = 6.0, clients: int = 4) -> None:
    """Measure every part and print the table and the arithmetic."""
    with tempfile.TemporaryDirectory(prefix="telemetry-parts-") as tmp:
        work = Path(tmp)
        full = _drive(work / "full", seconds, clients, "telemetry_core.collector")
        http = _drive(work / "http", seconds, clients, "bench.profile_collector_parts")
        writer = _writer_alone(work, 150)
        raw = _raw_floor(work, 400)
    print(f"# SQLite collector, {clients} clients x 100-event batches, TLS on loopback")
    print(f"{'part':<58} {'events/s':>9}  CPU us/event")
    print(
        f"{'1. collector (as ingest runs it)':<58} {full['events_per_s']:>9,.0f}  "
        f"loop {full['loop_us']:.1f}, writer {full['writer_us']:.1f}, "
        f"others {full['other_us']:.1f}; load generator {full['load_generator_us']:.1f}"
    )
    print(
        f"{'2. the same without the writer (HTTP side ceiling)':<58} "
        f"{http['events_per_s']:>9,.0f}  loop {http['loop_us']:.1f}, "
        f"others {http['other_us'] + http['writer_us']:.1f}; "
        f"load generator {http['load_generator_us']:.1f}"
    )
    print(
        f"{'3. the writer alone (groups of 4 x 100, FULL)':<58} "
        f"{1e6 / writer['wall_us']:>9,.0f}  wall {writer['wall_us']:.2f}, "
        f"cpu {writer['cpu_us']:.2f}"
    )
    print(f"{'4. raw floor (executemany, NORMAL)':<58} {raw:>9,.0f}")
    need = 0.5 * raw
    total = http["loop_us"] + writer["cpu_us"] + full["load_generator_us"]
    cores = os.cpu_count() or 1
    print(
        f"\n0.5x the raw floor is {need:,.0f} events/s; HTTP side {http['loop_us']:.1f} + writer "
        f"{writer['cpu_us']:.1f} + load generator {full['load_generator_us']:.1f} = {total:.1f} us "
        f"of CPU per event, so {cores} fully busy cores carry at most {cores * 1e6 / total:,.0f}"
        f" events/s ({cores * 1e6 / total / raw:.2f}x the floor); the collector ran at"
        f" {full['events_per_s'] / raw:.2f}x."
    )


def _serve_without_writes() -> None:
    """``telemetry-collector serve`` whose SQLite writer answers every batch as
    stored without writing (this benchmark's HTTP-side ceiling only)."""
    from telemetry_core.collector import sqlite_store
    from telemetry_core.collector.cli import main as collector_main
    from telemetry_core.collector.store import IngestOutcome

    def commit_nothing(self: Any, batches: list[Any]) -> None:
        self._take_counters()
        self._release(sum(len(b.events) for b in batches))
        for batch in batches:
            outcome = IngestOutcome(inserted=(True,) * len(batch.events))
            batch.loop.call_soon_threadsafe(sqlite_store._resolve, batch.future, outcome, None)

    sqlite_store.SQLiteStore._commit_group = commit_nothing  # type: ignore[method-assign]
    collector_main()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        _serve_without_writes()  # started by _drive: ``-m bench.profile_collector_parts serve ...``
    else:
        main(
            float(sys.argv[1]) if len(sys.argv) > 1 else 6.0,
            int(sys.argv[2]) if len(sys.argv) > 2 else 4,
        )
