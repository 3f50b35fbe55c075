"""An idle worker's cost: CPU share and resident memory over a quiet window.

Two child processes run side by side over the same window: an idle interpreter
(``time.sleep``) and a process holding an open ``TelemetryService`` with remote
submission on (endpoint on a loopback port where nothing listens, default
5-minute interval), so its worker thread is alive and waiting. CPU time comes
from ``/proc/<pid>/stat`` (user + system) sampled after a warm-up; RSS from
``/proc/<pid>/status``. The service process makes one (refused) attempt with
``submit_now()`` before the window, so that what a process holds after sending
is measured every time (the worker's own first cycle may run before the event
is recorded, and then waits its interval). A third process runs the same service without
``SSL_CERT_FILE``/``SSL_CERT_DIR`` in its environment (they make the https
transport load the whole bundle they name, as OpenSSL does): its TLS context
then reads the system's hashed CA directory lazily. A fourth process holds
only what the service needs from other libraries once it has sent (the
*dependency floor*): sqlite3 with a WAL file written once, attrs, pluggy,
msgspec, and one refused HTTPS request through a urllib3 pool with the
default TLS context, with one thread waiting; the service's own modules and
state are what it holds above that floor. A fifth process is the same floor
sending with the standard library's ``http.client`` instead of urllib3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import _cpu, _ours, _proc
from bench._harness import Context, Report, Row, Unavailable

NAME = "idle"
IDLE = "idle interpreter"
OURS = "telemetry-core service, worker idle"
OURS_CADIR = "the same, system CA directory (no SSL_CERT_FILE/DIR)"
FLOOR = "dependency floor: its libraries, one send, a waiting thread"
FLOOR_STDLIB = "the same floor with http.client instead of urllib3"

_OURS_SCRIPT = """
import sys, time
from telemetry_core import TelemetryConfig, TelemetryService
config = TelemetryConfig(app="bench", db_path=sys.argv[2], enabled=True, do_not_track=False,
                         remote_enabled=True, endpoint=sys.argv[3])
with TelemetryService(config) as telemetry:
    telemetry.track("command_executed", {"command": "run"}, duration_ms=12.5, success=True)
    # One attempt now (refused): the transport, its TLS context and urllib3 are
    # loaded whether or not the worker's first cycle saw the event.
    telemetry.submit_now()
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
"""

_FLOOR_SCRIPT = """
import sqlite3, sys, threading, time
import attrs, msgspec, pluggy, ssl
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, payload BLOB)")
conn.execute("INSERT OR REPLACE INTO t VALUES ('a', ?)", (msgspec.json.encode({"type": "x"}),))
body = msgspec.json.encode([{"type": "x"}])
if sys.argv[4] == "urllib3":
    import urllib3
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1", int(sys.argv[3]), ssl_context=ssl.create_default_context(), retries=False
    )
    try:
        pool.request("POST", "/v1/submit", body=body)
    except urllib3.exceptions.HTTPError:
        pass
else:
    import http.client
    https = http.client.HTTPSConnection(
        "127.0.0.1", int(sys.argv[3]), context=ssl.create_default_context()
    )
    try:
        https.request("POST", "/v1/submit", body=body)
    except OSError:
        pass
wake = threading.Event()
threading.Thread(target=wake.wait, daemon=True).start()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    window: float = ctx.pick(3.0, 60.0)
    warmup = 1.0
    report = Report(NAME, f"idle worker over {window:g} s (CPU share, RSS)")
    report.params = {"window_s": window, "warmup_s": warmup}
    if not Path("/proc/self/stat").exists():
        raise Unavailable("needs /proc")
    port = _ours.closed_port()
    endpoint = f"https://127.0.0.1:{port}/v1/submit"
    sleep_for = str(window + warmup + 5)
    env = _proc.clean_env()
    procs = {
        IDLE: subprocess.Popen(
            [sys.executable, "-c", _proc.IDLE_SCRIPT, sleep_for], stdout=subprocess.PIPE, env=env
        ),
        OURS: subprocess.Popen(
            [sys.executable, "-c", _OURS_SCRIPT, sleep_for, str(ctx.workdir / "idle.db"), endpoint],
            stdout=subprocess.PIPE,
            env=env,
        ),
        OURS_CADIR: subprocess.Popen(
            [
                sys.executable,
                "-c",
                _OURS_SCRIPT,
                sleep_for,
                str(ctx.workdir / "idle-cadir.db"),
                endpoint,
            ],
            stdout=subprocess.PIPE,
            env={k: v for k, v in env.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")},
        ),
        **{
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _FLOOR_SCRIPT,
                    sleep_for,
                    str(ctx.workdir / f"floor-{client}.db"),
                    str(port),
                    client,
                ],
                stdout=subprocess.PIPE,
                env=env,
            )
            for name, client in ((FLOOR, "urllib3"), (FLOOR_STDLIB, "http.client"))
        },
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"child {proc.args!r} did not start")
        time.sleep(warmup)
        start = {name: _cpu.cpu_seconds(p.pid) for name, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        cpu = {name: _cpu.cpu_seconds(p.pid) - start[name] for name, p in procs.items()}
        rss = {name: _proc.rss_mb(p.pid) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    for name in procs:
        report.rows.append(
            Row(
                name,
                unit="window",
                note=f"CPU {100 * cpu[name] / elapsed:.3f} %, RSS {rss[name]:.1f} MB",
                extra={"cpu_s": cpu[name], "rss_mb": rss[name]},
            )
        )
    report.check_value(
        "CPU share of the worker process", 100 * cpu[OURS] / elapsed, at_most=0.1, unit="%"
    )
    report.check_value(
        "RSS above an idle interpreter", rss[OURS] - rss[IDLE], at_most=15, unit="MB"
    )
    report.notes.append(
        f"the dependency floor is {rss[FLOOR] - rss[IDLE]:.1f} MB above an idle interpreter; "
        f"telemetry-core's own modules and state add {rss[OURS] - rss[FLOOR]:.1f} MB to it; "
        f"with http.client instead of urllib3 the floor is {rss[FLOOR_STDLIB] - rss[IDLE]:.1f} MB"
    )
    report.notes.append(
        f"CPU counted over {elapsed:.1f} s; clock tick {1 / os.sysconf('SC_CLK_TCK'):.3f} s "
        "bounds the resolution"
    )
    return report
