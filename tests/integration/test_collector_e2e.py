"""End to end: TelemetryService -> https transport -> a real collector subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from telemetry_core import TelemetryConfig, TelemetryService
from tests.integration.test_collector_protocol import KEY, CollectorProcess


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(tmp_path, trustme.CA())
    yield proc
    proc.stop()


def make_config(
    tmp_path: Path, collector: CollectorProcess, **overrides: object
) -> TelemetryConfig:
    options: dict[str, object] = {
        "app": "e2e-app",
        "db_path": tmp_path / "client.db",
        "enabled": True,
        "remote_enabled": True,
        "endpoint": f"{collector.url}/v1/submit",
        "api_key": KEY,
        "ca_bundle": str(collector.ca_path),
        "submission_batch_size": 50,
        "submission_rate_limit": 60_000,
        "submission_interval": 3600.0,
    }
    options.update(overrides)
    return TelemetryConfig(**options)  # type: ignore[arg-type]


def test_client_events_are_counted_exactly_once(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    config = make_config(tmp_path, collector)
    with TelemetryService(config) as telemetry:
        ids = [
            telemetry.track("cmd", {"n": i}, duration_ms=float(i + 1), success=i % 5 != 0)
            for i in range(120)
        ]
        assert all(ids)
        telemetry.submit_now()
        again = telemetry.submit_now()  # nothing left to send
        assert again.events_accepted == 120
    stats = collector.stats("?bucket=day")
    assert stats["totals"]["count"] == 120
    assert stats["totals"]["duplicates"] == 0
    (row,) = stats["series"]
    assert (row["app"], row["type"], row["success"], row["failure"]) == ("e2e-app", "cmd", 96, 24)
    assert row["p50_ms"] == pytest.approx(60.0, rel=0.02)
    assert row["installs"] == 1


def _writer_child(collector_pid: int) -> int:
    """The pid of the collector's SQLite writer process (a child running
    ``telemetry_core.collector.sqlite_writer_process``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == collector_pid and b"sqlite_writer_process" in cmdline:
            return int(entry.name)
    raise AssertionError("the collector has no writer process")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_events_survive_the_collector_s_writer_process_being_killed(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    """An operator's nightmare, from outside: the kernel kills the collector's SQLite
    writer (out of memory) between two uploads. The app just keeps recording and
    sending; every event arrives once, and the collector serves on."""
    import os
    import signal
    import time

    config = make_config(tmp_path, collector)
    with TelemetryService(config) as telemetry:
        first = [telemetry.track("cmd", {"n": i}) for i in range(60)]
        assert telemetry.submit_now().events_accepted == 60
        old = _writer_child(collector.proc.pid)
        os.kill(old, signal.SIGKILL)
        second = [telemetry.track("cmd", {"n": i}) for i in range(60, 150)]
        assert all(first + second)
        # The app's own calls, nothing more: a submit now and, if a batch met the
        # dying writer, the next one (the worker would do the same on its interval).
        deadline = time.monotonic() + 30
        while telemetry.queue_stats().pending and time.monotonic() < deadline:
            telemetry.submit_now()
        assert telemetry.queue_stats().pending == 0
    assert _writer_child(collector.proc.pid) != old
    stats = collector.stats("?bucket=day")
    assert stats["totals"]["count"] == 150
    assert collector.proc.poll() is None
