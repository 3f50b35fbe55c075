"""The zero-loss matrix: every event an app recorded is counted exactly once.

Each case runs the app as its users would (``field_app.py``: build the service,
``track()``, exit) against a real collector over TLS behind the fault proxy,
breaks something the way the field does, and then lets the app run again as it
would on its next start. No case revives dead letters, calls ``submit_now()``
or runs any other hand step. Each ends with the collector's count equal to the
ids ``track()`` returned, and no queue entry left in the app's database.

Durations are client time: the app's clocks run ``--speed`` times faster, so
the production backoff (1 s doubling to a 1 h cap) plays out in seconds.
``make chaos`` (TELEMETRY_CHAOS_FULL=1) runs the outages at real speed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import ADMIN_TOKEN, API_KEY, FULL, Collector, Figures, LogVault
from tests.chaos.faultproxy import FaultProxy
from tests.processes import LOCKER_SCRIPT

APP = Path(__file__).with_name("field_app.py")
#: Clock speed of the app in the outage cases (1 in full mode: real time).
SPEED = 1.0 if FULL else 20.0
#: Events per case.
EVENTS = 200 if FULL else 60

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if FULL else 300)]


class Rig:
    """A collector, the proxy in front of it, and one app database."""

    def __init__(self, tmp_path: Path, cert_dir: Path, proxy: FaultProxy, collector: Collector):
        self.tmp_path = tmp_path
        self.cert_dir = cert_dir
        self.proxy = proxy
        self.collector = collector
        self.db = tmp_path / "app" / "telemetry.db"
        self.recorded = 0
        self.runs = 0

    def command(self, *args: str, api_key: str = API_KEY) -> list[str]:
        """The app's command line with this rig's endpoint, key, CA and database."""
        self.runs += 1
        return [
            sys.executable,
            str(APP),
            "--db",
            str(self.db),
            "--endpoint",
            f"{self.proxy.url}/v1/submit",
            "--api-key",
            api_key,
            "--ca",
            str(self.cert_dir / "ca.pem"),
            "--log",
            str(self.tmp_path / f"app{self.runs}.log"),
            *args,
        ]

    def run(self, *args: str, api_key: str = API_KEY, timeout: float = 240) -> list[dict[str, Any]]:
        """Run the app to its end; add up and return its reports."""
        result = subprocess.run(
            self.command(*args, api_key=api_key),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return self.count(result.stdout)

    def start(self, *args: str, api_key: str = API_KEY) -> subprocess.Popen[str]:
        """Start the app in the background."""
        return subprocess.Popen(
            self.command(*args, api_key=api_key), stdout=subprocess.PIPE, text=True
        )

    def count(self, stdout: str) -> list[dict[str, Any]]:
        """Add the ids the app reported to :attr:`recorded`."""
        reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        for report in reports:
            assert report["none"] == 0, report  # track() never refused an event
            self.recorded += report["ids"]
        return reports

    def next_run(self, linger: float = 120.0, **kwargs: Any) -> None:
        """The app starts again, records nothing, and runs until its queue is empty."""
        self.run("--linger", str(linger), "--speed", str(SPEED), **kwargs)

    def queue_rows(self) -> tuple[int, int, int]:
        """(entries, dead, highest retry count) in the app's queue."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(dead), 0), coalesce(max(retry_count), 0)"
                " FROM telemetry_queue"
            ).fetchone()
        finally:
            conn.close()
        return int(row[0]), int(row[1]), int(row[2])

    def collector_count(self) -> int:
        """Events the collector counted."""
        context = ssl.create_default_context(cafile=str(self.cert_dir / "ca.pem"))
        with httpx.Client(verify=context, timeout=30) as http:
            response = http.get(
                f"{self.collector.base_url}/v1/stats",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert response.status_code == 200, response.text
        return int(response.json()["totals"]["count"])

    def assert_every_event_counted_once(self) -> None:
        """The collector counted exactly what was recorded; nothing is left queued."""
        assert self.recorded > 0
        assert self.collector_count() == self.recorded
        entries, dead, _ = self.queue_rows()
        assert (entries, dead) == (0, 0)
        assert not list(self.db.parent.glob("*.spill-*"))


@pytest.fixture
def rig(  # noqa: PLR0917
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    server_context: Any,
    client_context: Any,
    log_vault: LogVault,
) -> Iterator[Rig]:
    collector = Collector(
        cert_dir,
        ["--db", str(tmp_path / "collector.db")],
        extra_args=["--rate-limit", "10000000", "--rate-burst", "1000000"],
        vault=log_vault,
        name="collector-zero-loss",
    )
    collectors.append(collector)
    collector.start()
    with FaultProxy(
        server_context,
        client_context,
        [collector.address],
        rates={},
        seed=8,
        hang_seconds=3.0,
        retry_after="1",
    ) as proxy:
        yield Rig(tmp_path, cert_dir, proxy, collector)


def _record(figures: Figures, case: str, rig: Rig, **values: Any) -> None:
    figures.record(
        "zero_loss",
        **{case: {"recorded": rig.recorded, "counted": rig.collector_count(), **values}},
    )


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_os_exit_right_after_track(rig: Rig, figures: Figures) -> None:
    rig.run("--shape", "hard-exit", "--count", str(EVENTS), "--type", "zl.exit")
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, "os_exit_after_track", rig)


def test_sigkill_mid_send(rig: Rig, figures: Figures) -> None:
    # Every answer is lost after the collector stored the batch, then the app dies.
    rig.proxy.set_rates({"ack_lost": 1.0})
    app = rig.start("--count", str(EVENTS), "--type", "zl.kill", "--linger", "60")
    assert _wait(lambda: rig.proxy.counts["ack_lost"] >= 1, 60)
    app.send_signal(signal.SIGKILL)
    out, _ = app.communicate(timeout=60)
    rig.count(out)
    rig.proxy.set_rates({})
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, "sigkill_mid_send", rig, acks_lost=rig.proxy.counts["ack_lost"])


def test_sigstop_then_sigcont(rig: Rig, figures: Figures) -> None:
    # A frozen container: stopped with a request in flight, past its lease.
    frozen = 30.0 if FULL else 6.0
    rig.proxy.set_rates({"hang": 1.0})
    app = rig.start("--count", str(EVENTS), "--type", "zl.frozen", "--linger", "120")
    assert _wait(lambda: rig.proxy.counts["hang"] >= 1, 60)
    app.send_signal(signal.SIGSTOP)
    time.sleep(frozen)  # the freeze itself is the scenario
    rig.proxy.set_rates({})
    app.send_signal(signal.SIGCONT)
    out, _ = app.communicate(timeout=240)
    assert app.returncode == 0
    rig.count(out)
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, "sigstop_sigcont", rig, frozen_seconds=frozen)


@pytest.mark.parametrize("shape", ["mp-fork", "prefork"])
def test_forking_server(rig: Rig, figures: Figures, shape: str) -> None:
    reports = rig.run(
        "--shape", shape, "--children", "3", "--count", str(EVENTS), "--type", f"zl.{shape}",
        "--linger", "60",
    )  # fmt: skip
    assert len({r["pid"] for r in reports}) == 4  # the parent and three workers tracked
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, f"forking_{shape}", rig)


def test_collector_down_for_an_hour(rig: Rig, figures: Figures) -> None:
    """Connections refused for one hour of client time: the client probes the
    collector (ping) instead of burning its entries' retries, nothing dies, and
    everything is delivered afterwards."""
    speed = 360.0  # one client hour in ten seconds, even in full mode
    rig.proxy.set_outage("refuse")
    app = rig.start(
        "--count", str(EVENTS), "--type", "zl.outage", "--linger", "600", "--speed", str(speed)
    )  # fmt: skip
    time.sleep(3600 / speed)
    entries, dead, retries = rig.queue_rows()
    rig.proxy.set_outage(None)
    out, _ = app.communicate(timeout=240)
    rig.count(out)
    assert entries == EVENTS and dead == 0
    assert retries >= 1
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, "collector_down_one_hour", rig, failures_during_outage=retries)


STORMS = [
    ("500 for 15 s", 500, None, 15.0),
    ("503 + Retry-After for 20 s", 503, "1", 20.0),
    ("502 for 45 s", 502, None, 45.0),
    ("refused for 30 s", "refuse", None, 30.0),
    ("429 storm for 20 s", 429, "2", 20.0),
]


@pytest.mark.parametrize("storm", STORMS, ids=[s[0] for s in STORMS])
def test_outage_storms(
    rig: Rig, figures: Figures, storm: tuple[str, int | str, str | None, float]
) -> None:
    name, status, retry_after, seconds = storm
    rig.proxy.set_outage(status, retry_after=retry_after)
    app = rig.start(
        "--count", str(EVENTS), "--type", "zl.storm", "--linger", "600", "--speed", str(SPEED)
    )  # fmt: skip
    time.sleep(seconds / SPEED)  # the outage itself is the scenario
    # On a loaded machine the app may not have tried yet: the outage lasts until
    # it has met it at least once (bounded).
    _wait(lambda: rig.queue_rows()[2] >= 1, 60)
    _, dead, retries = rig.queue_rows()
    rig.proxy.set_outage(None)
    out, _ = app.communicate(timeout=240)
    rig.count(out)
    assert dead == 0 and retries >= 1  # it failed, and nothing died of it
    rig.assert_every_event_counted_once()
    _record(figures, f"storm {name}", rig, failures_during_outage=retries)


def test_a_401_fixed_by_a_new_key(rig: Rig, figures: Figures) -> None:
    wrong = "an-old-key-the-collector-never-knew"
    rig.run("--count", str(EVENTS), "--type", "zl.key", "--linger", "5", api_key=wrong)
    entries, dead, _ = rig.queue_rows()
    assert entries == dead == EVENTS  # refused for good under the old key
    rig.next_run()  # the app's next release ships the right key
    rig.assert_every_event_counted_once()
    _record(figures, "401_fixed_by_new_key", rig, dead_before_fix=dead)


def test_database_locked_for_ten_seconds(rig: Rig, figures: Figures) -> None:
    rig.run("--count", "1", "--type", "zl.lock", "--linger", "30")  # the app has run before
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER_SCRIPT, str(rig.db), "10"], stdout=subprocess.PIPE, text=True
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    try:
        rig.run("--count", "200", "--type", "zl.lock", "--linger", "30")
    finally:
        locker.wait(timeout=60)
        locker.stdout.close()
    rig.next_run()
    rig.assert_every_event_counted_once()
    _record(figures, "database_locked_10s", rig)
