"""Host-side faults in the client: the app is never broken nor blocked by telemetry.

Each scenario damages the host under a :class:`TelemetryService` (a database
that is not one, truncated or corrupted; a read-only or vanished data
directory; a full disk; a database locked by another process; a clock jumping
backwards and forwards; DNS failure; a certificate for another name) and then
drives every app-facing call. Asserted: ``track``, ``submit_now`` and
``get_submission_stats`` never raise (the read helpers ``queue_stats``, ``status``,
``event_counts`` and ``counters``, which the CLI reports as one error line, may
raise a typed :class:`TelemetryError` and nothing else), no call blocks beyond a
generous bound (the measured maximum goes to the figures), telemetry degrades
with one warning, and events already stored survive.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.errors import TelemetryError
from tests.chaos.conftest import API_KEY, PROPERTY_MARKER, Collector, Figures, LogVault
from tests.chaos.faultproxy import FaultProxy
from tests.processes import LOCKER_SCRIPT

#: A call that takes longer than this is a hang (the figures hold the real maximum).
HANG_BOUND = 10.0
#: Block times per scenario (seconds), for the figures.
_BLOCK: dict[str, float] = {}
_WARNINGS: dict[str, int] = {}
#: Typed errors reported by the read helpers (queue_stats, status, event_counts,
#: counters: the CLI turns them into one error line), per scenario.
_TYPED: dict[str, int] = {}

pytestmark = [pytest.mark.timeout(120)]


def _config(db: Path, **overrides: Any) -> TelemetryConfig:
    values: dict[str, Any] = {
        "app": "hostapp",
        "db_path": db,
        "enabled": True,
        "submission_interval": 0.2,
        "timeout": 1.0,
        "exit_timeout": 0.1,
        "base_delay": 0.05,
        "max_delay": 0.5,
    }
    values.update(overrides)
    return TelemetryConfig(**values)


class Driver:
    """Calls every app-facing method, timing each; records the worst call per scenario."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.worst = 0.0

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; it must not raise; keep the time it took."""
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.monotonic() - started
            self.worst = max(self.worst, took)
            _BLOCK[self.scenario] = max(_BLOCK.get(self.scenario, 0.0), took)

    def read(self, fn: Callable[[], Any]) -> Any:
        """Call a read helper (CLI-facing): it may report a typed error, nothing else."""
        started = time.monotonic()
        try:
            return fn()
        except TelemetryError:
            _TYPED[self.scenario] = _TYPED.get(self.scenario, 0) + 1
            return None
        finally:
            took = time.monotonic() - started
            self.worst = max(self.worst, took)
            _BLOCK[self.scenario] = max(_BLOCK.get(self.scenario, 0.0), took)

    def everything(self, service: TelemetryService, events: int = 20) -> list[str | None]:
        """track() ``events`` times, then every other app-facing call."""
        ids = [
            self.call(
                service.track,
                "host.fault",
                {"i": i, "note": f"{PROPERTY_MARKER}{i}"},
                duration_ms=1.0,
                success=True,
            )
            for i in range(events)
        ]
        self.call(service.submit_now)
        self.call(service.get_submission_stats)
        for helper in (service.queue_stats, service.status, service.event_counts, service.counters):
            self.read(helper)
        return ids


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("telemetry_core") and r.levelno >= logging.WARNING
    ]


def _stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM telemetry_events").fetchone()[0])
    finally:
        conn.close()


def _remove_tree(data: Path) -> None:
    """``rm -rf`` of a flat directory that the service's threads may write to
    meanwhile (a journal or WAL file can appear between listing and rmdir)."""
    for _ in range(50):
        for path in data.iterdir():
            path.unlink(missing_ok=True)
        try:
            data.rmdir()
            return
        except OSError:
            time.sleep(0.01)
    raise AssertionError(f"{data} kept filling up")


def _next_start_stores_every_id(db: Path, ids: list[str | None]) -> None:
    """The app's next ordinary start, with the storage writable again: every
    event ``track()`` gave an id is stored (journaled ones taken in), once."""
    with TelemetryService(_config(db)) as service:
        service.queue_stats()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM telemetry_events")}
    finally:
        conn.close()
    returned = {i for i in ids if i is not None}
    assert returned <= stored
    assert len(stored) == 30 + len(returned)
    assert not list(db.parent.glob("*.spill-*"))


def _fill(db: Path, n: int = 30) -> None:
    """The app ran before: ``n`` events stored, its daily retention cleanup done
    (so a later run starts no cleanup of its own that could race the scenario)."""
    with TelemetryService(_config(db)) as service:
        for i in range(n):
            assert service.track("host.before", {"i": i}) is not None
        service.cleanup()


@pytest.fixture
def caplog_all(vault_caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at DEBUG for telemetry_core (its text goes to the log vault)."""
    vault_caplog.set_level(logging.DEBUG, logger="telemetry_core")
    return vault_caplog


def _finish(
    scenario: str,
    caplog: pytest.LogCaptureFixture,
    driver: Driver,
    *,
    network: bool = False,
    quiet_ok: bool = False,
) -> None:
    """Bounded calls; one warning (network faults: at most one, since being offline
    is normal and is reported by ``get_submission_stats().last_error`` instead)."""
    warnings = _warnings(caplog)
    _WARNINGS[scenario] = len(warnings)
    assert driver.worst < HANG_BOUND, f"{scenario}: a call blocked {driver.worst:.1f} s"
    allowed = (0, 1) if network or quiet_ok else (1,)
    assert len(warnings) in allowed, [r.getMessage() for r in warnings]


# -- the database file ---------------------------------------------------------------


def test_not_a_database(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    """A file that is not SQLite: telemetry is off for the run, the file untouched."""
    db = tmp_path / "data" / "telemetry.db"
    db.parent.mkdir()
    junk = b"this is not a database, it is the user's file\n" * 200
    db.write_bytes(junk)
    driver = Driver("not_a_database")
    config = _config(db, remote_enabled=True, endpoint="https://127.0.0.1:9/v1/submit")
    with TelemetryService(config) as service:
        ids = driver.everything(service)
    assert ids == [None] * len(ids)
    assert db.read_bytes() == junk
    _finish("not_a_database", caplog_all, driver)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_database(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture, damage: str
) -> None:
    """A truncated or page-corrupted database: calls stay quiet and bounded."""
    db = tmp_path / "data" / "telemetry.db"
    _fill(db, 400)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    else:
        for offset in range(4096 + 100, len(data), 997):
            data[offset] ^= 0x5A
    db.write_bytes(bytes(data))
    caplog_all.clear()
    driver = Driver(damage)
    with TelemetryService(_config(db)) as service:
        ids = driver.everything(service)
    # SQLite finds page damage only when a statement reads the damaged page: if every
    # event was still recorded, telemetry did not degrade and need not warn.
    _finish(damage, caplog_all, driver, quiet_ok=None not in ids)


# -- the data directory ---------------------------------------------------------------


class _ConnectWrapper:
    """Wraps ``sqlite3.connect`` to run pragmas on every new connection."""

    def __init__(self, pragmas: Callable[[sqlite3.Connection], None]) -> None:
        self.real = sqlite3.connect
        self.pragmas = pragmas

    def __call__(self, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = self.real(*args, **kwargs)
        self.pragmas(conn)
        return conn


def test_read_only_data(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage that refuses writes: no raise, one warning, stored events survive.

    File modes do not bind root, so read-only storage is simulated with
    ``PRAGMA query_only`` on every connection (a real chmod runs as non-root).
    """
    db = tmp_path / "data" / "telemetry.db"
    _fill(db)
    if os.geteuid() != 0:
        db.chmod(0o444)
        db.parent.chmod(0o555)
    else:
        monkeypatch.setattr(
            sqlite3, "connect", _ConnectWrapper(lambda c: c.execute("PRAGMA query_only = ON"))
        )
    caplog_all.clear()
    driver = Driver("read_only")
    try:
        with TelemetryService(_config(db)) as service:
            ids = driver.everything(service)
            later = driver.call(service.track, "host.after_refusal")
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)
        monkeypatch.undo()
    # The events were journaled (ids returned) and the reads found that the
    # storage refuses them: from then on track() writes directly and says None.
    assert later is None, "the refusal never reached track()"
    _finish("read_only", caplog_all, driver)
    _next_start_stores_every_id(db, [*ids, later])


def test_data_dir_vanishes(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    """The data directory is deleted under a running service, then cannot be created."""
    data = tmp_path / "data"
    db = data / "telemetry.db"
    driver = Driver("dir_vanished")
    with TelemetryService(_config(db)) as service:
        assert driver.call(service.track, "host.before") is not None
        _remove_tree(data)
        data.write_text("a file where the directory was")  # it cannot come back
        driver.everything(service)
    with TelemetryService(_config(db)) as service:
        ids = driver.everything(service)
    assert ids == [None] * len(ids)
    warnings = _warnings(caplog_all)
    _WARNINGS["dir_vanished"] = len(warnings)
    assert driver.worst < HANG_BOUND
    # One service kept its (unlinked) files, the new one could not open: one warning.
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]


def test_full_disk(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (``PRAGMA max_page_count``): no raise, one warning, events survive."""
    db = tmp_path / "data" / "telemetry.db"
    _fill(db)

    def cap(conn: sqlite3.Connection) -> None:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {max(pages, 1) + 2}")

    monkeypatch.setattr(sqlite3, "connect", _ConnectWrapper(cap))
    caplog_all.clear()
    driver = Driver("full_disk")
    with TelemetryService(_config(db)) as service:
        ids = driver.everything(service, events=300)
        # The reads found the journal refused: track() now writes directly,
        # and says None once the two spare pages are full.
        later = [driver.call(service.track, "host.after_refusal", {"i": i}) for i in range(300)]
    monkeypatch.undo()
    assert None in later, "the page cap never filled up"
    _finish("full_disk", caplog_all, driver)
    _next_start_stores_every_id(db, ids + later)


@pytest.mark.slow
def test_database_locked_by_another_process(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    """Another process holds ``BEGIN EXCLUSIVE`` from before the app starts until after
    it exits: every event gets its id, none is lost; the next run stores them."""
    db = tmp_path / "data" / "telemetry.db"
    _fill(db)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER_SCRIPT, str(db), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        caplog_all.clear()
        driver = Driver("db_locked")
        with TelemetryService(_config(db, exit_timeout=0.2)) as service:
            ids = [driver.call(service.track, "host.locked", {"i": i}) for i in range(2)]
            driver.call(service.queue_stats)
            driver.call(service.get_submission_stats)
            driver.call(service.get_submission_stats)
    finally:
        locker.kill()
        locker.wait(timeout=10)
        if locker.stdout is not None:
            locker.stdout.close()
    assert None not in ids
    assert _stored(db) == 30  # still in the spill file: the lock outlived the process
    with TelemetryService(_config(db)) as service:
        assert service.track("host.after") is not None
    assert _stored(db) == 30 + 2 + 1
    _finish("db_locked", caplog_all, driver, quiet_ok=True)


#: A call may take at most this long while another process holds the lock: track()
#: never waits for it (it spills); a margin for a loaded machine.
LOCK_BOUND = 1.0


@pytest.mark.slow
def test_database_locked_while_running(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    """The lock is taken after the service opened: track() does not wait, and the
    event is stored once the lock is released."""
    db = tmp_path / "data" / "telemetry.db"
    driver = Driver("db_locked_mid_run")
    with TelemetryService(_config(db)) as service:
        assert service.track("host.before") is not None
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER_SCRIPT, str(db), "30"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            caplog_all.clear()
            ids = [driver.call(service.track, "host.locked", {"i": i}) for i in range(1)]
        finally:
            locker.kill()
            locker.wait(timeout=10)
            if locker.stdout is not None:
                locker.stdout.close()
        assert driver.call(service.track, "host.after") is not None
    assert None not in ids
    assert _stored(db) == 3
    _finish("db_locked_mid_run", caplog_all, driver, quiet_ok=True)
    assert driver.worst < LOCK_BOUND, f"track() blocked {driver.worst:.1f} s on a locked database"


# -- time ------------------------------------------------------------------------------


class JumpingClock:
    """A wall clock the test moves: ``offset`` seconds away from real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_clock_jumps(
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
    cert_dir: Path,
    collectors: list[Collector],
    log_vault: LogVault,
) -> None:
    """The wall clock jumps a day back and a year forward while recording and sending."""
    collector = Collector(cert_dir, ["--db", str(tmp_path / "c.db")], vault=log_vault)
    collectors.append(collector)
    collector.start()
    clock = JumpingClock()
    db = tmp_path / "data" / "telemetry.db"
    config = _config(
        db,
        remote_enabled=True,
        endpoint=f"{collector.base_url}/v1/submit",
        api_key=API_KEY,
        ca_bundle=str(cert_dir / "ca.pem"),
        submission_interval=3600.0,
    )
    driver = Driver("clock_jumps")
    recorded = []
    with TelemetryService(config, clock=clock) as service:
        for offset in (0.0, -86_400.0, 0.0, 365 * 86_400.0, -86_400.0, 0.0):
            clock.offset = offset
            recorded += [driver.call(service.track, "host.clock", {"o": offset}) for _ in range(5)]
            driver.call(service.submit_now)
        clock.offset = 0.0
        driver.call(service.submit_now)
        queue = driver.call(service.queue_stats)
    assert None not in recorded
    assert _stored(db) == len(recorded)
    assert queue.pending == 0, queue
    assert driver.worst < HANG_BOUND
    _WARNINGS["clock_jumps"] = len(_warnings(caplog_all))


# -- the network -------------------------------------------------------------------------


def test_dns_failure_stays_on_loopback(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Endpoint ``nonexistent.invalid``: resolution fails locally; events wait in the queue."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(str(host))
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test guard)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    db = tmp_path / "data" / "telemetry.db"
    config = _config(db, remote_enabled=True, endpoint="https://nonexistent.invalid/v1/submit")
    driver = Driver("dns_failure")
    with TelemetryService(config) as service:
        ids = driver.everything(service)
        driver.call(service.submit_now)
        queue = driver.call(service.queue_stats)
        last_error = driver.call(service.get_submission_stats).last_error
    assert None not in ids
    assert queue.pending == len(ids)
    assert set(asked) <= {"nonexistent.invalid"}, asked
    assert last_error and "nonexistent.invalid" in last_error
    _finish("dns_failure", caplog_all, driver, network=True)


def test_certificate_for_another_name(
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
    chaos_ca: trustme.CA,
    client_context: ssl.SSLContext,
    cert_dir: Path,
) -> None:
    """A trusted CA but a certificate for another host name: refused, events kept."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chaos_ca.issue_cert("other.example").configure_cert(context)
    with FaultProxy(context, client_context, []) as proxy:
        db = tmp_path / "data" / "telemetry.db"
        config = _config(
            db,
            remote_enabled=True,
            endpoint=f"{proxy.url}/v1/submit",
            ca_bundle=str(cert_dir / "ca.pem"),
        )
        driver = Driver("cert_mismatch")
        with TelemetryService(config) as service:
            ids = driver.everything(service)
            driver.call(service.submit_now)
            queue = driver.call(service.queue_stats)
            last_error = driver.call(service.get_submission_stats).last_error
        assert proxy.snapshot().get("exchanges", 0) == 0, "a request got past TLS"
    assert None not in ids
    assert queue.pending == len(ids)
    assert last_error and "TLS" in last_error, last_error
    _finish("cert_mismatch", caplog_all, driver, network=True)


def test_zz_host_fault_figures(figures: Figures) -> None:
    """Publish the worst block time and warning count per scenario."""
    figures.record(
        "host_faults",
        command="TELEMETRY_CHAOS_FULL=1 .venv/bin/pytest tests/chaos/test_host_faults.py -v",
        scenarios=len(_BLOCK),
        max_call_seconds_by_scenario={k: round(v, 3) for k, v in sorted(_BLOCK.items())},
        max_call_seconds=round(max(_BLOCK.values(), default=0.0), 3),
        warnings_by_scenario=dict(sorted(_WARNINGS.items())),
        typed_errors_from_read_helpers=dict(sorted(_TYPED.items())),
        exceptions_raised_into_app=0,
    )
