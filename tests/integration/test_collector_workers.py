"""``serve --workers N``: several server processes on one PostgreSQL store (real
subprocesses, a real server, plain HTTP on 127.0.0.1)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from telemetry_core.collector.cli import main
from tests.conftest import wire_event
from tests.integration.collector_process import collector_command
from tests.integration.pg import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

KEY = "workers-key-1"
ADMIN = "workers-admin-token"
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
_WORKER = re.compile(r"Started server process \[(\d+)\]")


def _lines(process: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        into.put(line)


def _start(url: str) -> tuple[subprocess.Popen[str], threading.Thread, queue.Queue[str]]:
    env = {
        **os.environ,
        "TELEMETRY_COLLECTOR_API_KEYS": KEY,
        "TELEMETRY_COLLECTOR_ADMIN_TOKEN": ADMIN,
        "TELEMETRY_COLLECTOR_DATABASE_URL": url,
    }
    command = [*collector_command(), "serve", "--port", "0", "--workers", "2"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process, lines), daemon=True)
    reader.start()
    return process, reader, lines


def _wait_started(lines: queue.Queue[str]) -> tuple[int, list[int]]:
    """The shared port and the worker pids, once both workers have started."""
    port, pids, seen = 0, [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(pids) < 2:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(line)
        if match := _LISTENING.search(line):
            port = int(match.group(1))
        if match := _WORKER.search(line):
            pids.append(int(match.group(1)))
    assert port and len(pids) == 2, seen
    return port, pids


def _stop(process: subprocess.Popen[str], reader: threading.Thread) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    reader.join(timeout=10)
    assert process.stderr is not None
    process.stderr.close()


def test_two_workers_share_the_port_count_once_and_stop_cleanly() -> None:
    with fresh_database() as url:
        process, reader, lines = _start(url)
        try:
            port, _pids = _wait_started(lines)
            base = f"http://127.0.0.1:{port}"
            now_ms = int(time.time() * 1000)
            batch = [wire_event(timestamp=now_ms - 1000) for _ in range(30)]
            headers = {"X-API-Key": KEY}
            with httpx.Client(base_url=base, timeout=10) as client:
                answers = [
                    client.post("/v1/submit", json={"events": batch}, headers=headers)
                    for _ in range(6)
                ]
                stats = client.get("/v1/stats", headers={"Authorization": f"Bearer {ADMIN}"})
            assert [a.status_code for a in answers] == [200] * 6
            assert sum(a.json()["accepted"] for a in answers) == 30
            assert stats.json()["totals"]["count"] == 30
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            _stop(process, reader)
    rest = "".join(list(lines.queue))
    assert "collector workers stopped exit_codes=[0, 0]" in rest


def test_a_worker_that_dies_stops_the_others_and_the_status_says_failure() -> None:
    with fresh_database() as url:
        process, reader, lines = _start(url)
        try:
            _port, pids = _wait_started(lines)
            os.kill(pids[0], signal.SIGKILL)
            assert process.wait(timeout=60) == 1
        finally:
            _stop(process, reader)
    rest = "".join(list(lines.queue))
    assert "ended on its own exit_code=-9; stopping the others" in rest


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    args = ["serve", "--db", str(tmp_path / "c.db"), "--api-key", "k", "--workers", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--workers applies to --database-url (PostgreSQL) only" in result.output
    assert "one writer" in result.output


def test_workers_with_the_metrics_port_are_refused() -> None:
    args = ["serve", "--database-url", "postgresql://db/x", "--api-key", "k"]
    result = CliRunner().invoke(main, [*args, "--workers", "2", "--metrics-port", "9464"])
    assert result.exit_code == 2
    assert "use --metrics-token with --workers" in result.output
