"""Tests of TelemetryService on real SQLite files, with a fake transport plugin."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core import _event_writer as event_writer_module
from telemetry_core import _retention as retention_module
from telemetry_core import recorder as recorder_module
from telemetry_core._forksafe import ForkGuard
from telemetry_core.errors import ConfigError, EventRejected, TransportError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import SubmissionResult
from telemetry_core.plugin_host import PluginHost
from telemetry_core.privacy import local_identifiers
from telemetry_core.schema import MAX_PROPERTIES, Event
from telemetry_core_plugins.sqlite_storage import SQLiteQueue
from tests.unit.test_worker import FakeClock, FakeTransport, FakeTransportPlugin

ROOT = Path(__file__).resolve().parents[2]


def make_config(tmp_path: Path, **changes: Any) -> TelemetryConfig:
    options: dict[str, Any] = {
        "app": "demo",
        "db_path": tmp_path / "data" / "telemetry.db",
        "enabled": True,
        "remote_enabled": False,
        "do_not_track": False,
        "submission_interval": 3600.0,
        "submission_batch_size": 10,
    }
    options.update(changes)
    return TelemetryConfig(**options)


def remote(tmp_path: Path, **changes: Any) -> TelemetryConfig:
    return make_config(
        tmp_path,
        remote_enabled=True,
        endpoint="https://127.0.0.1:9/v1/submit",
        transport="fake",
        **changes,
    )


class Rig:
    """A service with a fake transport and a fake wall clock."""

    def __init__(self, config: TelemetryConfig, **options: Any) -> None:
        self.transport = FakeTransport()
        self.plugin = FakeTransportPlugin(self.transport)
        self.clock = FakeClock()
        self.service = TelemetryService(
            config,
            host=PluginHost(load_entrypoints=False, disabled=(), plugins=[self.plugin]),
            clock=self.clock,
            **options,
        )

    def rows(self, sql: str) -> list[Any]:
        # A read through the open service first, as an app would make: it
        # stores what track() put in the write-behind journal (a closed
        # service has stored it already, and a read would open it again).
        if not self.service._closed:
            self.service.counters()
        conn = sqlite3.connect(self.service.config.db_path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def local_rig(tmp_path: Path) -> Any:
    rig = Rig(make_config(tmp_path))
    yield rig
    rig.service.close()


@pytest.fixture
def remote_rig(tmp_path: Path) -> Any:
    rig = Rig(remote(tmp_path))
    yield rig
    rig.service.close(timeout=10)


# -- consent ------------------------------------------------------------------


def test_consent_off_records_nothing_and_creates_no_file(tmp_path: Path) -> None:
    config = make_config(tmp_path, enabled=False)
    with TelemetryService(config) as telemetry:
        assert telemetry.track("command_executed", {"command": "run"}) is None
        assert telemetry.queue_stats().pending == 0
        assert telemetry.get_submission_stats().submissions == 0
        assert telemetry.event_counts() == {}
        assert telemetry.status()["install_id"] is None
    assert not (tmp_path / "data").exists()


def test_do_not_track_wins_over_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    config = TelemetryConfig(
        app="demo",
        db_path=tmp_path / "data" / "t.db",
        enabled=True,
        remote_enabled=True,
        endpoint="https://127.0.0.1:9/v1/submit",
    )
    with TelemetryService(config) as telemetry:
        assert telemetry.track("command_executed") is None
        assert telemetry.submit_now().submissions == 0
        with pytest.raises(ConfigError, match="DO_NOT_TRACK"):
            telemetry.enable(remote=True)
        telemetry.disable(purge=True)
        assert telemetry.status()["enabled"] is False
    assert not (tmp_path / "data").exists()


def test_track_records_a_minimal_event(local_rig: Rig) -> None:
    event_id = local_rig.service.track(
        "command_executed", {"command": "run"}, duration_ms=12.5, success=True, session_id="s1"
    )
    assert event_id is not None
    ((payload,),) = local_rig.rows("SELECT payload FROM telemetry_events")
    event = msgspec.json.decode(payload, type=Event)
    assert event == Event(
        id=event_id,
        type="command_executed",
        timestamp=int(local_rig.clock.now * 1000),
        install_id=local_rig.service.status()["install_id"],
        app="demo",
        session_id="s1",
        duration_ms=12.5,
        success=True,
        properties={"command": "run"},
    )
    # Nothing else about the machine: only the schema's fields are stored.
    assert set(json.loads(payload)) <= set(Event.__struct_fields__)
    # Remote off: recorded locally, not queued.
    assert local_rig.service.queue_stats().pending == 0
    assert local_rig.service.event_counts() == {"command_executed": 1}


def test_track_copies_properties(local_rig: Rig) -> None:
    props = {"path": "/home/someone/x"}
    local_rig.service.track("t", props)
    assert props == {"path": "/home/someone/x"}


def test_events_recorded_while_remote_is_off_are_never_queued(tmp_path: Path) -> None:
    rig = Rig(make_config(tmp_path))
    try:
        rig.service.track("local_only")
        rig.service.enable(remote=True, endpoint="https://127.0.0.1:9/v1/submit")
        assert rig.service.queue_stats().pending == 0
    finally:
        rig.service.close()


# -- privacy and validation ------------------------------------------------------


def test_scrubbing_masks_and_counts(local_rig: Rig) -> None:
    props: dict[str, Any] = {
        "email": "write to jane@example.com",
        "ip": "from 10.1.2.3",
        "path": "/home/jane/project",
        "secret": "token=abcdef123456",
        "plain": "run",
    }
    names = local_identifiers()
    if names:
        props["who"] = f"by {names[0]}"
    local_rig.service.track("t", props)
    ((raw,),) = local_rig.rows("SELECT properties FROM telemetry_events")
    stored = json.loads(raw)
    assert stored["email"] == "write to <email>"
    assert stored["ip"] == "from <ip>"
    assert stored["path"] == "<home_path>/project"
    assert stored["secret"] == "<secret>"
    assert stored["plain"] == "run"
    counters = local_rig.service.counters()
    assert counters["scrubbed:email"] == 1
    assert counters["scrubbed:ip"] == 1
    assert counters["scrubbed:home_path"] == 1
    assert counters["scrubbed:secret"] == 1
    if names:
        assert stored["who"] == "by <user>"
        assert counters["scrubbed:identifier"] == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "code"),
    [
        (("Bad Type",), {}, "invalid_type"),
        (("t", {f"k{i}": i for i in range(MAX_PROPERTIES + 1)}), {}, "too_many_properties"),
        (("t", {"k": "x" * 5000}), {}, "invalid_property"),
        (("t", {"bad key!": 1}), {}, "invalid_property"),
        (("t", {"k": [1, 2]}), {}, "invalid_property"),
        (("t", {1: "x"}), {}, "invalid_property"),
        (("t", {"k": float("nan")}), {}, "invalid_property"),
        (("t",), {"duration_ms": -1}, "invalid_duration"),
        (("t",), {"duration_ms": "fast"}, "invalid_duration"),
        (("t",), {"success": "yes"}, "invalid_field"),
        (("t",), {"session_id": "jane@example.com"}, "pii"),
        (("t", {f"k{i}": "x" * 1000 for i in range(20)}), {}, "too_large"),
    ],
)
def test_bad_events_are_rejected_counted_never_raised(
    local_rig: Rig, args: tuple[Any, ...], kwargs: dict[str, Any], code: str
) -> None:
    assert local_rig.service.track(*args, **kwargs) is None
    assert local_rig.service.counters().get(f"rejected:{code}") == 1
    assert local_rig.service.event_counts() == {}


def test_rejections_warn_once_per_kind(local_rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        for _ in range(3):
            local_rig.service.track("Bad")
        local_rig.service.track("t", {"k": [1]})
    assert len(caplog.records) == 2
    assert local_rig.service.counters()["rejected:invalid_type"] == 3


def test_strict_mode_raises(tmp_path: Path) -> None:
    rig = Rig(make_config(tmp_path, strict=True))
    try:
        with pytest.raises(EventRejected) as info:
            rig.service.track("t", {"k": object()})  # type: ignore[dict-item]
        assert info.value.code == "invalid_property"
        assert rig.service.counters()["rejected:invalid_property"] == 1
    finally:
        rig.service.close()


def test_a_scrubber_that_leaves_pii_gets_the_event_rejected(tmp_path: Path) -> None:
    host = PluginHost(load_entrypoints=False, disabled=("scrubber",))
    with TelemetryService(make_config(tmp_path), host=host) as telemetry:
        assert telemetry.track("t", {"mail": "a@example.com"}) is None
        assert telemetry.counters()["rejected:pii"] == 1


def test_unopenable_store_degrades_to_a_no_op(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "data" / "telemetry.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database" * 100)
    with (
        caplog.at_level(logging.WARNING, logger="telemetry_core"),
        TelemetryService(make_config(tmp_path)) as telemetry,
    ):
        assert telemetry.track("t") is None
        assert telemetry.track("t") is None
        assert telemetry.degraded is not None
    assert len(caplog.records) == 1
    assert str(db) in caplog.text


def test_unopenable_store_raises_in_strict_mode(tmp_path: Path) -> None:
    db = tmp_path / "data" / "telemetry.db"
    db.parent.mkdir()
    db.write_bytes(b"x" * 4096)
    telemetry = TelemetryService(make_config(tmp_path, strict=True))
    with pytest.raises(Exception, match="telemetry"):
        telemetry.track("t")


# -- submission ------------------------------------------------------------------


def test_submit_now_drains_and_stats_come_from_the_log(remote_rig: Rig) -> None:
    service = remote_rig.service
    service.close(timeout=10)  # no background worker: submit in this thread
    ids = [service.track("t", {"i": i}) for i in range(25)]
    assert all(ids)
    assert service.worker is None
    progress: list[tuple[int, int]] = []
    stats = service.submit_now(lambda done, total: progress.append((done, total)))
    sent = [i for batch in remote_rig.transport.batches for i in batch]
    assert sorted(sent) == sorted(ids)
    assert stats.submissions == 3 and stats.successful == 3
    assert stats.events_sent == 25 and stats.events_accepted == 25
    assert stats.success_rate == 1.0 and stats.queue_size == 0
    assert stats.latency_p50_ms is not None
    assert progress[-1] == (25, 25)
    assert service.queue_stats().pending == 0


def test_submit_now_stops_on_retryable_failure(remote_rig: Rig) -> None:
    service = remote_rig.service
    service.close(timeout=10)
    for i in range(15):
        service.track("t", {"i": i})
    remote_rig.transport.script.append(TransportError("503", retryable=True, status=503))
    stats = service.submit_now()
    assert len(remote_rig.transport.batches) == 1
    assert stats.submissions == 1 and stats.failed == 1 and stats.last_error == "503"
    assert stats.queue_size == 15


def test_terminal_answer_dead_letters_and_retry_dead_revives(remote_rig: Rig) -> None:
    service = remote_rig.service
    service.close(timeout=10)
    service.track("t")
    remote_rig.transport.script.append(TransportError("401", retryable=False, status=401))
    service.submit_now()
    assert service.queue_stats().dead == 1
    assert service.retry_dead() == 1
    stats = service.submit_now()
    assert stats.dead == 0 and stats.queue_size == 0 and stats.events_accepted == 1


def test_partial_success_is_counted(remote_rig: Rig) -> None:
    service = remote_rig.service
    service.close(timeout=10)
    service.track("t")
    service.track("t")
    remote_rig.transport.script.append(SubmissionResult(accepted=1, rejected=1))
    stats = service.submit_now()
    assert stats.events_rejected == 1 and stats.queue_size == 0
    assert service.counters()["server_rejected"] == 1


def test_submit_now_with_remote_off_sends_nothing(local_rig: Rig) -> None:
    local_rig.service.track("t")
    assert local_rig.service.submit_now().submissions == 0
    assert local_rig.transport.batches == []


def test_worker_starts_lazily_and_stops_on_exit(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path))
    with rig.service as service:
        assert service.worker is not None and service.worker.running
        service.track("t")
        assert rig.plugin.made <= 1
    assert service.worker is None
    rig2 = Rig(remote(tmp_path / "b"))
    try:
        assert rig2.service.worker is None
        rig2.service.track("t")
        # The merge that stores the journaled event starts the worker (a read
        # stores it now), so its first cycle finds the event.
        assert rig2.service.queue_stats().pending == 1
        assert rig2.service.worker is not None and rig2.service.worker.running
    finally:
        rig2.service.close(timeout=10)


def test_no_worker_starts_while_the_interpreter_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither track() nor the merge of its journal starts a thread once the exit
    hook runs (Python 3.12+ refuses new threads at shutdown); the event is kept."""
    from telemetry_core import _process

    rig = Rig(remote(tmp_path))
    try:
        monkeypatch.setattr(_process, "exiting", True)
        event_id = rig.service.track("late")
        assert event_id is not None
        assert rig.service.queue_stats().pending == 1  # merged, and queued
        assert rig.service.worker is None
    finally:
        monkeypatch.setattr(_process, "exiting", False)
        rig.service.close(timeout=10)


def test_background_worker_delivers(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path, submission_interval=3600.0))
    with rig.service as service:
        event_id = service.track("t")
        worker = service.worker
        assert worker is not None
        for _ in range(500):  # bounded: at most ~5 s
            if rig.transport.batches:
                break
            worker.wake()
            time.sleep(0.01)
    assert rig.transport.batches and rig.transport.batches[0] == [event_id]


# -- consent persistence, status, purge, cleanup -------------------------------------


def test_enable_and_disable_persist_consent(tmp_path: Path) -> None:
    config = make_config(tmp_path, enabled=False)
    rig = Rig(config)
    service = rig.service
    service.enable(remote=True, endpoint="https://127.0.0.1:9/v1/submit")
    assert service.config.sending
    stored = dict(rig.rows("SELECT key, value FROM telemetry_config"))
    assert stored["enabled"] == "true" and stored["remote-enabled"] == "true"
    assert stored["remote-endpoint"] == "https://127.0.0.1:9/v1/submit"
    again = TelemetryConfig.from_env(app="demo", db_path=config.db_path, environ={})
    assert again.sending
    service.disable_remote_submission()
    assert service.config.recording and not service.config.sending
    assert dict(rig.rows("SELECT key, value FROM telemetry_config"))["remote-enabled"] == "false"
    service.disable()
    assert not service.config.recording
    assert service.track("t") is None
    service.close()
    assert not TelemetryConfig.from_env(app="demo", db_path=config.db_path, environ={}).enabled


def test_enable_and_disable_remote_submission_persist_and_update_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, transport="fake")
    rig = Rig(config)
    service = rig.service
    assert service.config.recording and not service.config.sending
    service.enable_remote_submission("https://127.0.0.1:9/v1/submit")
    assert service.config.remote_enabled and service.config.sending
    assert service.config.endpoint == "https://127.0.0.1:9/v1/submit"
    stored = dict(rig.rows("SELECT key, value FROM telemetry_config"))
    assert stored["enabled"] == "true"
    assert stored["remote-enabled"] == "true"
    assert stored["remote-endpoint"] == "https://127.0.0.1:9/v1/submit"
    assert TelemetryConfig.from_env(app="demo", db_path=config.db_path, environ={}).sending
    service.disable_remote_submission()
    assert service.config.recording and not service.config.remote_enabled
    assert not service.config.sending
    stored = dict(rig.rows("SELECT key, value FROM telemetry_config"))
    assert stored["remote-enabled"] == "false" and stored["enabled"] == "true"
    service.close()
    again = TelemetryConfig.from_env(app="demo", db_path=config.db_path, environ={})
    assert again.recording and not again.remote_enabled


def test_enable_rejects_a_bad_endpoint_before_writing(tmp_path: Path) -> None:
    config = make_config(tmp_path, enabled=False)
    service = TelemetryService(config)
    with pytest.raises(ConfigError, match="endpoint"):
        service.enable(remote=True, endpoint="http://example.com/v1/submit")
    assert not config.db_path.exists()


def test_disable_purge_deletes_local_data(local_rig: Rig) -> None:
    local_rig.service.track("t")
    db = local_rig.service.config.db_path
    assert db.exists()
    local_rig.service.disable(purge=True)
    assert not db.exists()
    assert local_rig.service.track("t") is None
    assert not db.exists()


def test_status_names_everything_but_the_key(tmp_path: Path) -> None:
    # No background worker: it could send the event before status() counts it.
    rig = Rig(remote(tmp_path, api_key="sekrit-key-123"), background=False)
    with rig.service as service:
        service.track("t")
        status = service.status()
    assert "sekrit" not in json.dumps(status, default=str)
    assert status["app"] == "demo" and status["enabled"] and status["remote_enabled"]
    assert status["endpoint"] == "https://127.0.0.1:9/v1/submit"
    assert status["api_key_set"] is True
    assert len(status["install_id"]) == 32
    assert status["queue"]["pending"] == 1
    assert status["plugins"]["transport"] == "fake"
    assert "sqlite" in status["plugins"]["loaded"]


def test_cleanup_runs_at_open_at_most_once_a_day(tmp_path: Path) -> None:
    config = make_config(tmp_path, retention_days=0.25)
    rig = Rig(config)
    start = rig.clock.now
    rig.service.track("old")  # first open: cleanup ran (nothing to do)
    _wait_cleanup(rig.service)
    rig.service.close()
    rig.clock.now = start + 0.9 * 86400
    rig.service.track("new")  # reopened, but cleaned up less than a day ago
    assert rig.service._access.cleaner is None
    assert rig.service.event_counts() == {"new": 1, "old": 1}
    rig.service.close()
    rig.clock.now = start + 86400 + 1
    rig.service.open()  # a day later: events older than 6 h go (in the background)
    _wait_cleanup(rig.service)
    assert rig.service.event_counts() == {"new": 1}
    rig.clock.now += 86400
    assert rig.service.cleanup() == 1
    assert rig.service.event_counts() == {}
    rig.service.close()


def _wait_cleanup(service: TelemetryService) -> None:
    cleaner = service._access.cleaner
    assert cleaner is not None, "no cleanup was started"
    assert cleaner.join(10), "the cleanup did not end"


def test_track_never_runs_the_cleanup_on_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(make_config(tmp_path, retention_days=1))
    start = rig.clock.now
    for i in range(3):
        rig.service.track("old", {"i": i})
    _wait_cleanup(rig.service)
    rig.service.close()
    threads: list[str] = []
    entered = threading.Event()
    release = threading.Event()
    real = SQLiteQueue.cleanup_page

    def spy(self: SQLiteQueue, older_than: float, after: str, page: int) -> Any:
        threads.append(threading.current_thread().name)
        entered.set()
        assert release.wait(10)
        return real(self, older_than, after, page)

    monkeypatch.setattr(SQLiteQueue, "cleanup_page", spy)
    rig.clock.now = start + 2 * 86400  # the old events are due for deletion
    assert rig.service.track("new") is not None  # returns while the cleanup is held
    assert entered.wait(10)
    assert threads == ["telemetry-core-cleanup"]
    assert rig.service.event_counts() == {"new": 1, "old": 3}
    release.set()
    _wait_cleanup(rig.service)
    assert rig.service.event_counts() == {"new": 1}
    assert threading.current_thread().name not in threads
    rig.service.close()


def test_cleanup_deletes_in_pages_with_their_queue_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention_module, "CLEANUP_PAGE", 4)
    removed: list[int] = []
    real = SQLiteQueue.cleanup_page

    def counting(self: SQLiteQueue, older_than: float, after: str, page: int) -> Any:
        result = real(self, older_than, after, page)
        removed.append(result[1])
        return result

    monkeypatch.setattr(SQLiteQueue, "cleanup_page", counting)
    rig = Rig(remote(tmp_path, retention_days=1), background=False)
    start = rig.clock.now
    service = rig.service
    for i in range(10):
        service.track("old", {"i": i})
    _wait_cleanup(service)
    service.close()
    removed.clear()
    rig.clock.now = start + 2 * 86400
    service.track("new")
    _wait_cleanup(service)  # the background run: pages of 4 events
    assert removed == [4, 4, 2]
    assert service.event_counts() == {"new": 1}
    assert service.queue_stats().pending == 1
    assert service.counters().get("dropped.expired") == 10
    service.close()


def test_close_interrupts_a_running_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    ended: list[str] = []

    def endless(self: SQLiteQueue, older_than: float, after: str, page: int) -> Any:
        entered.set()
        # A statement that runs until it is interrupted (bounded all the same).
        try:
            self.store.connection().execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                " WHERE i < 2000000000) SELECT count(*) FROM n"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            ended.append(str(exc))
            raise
        ended.append("completed")
        return None, 0

    monkeypatch.setattr(SQLiteQueue, "cleanup_page", endless)
    rig = Rig(make_config(tmp_path))
    rig.service.track("t")
    assert entered.wait(10)
    cleaner = rig.service._access.cleaner
    assert cleaner is not None
    rig.service.close(timeout=5)
    assert not cleaner.running
    assert ended == ["interrupted"]
    # Not marked done: the next open cleans up again.
    assert rig.rows("SELECT value FROM telemetry_config WHERE key = 'last-cleanup'") == []


# -- fork and exit ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_clean(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path))
    service = rig.service
    with service:
        service.track("parent")
        parent_worker = service.worker
        assert parent_worker is not None and parent_worker.running
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read_fd)
                report = {
                    "worker_none": service.worker is None,
                    "event": service.track("child") is not None,
                    # A read stores the journaled event, which starts the worker.
                    "stored": service.event_counts().get("child") == 1,
                    "worker_running": service.worker is not None and service.worker.running,
                    "not_parents": service.worker is not parent_worker,
                }
                service.close(timeout=5)
                os.write(write_fd, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        code = _wait_child(pid)  # first: a hung child would block the read
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        assert code == 0
        assert json.loads(data) == {
            "worker_none": True,
            "event": True,
            "stored": True,
            "worker_running": True,
            "not_parents": True,
        }
        assert parent_worker.running
        assert service.event_counts() == {"child": 1, "parent": 1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_the_worker_is_busy_never_deadlocks_the_child(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path, submission_interval=0.1, submission_batch_size=1))
    with rig.service as service:
        for i in range(200):
            service.track("busy", {"i": i})
        worker = service.worker
        assert worker is not None
        for _ in range(10):
            worker.wake()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                faulthandler.dump_traceback_later(10, exit=True)  # a deadlock fails, bounded
                ok = service.track("child") is not None
                service.close(timeout=5)
                os._exit(0 if ok else 3)
            assert _wait_child(pid) == 0
        assert service.event_counts()["child"] == 10


def _wait_child(pid: int, timeout: float = 20.0) -> int:
    """The child's exit code; a child still running after ``timeout`` is killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung (deadlock after fork)")


def test_fork_guard_waits_for_sections_and_holds_new_ones() -> None:
    # Every step is ordered by events or by the guard itself, never by timing:
    # the guard's own bound is far above any scheduling delay.
    guard = ForkGuard(max_wait=60.0)
    inside = threading.Event()
    leave = threading.Event()
    forked = threading.Event()
    resume = threading.Event()
    order: list[str] = []

    def db_call() -> None:
        with guard.section():
            inside.set()
            assert leave.wait(30)
            order.append("section done")

    def fork() -> None:
        guard.before_fork()  # returns only once the section has ended
        order.append("forking")
        forked.set()
        assert resume.wait(30)
        guard.after_fork_in_parent()

    def late_call() -> None:
        with guard.section():
            order.append("late")

    section = threading.Thread(target=db_call)
    section.start()
    assert inside.wait(30)
    forker = threading.Thread(target=fork)
    forker.start()
    for _ in range(3000):  # bounded: until the forker is inside before_fork
        if guard.forking:
            break
        time.sleep(0.01)
    assert guard.forking
    assert not forked.is_set()  # the section is still running
    late = threading.Thread(target=late_call)
    late.start()
    leave.set()
    assert forked.wait(30)
    assert order == ["section done", "forking"]  # the late section waits for the fork
    resume.set()
    for thread in (late, forker, section):
        thread.join(30)
        assert not thread.is_alive()
    assert order == ["section done", "forking", "late"]
    assert guard.active == 0


def test_fork_guard_section_is_reentrant_and_counts() -> None:
    guard = ForkGuard()
    with guard.section():
        assert guard.active == 1
        with guard.section():
            assert guard.active == 2
    assert guard.active == 0
    with pytest.raises(ValueError), guard.section():
        raise ValueError("the count is restored on errors")
    assert guard.active == 0


def test_exit_is_not_delayed_by_an_unreachable_endpoint(tmp_path: Path) -> None:
    # A listener that never accepts: the worker's TLS handshake hangs until the
    # 30 s timeout, so only the bounded at-exit stop lets the process end.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as blackhole:
        _run_exit_app(tmp_path, blackhole.getsockname()[1])
        blackhole.settimeout(5)
        conn, _ = blackhole.accept()  # the worker did reach the network
        conn.close()


def test_a_worker_close_could_not_stop_is_waited_for_at_exit(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path))
    service = rig.service
    service.track("t")
    service.submit_now()  # the transport's first call (its setup) is done
    entered = threading.Event()
    release = threading.Event()

    def hang(events: Any) -> None:
        entered.set()
        release.wait(10)

    rig.transport.on_submit = hang
    event_id = service.track("t")
    worker = service.worker
    assert worker is not None
    for _ in range(500):  # bounded: at most ~5 s
        worker.wake()
        if entered.wait(0.01):
            break
    assert entered.is_set()
    service.close(timeout=0.0)  # waiting on the network: no grace, left running
    assert worker.running and service._sending.stray is worker
    service._signal_stop()  # as the at-exit hook does first: only signals
    assert worker.running
    release.set()
    service._finish_at_exit(10.0)
    assert not worker.running and service._sending.stray is None
    assert rig.transport.batches[-1] == [event_id]


def _run_exit_app(tmp_path: Path, port: int) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from telemetry_core import TelemetryConfig, TelemetryService
        config = TelemetryConfig(
            app="demo", db_path=sys.argv[1], enabled=True, remote_enabled=True,
            endpoint=f"https://127.0.0.1:{sys.argv[2]}/v1/submit", do_not_track=False,
            submission_interval=0.1, timeout=30,
        )
        telemetry = TelemetryService(config)
        for i in range(50):
            telemetry.track("cmd", {"i": i})
        time.sleep(0.2)  # let the worker reach the network
        print("worker running:", telemetry.worker.running, flush=True)
        """
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "t.db"), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "worker running: True" in proc.stdout
    assert elapsed < 5, elapsed  # generous: only catches a hang on the network
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        assert conn.execute("SELECT count(*) FROM telemetry_events").fetchone()[0] == 50
    finally:
        conn.close()


# -- client robustness fixes ------------------------------------------------------------


def test_track_on_a_locked_database_spills_and_stores_once_released(tmp_path: Path) -> None:
    # Each event goes to the database first here (write_behind off), so the
    # journal only takes the ones a lock turned away.
    config = make_config(tmp_path, write_behind=False)
    service = TelemetryService(config)
    try:
        assert service.track("before") is not None
        locker = sqlite3.connect(config.db_path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            results = [service.track("locked", {"i": i}) for i in range(3)]
            assert None not in results  # every event got its id
            assert service.status()["spilled"] == 3
            spilled = list(config.db_path.parent.glob("*.spill-*"))
            assert len(spilled) == 1 and spilled[0].stat().st_size > 0
            stored = locker.execute("SELECT count(*) FROM telemetry_events").fetchone()[0]
            assert stored == 1  # nothing reached the database while it was locked
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert service.track("after") is not None
    finally:
        service.close()
    conn = sqlite3.connect(config.db_path)
    try:
        rows = conn.execute("SELECT type, properties FROM telemetry_events").fetchall()
        counters = dict(conn.execute("SELECT name, value FROM telemetry_counters").fetchall())
    finally:
        conn.close()
    assert sorted(t for t, _ in rows) == ["after", "before", "locked", "locked", "locked"]
    assert counters["spilled"] >= 3  # "after" may follow them within the spill hold
    assert not list(config.db_path.parent.glob("*.spill-*"))


def test_a_full_spill_journal_counts_what_it_cannot_keep(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_queue_size=2, write_behind=False)
    service = TelemetryService(config)
    try:
        assert service.track("before") is not None
        locker = sqlite3.connect(config.db_path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            results = [service.track("locked", {"i": i}) for i in range(4)]
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert results[2:] == [None, None] and None not in results[:2]
        assert service.counters()["dropped:spill_full"] == 2
    finally:
        service.close()


def test_spilled_events_left_by_a_process_are_stored_by_the_next_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with TelemetryService(config) as service:
        service.track("first")
    # A process that spilled and then died (its file has no live writer).
    from telemetry_core._write_behind import SpillJournal
    from telemetry_core.schema import Event, new_event_id

    journal = SpillJournal(config.db_path, max_entries=10)
    event = Event(id=new_event_id(), type="orphan", timestamp=1, install_id="i" * 32, app="demo")
    assert journal.append(msgspec.json.encode(event), enqueue=False)
    journal.close()
    with TelemetryService(config) as service:
        service.track("second")
    with TelemetryService(config) as service:
        assert service.event_counts() == {"first": 1, "orphan": 1, "second": 1}
    assert not list(config.db_path.parent.glob("*.spill-*"))


def test_background_false_never_starts_the_worker(tmp_path: Path) -> None:
    transport = FakeTransport()
    service = TelemetryService(
        remote(tmp_path),
        host=PluginHost(
            load_entrypoints=False, disabled=(), plugins=[FakeTransportPlugin(transport)]
        ),
        background=False,
    )
    try:
        service.open()
        assert service.track("queued") is not None
        assert service.worker is None or not service.worker.running
        assert transport.batches == []
        stats = service.submit_now()
        assert stats.events_accepted == 1
        assert service.worker is not None and not service.worker.running
    finally:
        service.close()


def _tables_and_mode(path: Path) -> tuple[set[str], str]:
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()
    return tables, mode


def test_consent_off_status_refuses_a_foreign_database_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    service = TelemetryService(make_config(tmp_path, db_path=path, enabled=False))
    try:
        assert service.status()["install_id"] is None
        assert service.event_counts() == {}
        assert service.degraded is not None and "not a telemetry database" in service.degraded
    finally:
        service.close()
    assert _tables_and_mode(path) == ({"mine"}, "delete")


def test_consent_off_reads_an_existing_store_without_writing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with TelemetryService(config) as service:
        assert service.track("kept") is not None
    before = config.db_path.read_bytes()
    later = time.time() + 3 * 24 * 3600.0  # a cleanup would be due
    service = TelemetryService(config.evolve(enabled=False), clock=lambda: later)
    try:
        assert service.event_counts() == {"kept": 1}
        assert service.queue_stats().pending == 0
        assert service.get_submission_stats().submissions == 0
        assert service.status()["install_id"]
    finally:
        service.close()
    # The database is unchanged (a read-only WAL reader may leave empty -wal/-shm
    # index files next to it, which SQLite itself manages).
    assert config.db_path.read_bytes() == before
    wal = Path(f"{config.db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


class _Label(str):
    def __str__(self) -> str:
        raise RuntimeError("not called")


class _Ratio(float):
    pass


def test_subclasses_of_str_int_float_are_stored_as_their_base_type(local_rig: Rig) -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    event_id = local_rig.service.track(
        "subclassed", {"label": _Label("ok"), "ratio": _Ratio(0.5), "level": Level.HIGH}
    )
    assert event_id is not None
    (props,) = local_rig.rows(f"SELECT properties FROM telemetry_events WHERE id = '{event_id}'")
    assert json.loads(props[0]) == {"label": "ok", "ratio": 0.5, "level": 3}


def test_nan_is_rejected_before_scrubbing_and_never_counted_as_scrubbed(local_rig: Rig) -> None:
    assert local_rig.service.track("nan", {"a": float("nan")}) is None
    assert local_rig.service.counters().get("rejected:invalid_property") == 1
    assert not [n for n in local_rig.service.counters() if n.startswith("scrubbed:")]


def test_a_huge_value_is_rejected_without_scanning_it(
    local_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import telemetry_core.privacy as privacy_module

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the scrubber ran on an oversized event")

    monkeypatch.setattr(privacy_module, "scrub_text", never)
    huge = "x" * 10_000_000
    assert local_rig.service.track("huge", {"a": huge}) is None
    assert local_rig.service.track("many", {f"k{i}": 1 for i in range(10_000)}) is None
    assert local_rig.service.track("key", {"k" * 100_000: 1}) is None
    counters = local_rig.service.counters()
    assert counters["rejected:invalid_property"] == 2
    assert counters["rejected:too_many_properties"] == 1


# -- the known-property fast path ------------------------------------------------------


def test_repeated_events_are_scrubbed_and_counted_every_time(local_rig: Rig) -> None:
    props: dict[str, Any] = {
        "email": "write to jane@example.com",
        "jane@example.com": "a personal key is dropped",
        "plain": "run",
        "n": 3,
        "ok": True,
        "ratio": 0.5,
        "none": None,
    }
    for _ in range(3):
        assert local_rig.service.track("t", dict(props)) is not None
    rows = local_rig.rows("SELECT properties FROM telemetry_events")
    stored = [json.loads(raw) for (raw,) in rows]
    expected = {
        "email": "write to <email>",
        "plain": "run",
        "n": 3,
        "ok": True,
        "ratio": 0.5,
        "none": None,
    }
    assert stored == [expected] * 3
    counters = local_rig.service.counters()
    assert counters["scrubbed:email"] == 3  # the value, in each event
    assert counters["scrubbed:identifier"] == 3  # the dropped key, in each event


def test_known_properties_skip_validation_but_new_values_are_checked(
    local_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = recorder_module.validate_event

    def spy(event: Event, **kwargs: Any) -> Any:
        calls.append(event.type)
        return real(event, **kwargs)

    monkeypatch.setattr(recorder_module, "validate_event", spy)
    service = local_rig.service
    assert service.track("a", {"k": "v", "n": 1}) is not None
    assert service.track("b", {"k": "v", "n": 2}) is not None  # all known: no validation
    assert calls == ["a"]
    # A known key with a new value, a value out of range, a new type: checked in full.
    assert service.track("c", {"k": "bad\x00", "n": 1}) is None
    assert service.track("d", {"k": "v", "n": 2**63}) is None
    assert service.track("e", {"k": "v", "n": float("inf")}) is None
    assert service.track("f", {"k": "v", "n": [1]}) is None
    assert service.track("g", {"k": "v", "n": 1}, session_id="s1") is not None
    assert service.track("h", {"k": "v"}, duration_ms=1e16) is None
    assert calls == ["a", "c", "d", "g"]
    counters = service.counters()
    assert counters["rejected:invalid_property"] == 4
    assert counters["rejected:invalid_duration"] == 1
    assert service.event_counts() == {"a": 1, "b": 1, "g": 1}


def test_the_verdict_caches_are_bounded(local_rig: Rig) -> None:
    service = local_rig.service
    recorder = service._recorder
    recorder._known.size = recorder._verdicts.size = 8
    for i in range(50):
        assert service.track("t", {"k": f"v{i}", "i": i}) is not None
    assert len(recorder._known.items) <= 8
    assert len(recorder._verdicts.items) <= 8
    assert service.event_counts() == {"t": 50}


def test_another_scrubber_disables_the_fast_path(tmp_path: Path) -> None:
    class Upper:
        @hookimpl
        def telemetry_scrub_event(self, event_type: str, properties: dict[str, Any]) -> None:
            for key, value in list(properties.items()):
                if isinstance(value, str):
                    properties[key] = value.upper()

    rig = Rig(make_config(tmp_path))
    rig.service.host.pm.register(Upper())
    try:
        for _ in range(2):
            rig.service.track("t", {"k": "v"})
        rows = rig.rows("SELECT properties FROM telemetry_events")
        assert [json.loads(raw) for (raw,) in rows] == [{"k": "V"}, {"k": "V"}]
    finally:
        rig.service.close()


def test_status_flags_a_retention_longer_than_the_collectors_dedup_window(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, retention_days=30)
    with TelemetryService(config) as service:
        service.track("t")
        assert service.status()["retention_exceeds_dedup_window"] is False
        assert service._access.opened is not None
        service._access.opened.store.set_config("server-dedup-window-days", "7")
        status = service.status()
    assert status["collector_dedup_window_days"] == 7
    assert status["retention_exceeds_dedup_window"] is True


@pytest.mark.parametrize(
    "raised",
    [
        lambda key: RuntimeError(f"Invalid header value {key.encode('latin-1')!r}"),
        lambda key: ValueError(f"header X-API-Key: {key!r} rejected"),
        lambda key: TransportError(f"proxy said: bad key {key}", retryable=True),
    ],
)
def test_whatever_a_transport_raises_reaches_last_error_without_the_api_key(
    tmp_path: Path, raised: Any
) -> None:
    key = "clé-secrète-0123456789"  # latin-1: accepted, but an http client may quote it
    transport = FakeTransport()
    transport.script = [raised(key)]
    config = TelemetryConfig(
        app="demo", db_path=tmp_path / "t.db", enabled=True, remote_enabled=True,
        transport="fake", api_key=key, do_not_track=False,
    )  # fmt: skip
    service = TelemetryService(config, plugins=[FakeTransportPlugin(transport)], background=False)
    try:
        service.track("command_executed")
        stats = service.submit_now()
    finally:
        service.close()
    assert stats.last_error is not None
    assert "***" in stats.last_error
    text = json.dumps(msgspec.to_builtins(stats))
    for form in (key, repr(key)[1:-1], repr(key.encode("latin-1"))[2:-1]):
        assert form not in text


# -- journal first (write_behind) ---------------------------------------------------


def _stored_ids(db_path: Path) -> set[str]:
    """The event ids in the database, read by another connection (as another
    process would see them), queued or stored."""
    conn = sqlite3.connect(db_path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM telemetry_events")}
    finally:
        conn.close()


def test_track_journals_and_the_merger_stores_without_any_read(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with TelemetryService(config) as service:
        ids = {service.track("journaled", {"i": i}) for i in range(50)}
        assert None not in ids
        # Nobody reads: the background merger alone brings them into the file.
        deadline = time.monotonic() + 10
        while _stored_ids(config.db_path) != ids and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _stored_ids(config.db_path) == ids
        assert not list(config.db_path.parent.glob("*.spill-*"))
        assert service.counters().get("spilled") is None  # not a lock's spill


def test_a_read_right_after_track_sees_the_event(tmp_path: Path) -> None:
    with TelemetryService(make_config(tmp_path)) as service:
        for i in range(3):
            assert service.track("seen", {"i": i}) is not None
            assert service.event_counts() == {"seen": i + 1}


def test_submission_stats_right_after_track_count_the_journaled_events(tmp_path: Path) -> None:
    """get_submission_stats() stores the journal first, as every other read does: its
    queue_size counts the events track() just took (it read 0 before)."""
    config = remote(tmp_path)
    transport = FakeTransport()
    # No worker (background=False): nothing leaves the queue while the test counts.
    with TelemetryService(
        config, plugins=[FakeTransportPlugin(transport)], background=False
    ) as service:
        for i in range(5):
            assert service.track("queued", {"i": i}) is not None
            assert service.get_submission_stats().queue_size == i + 1
    assert transport.batches == []


def test_journal_first_on_a_locked_database_keeps_every_event(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    service = TelemetryService(config)
    try:
        assert service.track("before") is not None
        assert service.event_counts() == {"before": 1}
        locker = sqlite3.connect(config.db_path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            ids = [service.track("locked", {"i": i}) for i in range(20)]
            assert None not in ids
            assert service.status()["spilled"] == 20  # the read could not store them
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert service.event_counts() == {"before": 1, "locked": 20}
    finally:
        service.close()
    assert not list(config.db_path.parent.glob("*.spill-*"))


def test_a_full_journal_falls_back_to_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_writer_module, "JOURNAL_MIN_ENTRIES", 2)
    config = make_config(tmp_path, max_queue_size=2)
    with TelemetryService(config) as service:
        ids = [service.track("many", {"i": i}) for i in range(6)]
        assert None not in ids  # the journal held two, the database took the rest
        assert service.event_counts() == {"many": 6}
        assert "dropped:spill_full" not in service.counters()


def test_strict_mode_writes_to_the_database_before_returning(tmp_path: Path) -> None:
    config = make_config(tmp_path, strict=True)
    with TelemetryService(config) as service:
        event_id = service.track("strict")
        assert event_id is not None
        assert _stored_ids(config.db_path) == {event_id}  # no read needed
        assert not list(config.db_path.parent.glob("*.spill-*"))


def test_an_event_recorded_just_before_exit_is_sent_by_the_exit_flush(tmp_path: Path) -> None:
    rig = Rig(remote(tmp_path))
    with rig.service as service:
        event_id = service.track("last")
    assert event_id is not None
    assert [i for batch in rig.transport.batches for i in batch] == [event_id]


def test_merged_journal_events_wait_for_the_worker_s_interval(tmp_path: Path) -> None:
    # A merge must not wake a running worker: events go in batches every
    # submission_interval (an hour here), not one request per 50 ms merge.
    rig = Rig(remote(tmp_path))
    with rig.service as service:
        assert service.track("first") is not None
        service.submit_now()  # the worker's state is known: everything sent
        sent = len(rig.transport.batches)
        ids = {service.track("later", {"i": i}) for i in range(5)}
        deadline = time.monotonic() + 10
        while not ids <= _stored_ids(service.config.db_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ids <= _stored_ids(service.config.db_path)  # merged by the thread
        time.sleep(0.2)  # a woken worker would have sent by now
        assert len(rig.transport.batches) == sent
        assert service.queue_stats().pending == 5
