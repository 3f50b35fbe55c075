"""kill -9 during submission: the next run delivers every recorded event.

A subprocess app records N events with remote submission on; the collector
holds its first answer, and the app is killed with SIGKILL while that request
is on the wire (its batch stays leased in the queue, unacknowledged). A second
process on the same database waits out the short lease and drains the queue.
Duplicates are allowed on the wire (the held batch may be stored by the
collector after all); the collector's distinct events must equal the recorded
set: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from telemetry_core.schema import Event
from tests.fake_collector import FakeCollector, Reply

ROOT = Path(__file__).resolve().parents[2]
N = 120

_CONFIG = """
import json, sys, time
from telemetry_core import TelemetryConfig, TelemetryService
db, url, ca = sys.argv[1], sys.argv[2], sys.argv[3]
config = TelemetryConfig(
    app="demo", db_path=db, enabled=True, remote_enabled=True, endpoint=url,
    ca_bundle=ca, do_not_track=False, submission_batch_size=50,
    submission_interval=0.1, lease_seconds=1.0, timeout=20.0,
)
"""

RECORDER = _CONFIG + textwrap.dedent(
    f"""
    telemetry = TelemetryService(config)
    ids = [telemetry.track("cmd", {{"i": i}}) for i in range({N})]
    print(json.dumps(ids), flush=True)
    time.sleep(60)  # the worker submits meanwhile; the test kills us
    """
)

DRAINER = _CONFIG + textwrap.dedent(
    """
    telemetry = TelemetryService(config)
    telemetry.close()  # drive the submission from here
    for _ in range(100):
        stats = telemetry.submit_now()
        if telemetry.queue_stats().pending == 0:
            break
        time.sleep(0.1)  # the killed sender's lease (1 s) runs out
    print(json.dumps({"pending": telemetry.queue_stats().pending}), flush=True)
    """
)


def _leased(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=5)
    try:
        row = conn.execute(
            "SELECT count(*) FROM telemetry_queue WHERE lease_owner IS NOT NULL"
        ).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _stored_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return {str(r[0]) for r in conn.execute("SELECT id FROM telemetry_events")}
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("stage", ["before_storing", "after_storing"])
def test_sigkill_during_submission_loses_nothing(
    tmp_path: Path, fake_collector_factory: Callable[..., FakeCollector], stage: str
) -> None:
    """``before_storing``: the collector holds the request 3 s before reading it
    (a scripted delay). ``after_storing``: it has stored the batch but holds the
    answer until the app is dead, so the resent batch must come back as
    duplicates."""
    killed = threading.Event()
    held: list[Event] = []

    def hold_first_answer(event: Event) -> None:
        if not held:
            held.append(event)
            killed.wait(15)  # bounded: the test sets it right after the kill

    if stage == "before_storing":
        collector = fake_collector_factory()
        collector.script(Reply(status=200, delay=3.0))
    else:
        collector = fake_collector_factory(on_event=hold_first_answer)
    db = tmp_path / "telemetry.db"
    args = [str(db), collector.submit_url, str(collector.ca_path)]
    app = subprocess.Popen(
        [sys.executable, "-c", RECORDER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        # The ids track() returned: what the app was promised. Some may sit in
        # the write-behind journal when the app dies (its worker held the
        # database lock); the next process takes them in.
        returned = json.loads(app.stdout.readline())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # bounded wait for the request in flight
            in_flight = collector.connections_accepted >= 1 and _leased(db) > 0
            if in_flight and (stage == "before_storing" or held):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the app never started submitting")
        if stage == "before_storing":
            time.sleep(0.3)  # well inside the 3 s the collector holds the request
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=10)
    finally:
        killed.set()
        if app.poll() is None:
            app.kill()
            app.wait(timeout=10)
        for stream in (app.stdout, app.stderr):
            if stream is not None:
                stream.close()
    assert app.returncode == -signal.SIGKILL
    recorded = set(returned)
    assert None not in recorded and len(recorded) == N
    delivered_before = len(collector.event_ids)
    assert delivered_before < N  # the kill interrupted the delivery
    if stage == "after_storing":
        assert delivered_before >= 1  # stored, never acknowledged to the app

    drainer = subprocess.run(
        [sys.executable, "-c", DRAINER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert drainer.returncode == 0, drainer.stderr
    assert json.loads(drainer.stdout.strip().splitlines()[-1]) == {"pending": 0}
    assert collector.wait_for_events(N, timeout=10)
    distinct = collector.event_ids
    assert len(distinct) == len(set(distinct)) == N
    assert set(distinct) == recorded == _stored_ids(db)
    if stage == "after_storing":
        # The unacknowledged batch was resent and counted once.
        assert collector.duplicates >= delivered_before
