"""End to end over real HTTPS: TelemetryService -> https transport -> fake collector."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from telemetry_core import TelemetryConfig, TelemetryService
from tests.fake_collector import FakeCollector, Reply
from tests.unit.test_worker import FakeClock


def make_service(
    tmp_path: Path, collector: FakeCollector, clock: FakeClock | None = None, **changes: Any
) -> TelemetryService:
    options: dict[str, Any] = {
        "app": "demo",
        "db_path": tmp_path / "telemetry.db",
        "enabled": True,
        "remote_enabled": True,
        "endpoint": collector.submit_url,
        "ca_bundle": collector.ca_path,
        "api_key": "k-123",
        "do_not_track": False,
        "submission_interval": 3600.0,
        "submission_batch_size": 10,
        "timeout": 10.0,
    }
    options.update(changes)
    # One fake clock drives both: the pause after a failure is monotonic.
    kwargs: dict[str, Any] = {"clock": clock, "monotonic": clock} if clock is not None else {}
    # No background worker: the tests drive submit_now.
    return TelemetryService(TelemetryConfig(**options), background=False, **kwargs)


def test_track_then_submit_delivers_every_event_once(
    tmp_path: Path, fake_collector: FakeCollector
) -> None:
    fake_collector.api_keys = {"k-123"}
    service = make_service(tmp_path, fake_collector)
    ids = [
        service.track("command_executed", {"command": "run", "i": i}, duration_ms=1.5, success=True)
        for i in range(25)
    ]
    scrubbed = service.track("error", {"message": "failed for jane@example.com"})
    stats = service.submit_now()
    service.close()
    received = {e.id: e for e in fake_collector.events}
    assert set(received) == {*ids, scrubbed}
    assert len(fake_collector.event_ids) == 26
    assert fake_collector.duplicates == 0
    assert stats.submissions == 3 and stats.successful == 3 and stats.events_accepted == 26
    assert stats.queue_size == 0
    event = received[ids[0]]
    assert event.properties == {"command": "run", "i": 0}
    assert event.app == "demo" and event.duration_ms == 1.5 and event.success is True
    assert received[scrubbed].properties == {"message": "failed for <email>"}
    submits = fake_collector.submit_requests
    assert all(r.headers.get("x-api-key") == "k-123" for r in submits)
    # A second submit has nothing to send.
    again = make_service(tmp_path, fake_collector)
    assert again.submit_now().submissions == 3
    assert len(fake_collector.submit_requests) == 3


def test_retry_after_then_delivery(tmp_path: Path, fake_collector: FakeCollector) -> None:
    clock = FakeClock()
    service = make_service(tmp_path, fake_collector, clock=clock)
    ids = [service.track("t", {"i": i}) for i in range(5)]
    fake_collector.script(Reply(status=503, headers={"Retry-After": "7"}))
    stats = service.submit_now()
    assert stats.failed == 1 and stats.queue_size == 5 and fake_collector.events == []
    worker = service.worker
    assert worker is not None and worker.pause_until == pytest.approx(clock.now + 7)
    clock.now += 3
    assert service.submit_now().submissions == 1  # server pause honoured
    clock.now += 5
    stats = service.submit_now()
    assert stats.successful == 1 and stats.retries == 1 and stats.queue_size == 0
    assert sorted(fake_collector.event_ids) == sorted(ids)
    service.close()


def test_too_large_batches_are_split(tmp_path: Path, fake_collector_factory: Any) -> None:
    collector = fake_collector_factory(max_events=3)
    service = make_service(tmp_path, collector)
    ids = [service.track("t", {"i": i}) for i in range(10)]
    stats = service.submit_now()
    service.close()
    assert sorted(collector.event_ids) == sorted(ids)
    assert stats.queue_size == 0 and stats.dead == 0
    statuses = [r.status for r in collector.submit_requests]
    assert statuses.count(413) >= 1 and statuses.count(200) >= 4


def test_an_unknown_key_dead_letters_and_a_new_key_revives_them_by_itself(
    tmp_path: Path, fake_collector: FakeCollector
) -> None:
    fake_collector.api_keys = {"k-fixed"}
    service = make_service(tmp_path, fake_collector)
    ids = [service.track("t") for _ in range(3)]
    stats = service.submit_now()
    service.close()
    assert stats.dead == 3 and stats.queue_size == 0 and fake_collector.events == []
    # The app ships a release with the right key: no revive step by anyone.
    fixed = make_service(tmp_path, fake_collector, api_key="k-fixed")
    stats = fixed.submit_now()
    fixed.close()
    assert stats.dead == 0 and sorted(fake_collector.event_ids) == sorted(ids)


def test_a_manual_retry_dead_still_revives(tmp_path: Path, fake_collector: FakeCollector) -> None:
    fake_collector.api_keys = {"another"}
    service = make_service(tmp_path, fake_collector)
    ids = [service.track("t") for _ in range(3)]
    assert service.submit_now().dead == 3
    fake_collector.api_keys = {"k-123"}  # fixed on the server side: same settings here
    assert service.retry_dead() == 3
    stats = service.submit_now()
    service.close()
    assert stats.dead == 0 and sorted(fake_collector.event_ids) == sorted(ids)


def test_background_worker_delivers(tmp_path: Path, fake_collector: FakeCollector) -> None:
    config = TelemetryConfig(
        app="demo",
        db_path=tmp_path / "telemetry.db",
        enabled=True,
        remote_enabled=True,
        endpoint=fake_collector.submit_url,
        ca_bundle=fake_collector.ca_path,
        do_not_track=False,
        submission_interval=0.1,
    )
    with TelemetryService(config) as service:
        ids = [service.track("t", {"i": i}) for i in range(7)]
        assert fake_collector.wait_for_events(7, timeout=20)
    assert sorted(fake_collector.event_ids) == sorted(ids)


_EXIT_APP = textwrap.dedent(
    """
    import sys
    from telemetry_core import TelemetryConfig, TelemetryService
    config = TelemetryConfig(
        app="demo", db_path=sys.argv[1], enabled=True, do_not_track=False,
        remote_enabled=True, endpoint=sys.argv[2], timeout=5.0,
    )
    with TelemetryService(config) as telemetry:
        telemetry.track("command_executed", {"command": "run"}, duration_ms=12.5, success=True)
    """
)


@pytest.mark.slow
def test_exit_with_pending_events_and_the_endpoint_down_is_clean_every_time(
    tmp_path: Path,
) -> None:
    """30 processes record one event and exit with 2,000 pending and nothing
    listening: every exit status is 0 (a daemon worker left inside SQLite or
    OpenSSL at interpreter finalization crashed about 1 run in 20 with SIGSEGV)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"https://127.0.0.1:{port}/v1/submit"
    db = tmp_path / "pending.db"
    config = TelemetryConfig(
        app="demo",
        db_path=db,
        enabled=True,
        do_not_track=False,
        remote_enabled=True,
        endpoint=endpoint,
    )
    filler = TelemetryService(config, background=False)
    try:
        for i in range(2000):
            assert filler.track("pending", {"i": i}) is not None
    finally:
        filler.close()
    codes: list[int] = []
    deadline = time.monotonic() + 120
    for _ in range(30):
        assert time.monotonic() < deadline, f"took too long; exit codes so far {codes}"
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_APP, str(db), endpoint],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        codes.append(proc.returncode)
        assert proc.returncode == 0, (codes, proc.stderr[-2000:])
    assert codes == [0] * 30


_SHORT_LIVED_APP = textwrap.dedent(
    """
    import sys, time
    from telemetry_core import TelemetryConfig, TelemetryService

    db, endpoint, ca, exit_flush = sys.argv[1:5]
    config = TelemetryConfig(app="oneshot", db_path=db, enabled=True, remote_enabled=True,
                             endpoint=endpoint, ca_bundle=ca, api_key="k-123",
                             do_not_track=False, exit_flush=float(exit_flush))
    telemetry = TelemetryService(config)
    telemetry.track("command_executed", {"n": 0})
    time.sleep(0.5)  # the worker's first cycle sends this one; later ones wait an interval
    for n in range(1, 5):
        telemetry.track("command_executed", {"n": n})
    # A one-shot CLI run ends here, without close() or submit_now().
    """
)


def _run_short_lived(tmp_path: Path, collector: FakeCollector, exit_flush: float) -> None:
    db = tmp_path / f"oneshot-{exit_flush}.db"
    argv = [sys.executable, "-c", _SHORT_LIVED_APP, str(db), collector.submit_url]
    proc = subprocess.run(
        [*argv, collector.ca_path, str(exit_flush)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_short_lived_process_sends_its_events_at_exit(
    tmp_path: Path, fake_collector: FakeCollector
) -> None:
    _run_short_lived(tmp_path, fake_collector, exit_flush=0.25)
    assert len(fake_collector.event_ids) == 5


def test_exit_flush_zero_leaves_the_events_queued_for_the_next_run(
    tmp_path: Path, fake_collector: FakeCollector
) -> None:
    _run_short_lived(tmp_path, fake_collector, exit_flush=0.0)
    assert len(fake_collector.event_ids) == 1


def test_no_exit_flush_while_the_collector_is_down(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = tmp_path / "down.db"
    proc = subprocess.run(
        [sys.executable, "-c", _SHORT_LIVED_APP, str(db), f"https://127.0.0.1:{port}/v1/submit",
         "/nonexistent-ca.pem", "5.0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Offline after the first failure: the 5 s budget is not spent waiting.
    config = TelemetryConfig(app="oneshot", db_path=db, enabled=True, do_not_track=False)
    with TelemetryService(config, background=False) as service:
        assert service.queue_stats().pending == 5


_WITH_BLOCK_APP = textwrap.dedent(
    """
    import sys, time
    from telemetry_core import TelemetryConfig, TelemetryService

    db, endpoint, ca = sys.argv[1:4]
    config = TelemetryConfig(app="oneshot", db_path=db, enabled=True, remote_enabled=True,
                             endpoint=endpoint, ca_bundle=ca, api_key="k-123",
                             do_not_track=False)
    with TelemetryService(config) as telemetry:
        telemetry.track("command_executed", {"n": 0})
        time.sleep(0.5)  # the worker's first cycle sends this one
        for n in range(1, 5):
            telemetry.track("command_executed", {"n": n})
    """
)


def test_leaving_a_with_block_sends_what_is_due_within_the_exit_flush(
    tmp_path: Path, fake_collector: FakeCollector
) -> None:
    assert fake_collector.ca_path is not None
    proc = subprocess.run(
        [sys.executable, "-c", _WITH_BLOCK_APP, str(tmp_path / "with.db"),
         fake_collector.submit_url, fake_collector.ca_path],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(fake_collector.event_ids) == 5
