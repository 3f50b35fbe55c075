"""Helpers for benchmarks that time whole Python processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._harness import Round

#: Records one event and exits: what a CLI app adds to each of its runs.
RECORD_ONE = """
import sys
from telemetry_core import TelemetryConfig, TelemetryService
config = TelemetryConfig(app="bench", db_path=sys.argv[1], enabled=True, do_not_track=False,
                         remote_enabled=len(sys.argv) > 2,
                         endpoint=sys.argv[2] if len(sys.argv) > 2 else None)
with TelemetryService(config) as telemetry:
    telemetry.track("command_executed", {"command": "run"}, duration_ms=12.5, success=True)
"""

#: ``python -c IDLE_SCRIPT SECONDS``: an idle interpreter, printing ``ready`` first.
IDLE_SCRIPT = "import sys, time; print('ready', flush=True); time.sleep(float(sys.argv[1]))"


def rss_mb(pid: int) -> float:
    """The resident memory of ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clean_env() -> dict[str, str]:
    """The environment for child processes, without telemetry switches of the caller."""
    env = {k: v for k, v in os.environ.items() if "TELEMETRY" not in k and k != "DO_NOT_TRACK"}
    env.pop("PYTHONDEVMODE", None)
    # Installed apps run from cached bytecode; without this the children would
    # recompile telemetry-core on every start and the figures would measure the
    # compiler (a sandbox here sets it).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def process_round(
    args: Sequence[str],
    cwd: Path,
    timeout: float = 60.0,
    failures: list[str] | None = None,
) -> Callable[[], Round]:
    """A round function that runs ``python args...`` once and times it end to end.

    A non-zero exit raises, unless ``failures`` is given: then the exit status and
    the end of stderr are appended to it and the timing is kept, so that a
    benchmark can report abnormal exits as a finding of its own.
    """
    env = clean_env()

    def one_round() -> Round:
        t0 = time.perf_counter_ns()
        done = subprocess.run(
            [sys.executable, "-X", "faulthandler", *args],
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter_ns() - t0
        if done.returncode != 0 and failures is not None:
            failures.append(f"exit {done.returncode}: {done.stderr.decode()[-300:].strip()}")
        elif done.returncode != 0:
            raise RuntimeError(f"{args!r} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        return Round(elapsed, 1, [elapsed])

    return one_round


def timed_run(cmd: Sequence[str], *, env: dict[str, str], cwd: Path) -> float:
    """Run ``cmd`` to completion (it must succeed); return its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - t0
