"""What telemetry-core adds to a short CLI process.

Interleaved process launches: ``python -c pass`` (the floor), ``python -c
"import telemetry_core"``, and a script that opens a service on a local
database, records one event and exits (remote submission off). The figures are
the median added milliseconds over the floor.

Mounting: a small click app ``ax --help``, plain and with ``make_cli("ax",
config=...)`` mounted as ``ax telemetry``; the difference is what mounting adds
to every run of the app's own CLI (bar: 30 ms).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable

from bench import _proc
from bench._harness import Context, Report, Round, Unavailable, interleave

NAME = "cli_startup"
PASS = "python -c pass"
IMPORT = "python -c 'import telemetry_core'"
RECORD = "import + record one event + exit"
AX_PLAIN = "ax --help (click app, nothing mounted)"
AX_MOUNTED = "ax --help with make_cli mounted"

_AX = """
import click

@click.group()
def ax() -> None:
    \"\"\"A host app.\"\"\"
{mount}
ax(["--help"])
"""
_MOUNT = """
from telemetry_core.cli import make_cli

def load_config():
    from telemetry_core import TelemetryConfig
    return TelemetryConfig(app="ax", endpoint="https://127.0.0.1:8787", api_key="k")

ax.add_command(make_cli("ax", config=load_config), name="telemetry")
"""
# The same mount timed inside the process, so a loaded machine's process
# start-up noise (tens of ms) does not drown a difference of a few ms.
_MOUNT_TIMED = """
import time
import click

@click.group()
def ax() -> None:
    \"\"\"A host app.\"\"\"

t0 = time.perf_counter()
from telemetry_core.cli import make_cli
ax.add_command(make_cli("ax", config=lambda: None), name="telemetry")
print((time.perf_counter() - t0) * 1000)
"""


def mount_ms_in_process(ctx: Context, rounds: int) -> float:
    """Median milliseconds that importing and mounting make_cli takes inside a
    fresh interpreter that already imported click (as the app has)."""
    samples = []
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, "-c", _MOUNT_TIMED],
            cwd=ctx.workdir,
            env=_proc.clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        samples.append(float(done.stdout.strip()))
    return statistics.median(samples)


def added_ms(report: Report, subject: str, floor: str) -> float | None:
    """Median of ``subject`` minus the median of ``floor``, in ms."""
    a, b = report.row(subject), report.row(floor)
    if a is None or b is None or a.median_ns is None or b.median_ns is None:
        return None
    return (a.median_ns - b.median_ns) / 1e6


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    rounds = ctx.pick(5, 25)
    report = Report(NAME, "process start-up cost (wall time per process)")
    report.params = {"rounds": rounds}
    script = ctx.workdir / "record_one.py"
    script.write_text(_proc.RECORD_ONE)

    def available() -> None:
        try:
            import telemetry_core

            if not hasattr(telemetry_core.TelemetryService, "track"):
                raise Unavailable("TelemetryService.track not on main yet")
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc

    def floor() -> Callable[[], Round]:
        return _proc.process_round(["-c", "pass"], ctx.workdir)

    def imp() -> Callable[[], Round]:
        available()
        return _proc.process_round(["-c", "import telemetry_core"], ctx.workdir)

    def record() -> Callable[[], Round]:
        available()
        return _proc.process_round([str(script), str(ctx.workdir / "cli.db")], ctx.workdir)

    plain, mounted = ctx.workdir / "ax_plain.py", ctx.workdir / "ax_mounted.py"
    plain.write_text(_AX.format(mount=""))
    mounted.write_text(_AX.format(mount=_MOUNT))

    def ax_plain() -> Callable[[], Round]:
        return _proc.process_round([str(plain)], ctx.workdir)

    def ax_mounted() -> Callable[[], Round]:
        available()
        return _proc.process_round([str(mounted)], ctx.workdir)

    report.rows = interleave(
        {PASS: floor, IMPORT: imp, RECORD: record, AX_PLAIN: ax_plain, AX_MOUNTED: ax_mounted},
        rounds=rounds,
        unit="process",
    )
    report.check_value(
        "added by import telemetry_core", added_ms(report, IMPORT, PASS), at_most=40, unit="ms"
    )
    report.check_value(
        "added by import + record one event", added_ms(report, RECORD, PASS), at_most=80, unit="ms"
    )
    report.check_value(
        "added to `ax --help` by mounting make_cli",
        added_ms(report, AX_MOUNTED, AX_PLAIN),
        at_most=30,
        unit="ms",
    )
    report.check_value(
        "import + mount make_cli, timed inside the process",
        mount_ms_in_process(ctx, rounds),
        at_most=30,
        unit="ms",
    )
    return report
