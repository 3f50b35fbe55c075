"""``mark_failed`` (retry scheduling) of a claimed batch of 100, against a raw UPDATE.

Each timed operation marks 100 claimed entries failed: ours asks the backoff
plugin for each entry's next attempt and keeps the error; the raw floor is one
``UPDATE`` of the 100 rows. Claiming (not timed) happens before each batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import _ours
from bench._harness import Context, Report, Round, interleave
from bench._raw import RawQueue

NAME = "mark_failed"
BATCH = 100
OURS = "telemetry-core mark_failed(100 ids)"
RAW = "raw UPDATE of 100 rows"
ERROR = "HTTP 503: collector overloaded"


def _timed(prepare: Callable[[], list[str]], act: Callable[[list[str]], object], k: int) -> Round:
    clock = time.perf_counter_ns
    per = []
    for _ in range(k):
        ids = prepare()
        t0 = clock()
        act(ids)
        per.append(clock() - t0)
    return Round(sum(per), k, per)


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    k = ctx.pick(3, 10)
    rounds = ctx.pick(5, 20)
    need = (rounds + 2) * k * BATCH
    report = Report(NAME, f"mark_failed of a batch of {BATCH} (time per batch)")
    report.params = {"batch": BATCH, "batches_per_round": k, "rounds": rounds}
    closers: list[Callable[[], object]] = []

    def ours() -> Callable[[], Round]:
        queue = _ours.Queue(ctx.workdir / "ours.db")
        closers.append(queue.close)
        queue.record(need)
        storage = queue.storage
        return lambda: _timed(
            lambda: [q.event_id for q in storage.dequeue(BATCH)],
            lambda ids: storage.mark_failed(ids, ERROR),
            k,
        )

    def raw() -> Callable[[], Round]:
        queue = RawQueue(ctx.workdir / "raw.db")
        closers.append(queue.close)
        queue.fill(need)
        return lambda: _timed(
            lambda: [row[0] for row in queue.claim(BATCH)],
            lambda ids: queue.fail(ids, ERROR),
            k,
        )

    try:
        report.rows = interleave({OURS: ours, RAW: raw}, rounds=rounds, unit="batch")
    finally:
        for close in closers:
            close()
    report.check_ratio(OURS, RAW, at_least=0.6)
    return report
