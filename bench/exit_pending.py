"""Exit of a process with 10,000 pending events and an unreachable endpoint.

The database holds 10,000 queued events; the process enables remote submission
to a loopback port where nothing listens, records one event and exits. The
worker must not hold the exit back. Compared with ``python -c pass``.
"""

from __future__ import annotations

from collections.abc import Callable

from bench import _ours, _proc
from bench._harness import Context, Report, Round, interleave
from bench.cli_startup import added_ms

NAME = "exit_pending"
PASS = "python -c pass"
OURS = "record one + exit, 10k pending, endpoint down"
PENDING = 10_000


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    rounds = ctx.pick(5, 20)
    report = Report(NAME, f"exit with {PENDING:,} pending events, endpoint unreachable")
    report.params = {"rounds": rounds, "pending": PENDING}
    script = ctx.workdir / "record_one.py"
    script.write_text(_proc.RECORD_ONE)
    db = ctx.workdir / "pending.db"
    endpoint = f"https://127.0.0.1:{_ours.closed_port()}/v1/submit"
    failures: list[str] = []

    def floor() -> Callable[[], Round]:
        return _proc.process_round(["-c", "pass"], ctx.workdir)

    def ours() -> Callable[[], Round]:
        queue = _ours.Queue(db)
        try:
            queue.record(PENDING)
        finally:
            queue.close()
        return _proc.process_round([str(script), str(db), endpoint], ctx.workdir, failures=failures)

    report.rows = interleave({PASS: floor, OURS: ours}, rounds=rounds, unit="process")
    report.check_value("added at exit", added_ms(report, OURS, PASS), at_most=250, unit="ms")
    ours_row = report.row(OURS)
    runs = 0 if ours_row is None else ours_row.rounds + 1  # + the warm-up round
    report.check_value(
        "abnormal exits (e.g. -11 = SIGSEGV)", len(failures), at_most=0, unit=f"of {runs}"
    )
    report.notes.extend(failures[:5])
    return report
