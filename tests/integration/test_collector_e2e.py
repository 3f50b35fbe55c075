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
