"""Resident memory of a sending process against the depth of its queue.

For each depth (1k, 10k in a quick run; 1k, 10k, 100k, 1M in a full one) a
database is filled with that many pending events (not timed), then a child
process opens a ``TelemetryService`` on it with remote submission on (endpoint
on a loopback port where nothing listens), records one event and waits while
``submit_now()`` claims a batch and fails to send it (the worker then backs off). Its RSS
(``/proc/<pid>/status``) is read after a settling time, next to an idle
interpreter's started at the same moment. The check is the growth from the
smallest depth to the largest.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import _ours, _proc
from bench._harness import Context, Report, Row, Unavailable

NAME = "rss_depth"

_SCRIPT = """
import sys, time
from telemetry_core import TelemetryConfig, TelemetryService
config = TelemetryConfig(app="bench", db_path=sys.argv[2], enabled=True, do_not_track=False,
                         remote_enabled=True, endpoint=sys.argv[3], max_queue_size=10**8)
with TelemetryService(config) as telemetry:
    telemetry.track("command_executed", {"command": "run"}, duration_ms=12.5, success=True)
    # One attempt now (refused): the transport, its TLS context and urllib3 are
    # loaded whether or not the worker's first cycle saw the event.
    telemetry.submit_now()
    telemetry.queue_stats()
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _label(depth: int) -> str:
    return f"{depth // 1_000_000}M" if depth >= 1_000_000 else f"{depth // 1000}k"


def _measure(db: Path, settle: float) -> tuple[float, float]:
    """(RSS of the service process, RSS of an idle interpreter), in MB."""
    endpoint = f"https://127.0.0.1:{_ours.closed_port()}/v1/submit"
    env = _proc.clean_env()
    sleep_for = str(settle + 5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, sleep_for, str(db), endpoint],
            stdout=subprocess.PIPE,
            env=env,
        ),
        subprocess.Popen(
            [sys.executable, "-c", _proc.IDLE_SCRIPT, sleep_for], stdout=subprocess.PIPE, env=env
        ),
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"child {proc.args!r} did not start")
        time.sleep(settle)
        ours, idle = (_proc.rss_mb(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    return ours, idle


def run(ctx: Context) -> Report:
    """Measure; see the module docstring."""
    if not Path("/proc/self/status").exists():
        raise Unavailable("needs /proc")
    depths: list[int] = ctx.pick([1_000, 10_000], [1_000, 10_000, 100_000, 1_000_000])
    settle: float = ctx.pick(2.0, 3.0)
    repeats: int = ctx.pick(1, 3)
    report = Report(NAME, "RSS of a sending process against queue depth")
    report.params = {"depths": depths, "settle_s": settle, "repeats": repeats}
    added: list[float] = []
    fill_s: dict[str, float] = {}
    for depth in depths:
        db = ctx.workdir / f"rss-{_label(depth)}.db"
        queue = _ours.Queue(db)
        t0 = time.monotonic()
        queue.record(depth)
        fill_s[_label(depth)] = round(time.monotonic() - t0, 2)
        queue.close()
        # The median of a few launches: RSS moves a little from run to run.
        samples = sorted(_measure(db, settle) for _ in range(repeats))
        ours, idle = samples[len(samples) // 2]
        added.append(ours - idle)
        report.rows.append(
            Row(
                f"service, worker backing off, {_label(depth)} pending",
                unit="process",
                note=f"RSS {ours:.1f} MB, idle interpreter {idle:.1f} MB, "
                f"added {ours - idle:.1f} MB",
                extra={"rss_mb": ours, "idle_mb": idle, "depth": depth},
            )
        )
    report.params["fill_seconds"] = fill_s
    report.check_value(
        f"RSS growth from {_label(depths[0])} to {_label(depths[-1])} pending",
        added[-1] - added[0],
        at_most=5,
        unit="MB",
    )
    report.series = {"depths": depths, "added_mb": added}
    return report
