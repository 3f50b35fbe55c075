"""Delivery under chaos: every recorded event is counted exactly once.

Several client processes (two sharing one queue database, the others with their
own) record events while a fault proxy breaks at least 30 % of the exchanges;
clients and collectors are killed with SIGKILL at random moments and started
again. Then the faults stop, every database is drained, and the collector's
totals must equal, per type, the events in the clients' local
``telemetry_events`` tables: nothing lost, nothing counted twice, no queue
entry left. Run against the SQLite collector and against two collector
processes sharing one PostgreSQL database.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    ADMIN_TOKEN,
    API_KEY,
    FULL,
    Collector,
    Figures,
    LogVault,
)
from tests.chaos.faultproxy import FAULT_KINDS, FaultProxy, FaultRates

APP = Path(__file__).with_name("chaos_app.py")
#: Share of exchanges the proxy breaks while the chaos lasts.
FAULT_RATE = 0.35
CLIENT_TIMEOUT = 1.0

if FULL:
    SCALE = {"events": 100_000, "clients": 5, "client_kills": 12, "collector_kills": 3,
             "record_seconds": 90.0, "batch_size": 100}  # fmt: skip
else:
    SCALE = {"events": 10_000, "clients": 4, "client_kills": 4, "collector_kills": 1,
             "record_seconds": 14.0, "batch_size": 50}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if FULL else 300)]


class Client:
    """One chaos client: its id, database, quota, and current process."""

    def __init__(self, index: int, db: Path, quota: int, workdir: Path) -> None:
        self.index = index
        self.db = db
        self.quota = quota
        self.log = workdir / f"client{index}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def recorded(self) -> int:
        """Events of this client in its local database."""
        return _count_local(self.db, f"chaos.c{self.index}.%")

    def alive(self) -> bool:
        """True while a process runs."""
        return self.process is not None and self.process.poll() is None


def _count_local(db: Path, pattern: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM telemetry_events WHERE type LIKE ?", (pattern,)
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()


def _local_truth(dbs: list[Path]) -> tuple[set[str], Counter[str], int]:
    """(event ids, counts per type, queue entries left) over every client database."""
    ids: set[str] = set()
    types: Counter[str] = Counter()
    queued = 0
    for db in dbs:
        conn = sqlite3.connect(db, timeout=10)
        try:
            for event_id, event_type in conn.execute("SELECT id, type FROM telemetry_events"):
                assert event_id not in ids
                ids.add(event_id)
                types[event_type] += 1
            queued += int(conn.execute("SELECT count(*) FROM telemetry_queue").fetchone()[0])
        finally:
            conn.close()
    return ids, types, queued


def _dead_letters(dbs: list[Path]) -> int:
    """Dead queue entries over every client database."""
    dead = 0
    for db in dbs:
        conn = sqlite3.connect(db, timeout=10)
        try:
            dead += int(
                conn.execute("SELECT count(*) FROM telemetry_queue WHERE dead = 1").fetchone()[0]
            )
        finally:
            conn.close()
    return dead


def _client_command(client: Client, proxy: FaultProxy, cert_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(APP),
        *args,
        "--db",
        str(client.db),
        "--endpoint",
        f"{proxy.url}/v1/submit",
        "--api-key",
        API_KEY,
        "--ca",
        str(cert_dir / "ca.pem"),
        "--client",
        str(client.index),
        "--batch-size",
        str(SCALE["batch_size"]),
        "--timeout",
        str(CLIENT_TIMEOUT),
        "--lease",
        "2.0",
        "--log",
        str(client.log),
    ]


def _start_client(client: Client, proxy: FaultProxy, cert_dir: Path, pace: float) -> None:
    remaining = client.quota - client.recorded()
    client.starts += 1
    client.process = subprocess.Popen(
        [
            *_client_command(client, proxy, cert_dir, "record"),
            "--count",
            str(max(remaining, 0)),
            "--pace",
            str(pace),
            "--seed",
            str(client.index * 1000 + client.starts),
            "--linger",
            "5",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stats(collector: Collector) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(collector.cert_path.with_name("ca.pem")))
    with httpx.Client(verify=context, timeout=30) as http:
        response = http.get(
            f"{collector.base_url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def run_chaos(
    *,
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    restart_collector: Callable[[Collector], None],
    proxy: FaultProxy,
    rng: random.Random,
    log_vault: LogVault,
) -> dict[str, Any]:
    """Record under faults and kills, drain, and return the raw figures."""
    n_clients = SCALE["clients"]
    quota = SCALE["events"] // n_clients
    shared = tmp_path / "shared" / "telemetry.db"
    clients = [
        Client(i, shared if i < 2 else tmp_path / f"own{i}" / "telemetry.db", quota, tmp_path)
        for i in range(n_clients)
    ]
    record_seconds = float(SCALE["record_seconds"])
    pace = quota / record_seconds
    started = time.monotonic()
    # Kill moments spread over the recording window, in random order.
    client_kills = sorted(rng.uniform(1.0, record_seconds) for _ in range(SCALE["client_kills"]))
    collector_kills = sorted(
        rng.uniform(2.0, record_seconds) for _ in range(SCALE["collector_kills"])
    )
    killed_clients = 0
    for client in clients:
        _start_client(client, proxy, cert_dir, pace)
    deadline = started + record_seconds * 4 + 120
    while time.monotonic() < deadline:
        elapsed = time.monotonic() - started
        if client_kills and elapsed >= client_kills[0]:
            client_kills.pop(0)
            alive = [c for c in clients if c.alive()]
            if alive:
                victim = rng.choice(alive)
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(timeout=30)
                killed_clients += 1
        if collector_kills and elapsed >= collector_kills[0]:
            collector_kills.pop(0)
            victim_collector = rng.choice(collectors)
            victim_collector.kill()
            time.sleep(rng.uniform(0.1, 1.0))
            restart_collector(victim_collector)
        for client in clients:
            if not client.alive() and client.recorded() < client.quota:
                _start_client(client, proxy, cert_dir, pace)
        done = all(c.recorded() >= c.quota for c in clients)
        if done and not client_kills and not collector_kills:
            break
        time.sleep(0.05)
    chaos_seconds = time.monotonic() - started
    chaos_counts = proxy.snapshot()
    # The faults stop; clients still lingering finish, then each database drains.
    proxy.set_rates({})
    for client in clients:
        if client.process is not None:
            try:
                client.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                client.process.kill()
                client.process.wait(timeout=30)
    drains: list[dict[str, Any]] = []
    for db in sorted({c.db for c in clients}):
        owner = next(c for c in clients if c.db == db)
        result = subprocess.run(
            [*_client_command(owner, proxy, cert_dir, "drain"), "--linger", "120"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        drains.append(json.loads(result.stdout.strip().splitlines()[-1]))
    for client in clients:
        if client.log.exists():
            log_vault.add(f"client{client.index}", client.log.read_text())
    ids, types, queued = _local_truth(sorted({c.db for c in clients}))
    return {
        "clients": clients,
        "ids": ids,
        "types": types,
        "queued": queued,
        "dead": _dead_letters(sorted({c.db for c in clients})),
        "chaos_counts": chaos_counts,
        "chaos_seconds": chaos_seconds,
        "client_kills": killed_clients,
        "drains": drains,
        "all_recorded": all(c.recorded() >= c.quota for c in clients),
    }


def _check_and_report(
    *,
    name: str,
    run: dict[str, Any],
    collector_ids: set[str],
    stats: dict[str, Any],
    collectors: list[Collector],
    figures: Figures,
) -> None:
    ids: set[str] = run["ids"]
    types: Counter[str] = run["types"]
    counts = run["chaos_counts"]
    exchanges = counts.get("exchanges", 0)
    faulty = sum(counts.get(k, 0) for k in FAULT_KINDS)
    by_type = stats["totals"]["by_type"]
    lost = len(ids - collector_ids)
    extra = len(collector_ids - ids)
    counted_twice = sum(max(by_type.get(t, 0) - n, 0) for t, n in types.items())
    figures.record(
        name,
        command="TELEMETRY_CHAOS_FULL=1 .venv/bin/pytest tests/chaos/test_delivery_chaos.py -v",
        events_recorded=len(ids),
        event_types=len(types),
        client_processes=len(run["clients"]),
        shared_queue_databases=1,
        client_starts=sum(c.starts for c in run["clients"]),
        client_kills=run["client_kills"],
        collector_processes=len(collectors),
        collector_kills=sum(c.kills for c in collectors),
        collector_restarts=sum(c.starts for c in collectors) - len(collectors),
        exchanges=exchanges,
        faulty_exchanges=faulty,
        faulty_share=round(faulty / exchanges, 3) if exchanges else 0.0,
        faults_by_kind={k: v for k, v in sorted(counts.items()) if k != "exchanges"},
        chaos_seconds=round(run["chaos_seconds"], 1),
        dead_letters_left=run["dead"],
        collector_total=stats["totals"]["count"],
        duplicates_absorbed_by_collector=stats["totals"]["duplicates"],
        lost=lost,
        unknown_at_collector=extra,
        counted_twice=counted_twice,
        queue_entries_left=run["queued"],
    )
    assert run["all_recorded"], "the clients did not record their quota in time"
    assert exchanges > 0 and faulty / exchanges >= 0.30, counts
    assert run["client_kills"] >= SCALE["client_kills"] // 2
    assert lost == 0, f"{lost} recorded events never reached the collector"
    assert extra == 0, f"{extra} events at the collector that no client recorded"
    assert dict(by_type) == dict(types), "per-type totals differ from what was recorded"
    assert stats["totals"]["count"] == len(ids)
    assert run["queued"] == 0, "queue entries left after the drain"


def _proxy(
    server_context: Any, client_context: Any, upstreams: list[tuple[str, int]]
) -> FaultProxy:
    return FaultProxy(
        server_context,
        client_context,
        upstreams,
        rates=FaultRates.uniform(FAULT_RATE),
        seed=4,
        hang_seconds=CLIENT_TIMEOUT + 0.5,
        retry_after="1",
    )


def test_every_event_counted_once_sqlite_collector(  # noqa: PLR0917
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    server_context: Any,
    client_context: Any,
    log_vault: LogVault,
    figures: Figures,
) -> None:
    """SQLite collector: kill -9 clients and the collector under 35 % faulty exchanges."""
    collector_db = tmp_path / "collector" / "collector.db"
    collector = Collector(
        cert_dir,
        ["--db", str(collector_db)],
        extra_args=["--rate-limit", "10000000", "--rate-burst", "1000000"],
        vault=log_vault,
        name="collector-sqlite",
    )
    collectors.append(collector)
    collector.start()
    with _proxy(server_context, client_context, [collector.address]) as proxy:

        def restart(victim: Collector) -> None:
            victim.start()
            proxy.set_upstreams([victim.address])

        run = run_chaos(
            tmp_path=tmp_path,
            cert_dir=cert_dir,
            collectors=collectors,
            restart_collector=restart,
            proxy=proxy,
            rng=random.Random(11),
            log_vault=log_vault,
        )
    stats = _stats(collector)
    collector.stop()
    conn = sqlite3.connect(collector_db)
    try:
        collector_ids = {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()
    _check_and_report(
        name="delivery_sqlite",
        run=run,
        collector_ids=collector_ids,
        stats=stats,
        collectors=[collector],
        figures=figures,
    )


@pytest.mark.postgres
def test_every_event_counted_once_two_postgres_collectors(  # noqa: PLR0917
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    server_context: Any,
    client_context: Any,
    log_vault: LogVault,
    figures: Figures,
) -> None:
    """Two collector processes on one PostgreSQL database, behind one proxy (round robin)."""
    import psycopg

    from tests.integration.pg import fresh_database

    with fresh_database() as url:
        pair = [
            Collector(
                cert_dir,
                ["--database-url", url],
                extra_args=["--rate-limit", "10000000", "--rate-burst", "1000000"],
                vault=log_vault,
                name=f"collector-pg{i}",
            )
            for i in range(2)
        ]
        collectors.extend(pair)
        for collector in pair:
            collector.start()
        with _proxy(server_context, client_context, [c.address for c in pair]) as proxy:

            def restart(victim: Collector) -> None:
                victim.start()
                proxy.set_upstreams([c.address for c in pair if c.alive()])

            run = run_chaos(
                tmp_path=tmp_path,
                cert_dir=cert_dir,
                collectors=pair,
                restart_collector=restart,
                proxy=proxy,
                rng=random.Random(12),
                log_vault=log_vault,
            )
        stats = _stats(pair[0])
        for collector in pair:
            collector.stop()
        with psycopg.connect(url) as conn:
            collector_ids = {str(row[0]) for row in conn.execute("SELECT id FROM events")}
    run["ids"] = {str(uuid.UUID(i)) for i in run["ids"]}
    _check_and_report(
        name="delivery_postgres",
        run=run,
        collector_ids=collector_ids,
        stats=stats,
        collectors=pair,
        figures=figures,
    )
