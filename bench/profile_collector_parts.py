"""Where the SQLite collector's ingest time goes, part by part.

``python -m bench.profile_collector_parts [seconds] [clients]`` measures, one
after the other on this machine:

1. the collector as ``serve`` runs it (SQLite, TLS on loopback, ``clients``
   threads POSTing pre-encoded batches of 100 fresh events), its writer in a
   child process: events/s, the CPU per event of the event-loop thread, of the
   thread that hands groups to the writer, of the writer process, and of the load
   generator (this process's client threads);
2. the same with the writer's transactions on the store's thread (the collector
   before it had a writer process);
3. the same collector with the writer's commit left out: every batch is answered
   as stored and nothing touches the file; the ceiling of the HTTP side (TLS,
   parsing, validation);
4. the writer alone, in this process: groups of four 100-event batches through
   :class:`~telemetry_core.collector.sqlite_writer.SQLiteWriter`, ``synchronous=FULL``
   as the collector commits;
5. the raw floor of ``ingest``: stdlib ``sqlite3`` ``executemany``, one
   transaction per 100 rows, ``synchronous=NORMAL``.

Parts 2 and 3 start this module as the collector (``python -m
bench.profile_collector_parts serve ...`` with ``BENCH_WRITER=thread`` or ``none``),
a bench-only entry point. It ends with the arithmetic docs/performance.md cites: the
CPU one event costs in all against what two cores give.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _cpu, _ours, _raw
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


def _drive(work: Path, seconds: float, clients: int, writer: str) -> dict[str, Any]:
    """Run one collector under ``clients`` POSTing threads; return rates and CPU.
    ``writer``: ``process`` (as served), ``thread`` or ``none`` (no writes)."""
    import urllib3

    (work / "store").mkdir(parents=True)
    certs = Certs(work / "tls")
    pids: list[int] = []
    # About as many batches as the collector takes in ``seconds`` at 60k events/s.
    per_client = max(10, int(seconds * 600 / clients))
    work_lists = [_bodies(per_client) for _ in range(clients)]
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    with _ours.collector(
        work / "store",
        cert=certs.cert,
        key=certs.key,
        api_key=API_KEY,
        module="telemetry_core.collector"
        if writer == "process"
        else "bench.profile_collector_parts",
        env_extra={"BENCH_WRITER": writer},
        pids=pids,
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
        children = _cpu.children(pids[0])
        before, self_before = _thread_seconds(pids[0]), _cpu.self_seconds()
        children_before = _cpu.total(children)
        elapsed_ns, errors = _ours.post_batches(pools, work_lists, headers, 300)
        elapsed = elapsed_ns / 1e9
        after, self_after = _thread_seconds(pids[0]), _cpu.self_seconds()
        children_after = _cpu.total(children)
        if errors:
            raise RuntimeError(f"collector answered {errors[0]}")
    events = clients * per_client * BATCH
    per_thread = {
        name: (after[name] - before.get(name, 0.0)) * 1e6 / events
        for name in after
        if after[name] - before.get(name, 0.0) > 0
    }
    # Python does not name its threads for the OS here: the event loop is the
    # main thread (tid = pid); the writer thread is the busiest of the others.
    main_tid = f"{pids[0]}:"
    loop = sum(v for k, v in per_thread.items() if k.startswith(main_tid))
    others = sorted((v for k, v in per_thread.items() if not k.startswith(main_tid)), reverse=True)
    return {
        "events_per_s": events / elapsed,
        "loop_us": loop,
        "writer_us": others[0] if others else 0.0,
        "other_us": sum(others[1:]),
        "writer_process_us": (children_after - children_before) * 1e6 / events,
        "load_generator_us": (self_after - self_before) * 1e6 / events,
    }


def _writer_alone(work: Path, groups: int) -> dict[str, float]:
    """The writer alone: ``groups`` groups of four 100-event batches."""
    import msgspec

    from telemetry_core.collector.sqlite_writer import SQLiteWriter
    from telemetry_core.schema import Event

    decode = msgspec.json.Decoder(list[Event]).decode
    writer = SQLiteWriter(work / "writer.db")
    try:
        now = int(time.time() * 1000)
        prepared = [
            [(decode(json.dumps(_ours.event_dicts(BATCH))), now) for _ in range(4)]
            for _ in range(groups)
        ]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        for group in prepared:
            writer.commit(group, {})
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    finally:
        writer.close()
    events = groups * 4 * BATCH
    return {"wall_us": wall * 1e6 / events, "cpu_us": cpu * 1e6 / events}


def _raw_floor(work: Path, batches: int) -> float:
    """Events/s of the ``ingest`` floor (executemany, one transaction per batch)."""
    conn = _raw.open_events_floor(work / "raw.db")
    rows = _raw.events_floor_rows(batches, BATCH)
    t0 = time.perf_counter()
    _raw.insert_events_floor(conn, rows)
    elapsed = time.perf_counter() - t0
    conn.close()
    return batches * BATCH / elapsed


def main(seconds: float = 6.0, clients: int = 4) -> None:
    """Measure every part and print the table and the arithmetic."""
    with tempfile.TemporaryDirectory(prefix="telemetry-parts-") as tmp:
        work = Path(tmp)
        served = _drive(work / "process", seconds, clients, "process")
        threaded = _drive(work / "thread", seconds, clients, "thread")
        http = _drive(work / "none", seconds, clients, "none")
        writer = _writer_alone(work, 150)
        raw = _raw_floor(work, 400)
    print(f"# SQLite collector, {clients} clients x 100-event batches, TLS on loopback")
    print(f"{'part':<52} {'events/s':>9}  CPU us/event")
    print(
        f"{'1. collector as served (writer process)':<52} {served['events_per_s']:>9,.0f}  "
        f"loop {served['loop_us']:.1f}, hand-off thread {served['writer_us']:.1f}, "
        f"writer process {served['writer_process_us']:.1f}; "
        f"load generator {served['load_generator_us']:.1f}"
    )
    print(
        f"{'2. writer on the store thread (before)':<52} {threaded['events_per_s']:>9,.0f}  "
        f"loop {threaded['loop_us']:.1f}, writer thread {threaded['writer_us']:.1f}; "
        f"load generator {threaded['load_generator_us']:.1f}"
    )
    print(
        f"{'3. no writes (HTTP side ceiling)':<52} {http['events_per_s']:>9,.0f}  "
        f"loop {http['loop_us']:.1f}, others {http['other_us'] + http['writer_us']:.1f}; "
        f"load generator {http['load_generator_us']:.1f}"
    )
    print(
        f"{'4. the writer alone (groups of 4 x 100, FULL)':<52} "
        f"{1e6 / writer['wall_us']:>9,.0f}  wall {writer['wall_us']:.2f}, "
        f"cpu {writer['cpu_us']:.2f}"
    )
    print(f"{'5. raw floor (executemany, NORMAL)':<52} {raw:>9,.0f}")
    need = 0.5 * raw
    total = http["loop_us"] + writer["cpu_us"] + served["load_generator_us"]
    cores = os.cpu_count() or 1
    print(
        f"\n0.5x the raw floor is {need:,.0f} events/s; HTTP side {http['loop_us']:.1f} + writer "
        f"{writer['cpu_us']:.1f} + load generator {served['load_generator_us']:.1f} = {total:.1f}"
        f" us of CPU per event, so {cores} fully busy cores carry at most"
        f" {cores * 1e6 / total:,.0f} events/s ({cores * 1e6 / total / raw:.2f}x the floor);"
        f" the collector ran at {served['events_per_s'] / raw:.2f}x as served,"
        f" {threaded['events_per_s'] / raw:.2f}x with the writer on a thread."
    )


def _serve(writer: str) -> None:
    """``telemetry-collector serve`` with the SQLite writer on the store's thread
    (``thread``) or answering every batch as stored without writing (``none``)."""
    from telemetry_core.collector import server, sqlite_store
    from telemetry_core.collector.cli import main as collector_main
    from telemetry_core.collector.store import IngestOutcome

    def commit_nothing(self: Any, batches: list[Any]) -> None:
        self._take_counters()
        self._release(sum(len(b.events) for b in batches))
        for batch in batches:
            outcome = IngestOutcome(inserted=(True,) * len(batch.events))
            batch.loop.call_soon_threadsafe(sqlite_store._resolve, batch.future, outcome, None)

    def open_on_thread(location: Any, **options: Any) -> Any:
        return sqlite_store.SQLiteStore(location.db, **options)

    server.open_store = open_on_thread
    if writer == "none":
        sqlite_store.SQLiteStore._commit_group = commit_nothing  # type: ignore[method-assign]
    collector_main()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":  # started by _drive (parts 2 and 3)
        _serve(os.environ.get("BENCH_WRITER", "thread"))
    else:
        main(
            float(sys.argv[1]) if len(sys.argv) > 1 else 6.0,
            int(sys.argv[2]) if len(sys.argv) > 2 else 4,
        )
