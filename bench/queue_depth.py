"""The batch cycle and opening the queue at growing queue depths.

For each depth (1k, 100k, 1M pending; 1k and 10k in a quick run) a queue is
filled once, then rounds interleave across depths: one batch cycle (dequeue 100
+ mark_submitted) and, separately, opening the database afresh (local store +
storage plugin) and calling ``stats()``. The raw floor's cycle is measured at
the same depths for the plot. Each cycle removes 100 entries, a negligible
share of the depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench import _ours
from bench._harness import Context, Report, Round, interleave
from bench._raw import RawQueue

NAME = "queue_depth"
BATCH = 100


def _label(depth: int) -> str:
    return f"{depth // 1_000_000}M" if depth >= 1_000_000 else f"{depth // 1000}k"


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    depths: list[int] = ctx.pick([1_000, 10_000], [1_000, 100_000, 1_000_000])
    k = ctx.pick(3, 5)
    rounds = ctx.pick(5, 15)
    report = Report(NAME, "cost against queue depth (cycle per batch of 100; open + stats)")
    report.params = {"depths": depths, "batches_per_round": k, "rounds": rounds}
    closers: list[Callable[[], object]] = []
    fill_s: dict[str, float] = {}

    def cycle_ours(depth: int) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            queue = _ours.Queue(ctx.workdir / f"ours-{depth}.db")
            closers.append(queue.close)
            t0 = time.monotonic()
            queue.record(depth + (rounds + 2) * k * BATCH)
            fill_s[_label(depth)] = round(time.monotonic() - t0, 2)
            storage = queue.storage

            def one_round() -> Round:
                clock = time.perf_counter_ns
                per = []
                for _ in range(k):
                    t1 = clock()
                    storage.mark_submitted([q.event_id for q in storage.dequeue(BATCH)])
                    per.append(clock() - t1)
                return Round(sum(per), k, per)

            return one_round

        return factory

    def open_ours(depth: int) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            path: Path = ctx.workdir / f"ours-{depth}.db"
            if not path.exists():
                _ours.Queue(path).close()

            def one_round() -> Round:
                t1 = time.perf_counter_ns()
                queue = _ours.Queue(path)
                queue.storage.stats()
                elapsed = time.perf_counter_ns() - t1
                queue.close()
                return Round(elapsed, 1, [elapsed])

            return one_round

        return factory

    def cycle_raw(depth: int) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            queue = RawQueue(ctx.workdir / f"raw-{depth}.db")
            closers.append(queue.close)
            queue.fill(depth + (rounds + 2) * k * BATCH)

            def one_round() -> Round:
                clock = time.perf_counter_ns
                per = []
                for _ in range(k):
                    t1 = clock()
                    queue.delete([row[0] for row in queue.claim(BATCH)])
                    per.append(clock() - t1)
                return Round(sum(per), k, per)

            return one_round

        return factory

    subjects: dict[str, Callable[[], Callable[[], Round]]] = {}
    for depth in depths:
        subjects[f"ours cycle @{_label(depth)}"] = cycle_ours(depth)
        subjects[f"ours open+stats @{_label(depth)}"] = open_ours(depth)
        subjects[f"raw cycle @{_label(depth)}"] = cycle_raw(depth)
    try:
        report.rows = interleave(subjects, rounds=rounds, unit="batch", max_seconds=300)
    finally:
        for close in closers:
            close()
    small, big = _label(depths[0]), _label(depths[-1])
    report.check_ratio(f"ours cycle @{big}", f"ours cycle @{small}", at_least=0.8)
    row = report.row(f"ours open+stats @{big}")
    report.check_value(
        f"ours open+stats @{big}",
        None if row is None or row.median_ns is None else row.median_ns / 1e6,
        at_most=10,
        unit="ms",
    )
    report.series = {"depths": depths}
    for kind in ("ours cycle", "ours open+stats", "raw cycle"):
        medians = [report.row(f"{kind} @{_label(d)}") for d in depths]
        report.series[kind] = [None if r is None else r.median_ns for r in medians]
    report.params["fill_seconds"] = fill_s
    return report
