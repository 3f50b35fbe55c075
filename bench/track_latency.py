"""``track()`` latency against posthog-python ``capture()`` and Segment ``track()``.

Ours runs with its defaults and returns once the event is durable: appended to
the write-behind journal (a file the kernel holds; it survives a crash or
``kill -9`` of the process like a SQLite WAL commit), while a background thread
stores events in the database in batches during the rounds. The peers only
append to an in-memory queue (they are not durable: the events die with the
process). The peers are pointed at a loopback
port where nothing listens and run with no consumer thread (``thread=0``), so
``capture()``/``track()`` take their real enqueue path and nothing is sent;
their queues are emptied between rounds and the clients shut down at the end.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Callable
from typing import Any

from bench import _ours
from bench._harness import Context, Report, Round, interleave, timed_ops

NAME = "track_latency"
OURS = "telemetry-core track() (durable)"
POSTHOG = "posthog capture() (in memory)"
SEGMENT = "segment track() (in memory)"
#: Options both in-memory peers take alike: no sender thread, an unbounded
#: queue, no retries, so a call measures only the enqueue.
_PEER_OPTIONS: dict[str, Any] = {
    "thread": 0,
    "max_queue_size": 10**7,
    "sync_mode": False,
    "max_retries": 0,
    "timeout": 0.1,
}


def _drain(q: object) -> None:
    get = getattr(q, "get_nowait", None)
    done = getattr(q, "task_done", None)
    if get is None:
        return
    for _ in range(10**6):
        try:
            get()
        except queue.Empty:
            return
        # shutdown() joins the queue: every item taken must be marked done.
        if done is not None:
            done()


def _drained_round(op: Callable[[], object], n: int, queues: list[object]) -> Round:
    """Time ``n`` calls of ``op``, then empty the peers' queues (untimed)."""
    result = timed_ops([op] * n)
    for q in queues:
        _drain(q)
    return result


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    n = ctx.pick(200, 1000)
    rounds = ctx.pick(5, 20)
    report = Report(NAME, "track() latency vs in-memory analytics clients (time per call)")
    report.params = {"calls_per_round": n, "rounds": rounds}
    closers: list[Callable[[], object]] = []
    host = f"http://127.0.0.1:{_ours.closed_port()}"
    props = dict(_ours.EVENT_PROPERTIES)

    def ours() -> Callable[[], Round]:
        svc = _ours.service(ctx.workdir / "ours.db")
        closers.append(lambda: _ours.close_service(svc))
        return lambda: timed_ops([lambda: _ours.track(svc)] * n)

    def posthog() -> Callable[[], Round]:
        from posthog import Posthog

        client = Posthog(
            "phc_bench", host=host, **_PEER_OPTIONS, enable_exception_autocapture=False
        )
        closers.append(client.shutdown)
        lane_queues = [getattr(client, "queue", None)]

        def op() -> None:
            client.capture("command_executed", distinct_id="install-0", properties=props)

        return lambda: _drained_round(op, n, lane_queues)

    def segment() -> Callable[[], Round]:
        from segment.analytics import Client

        client = Client("bench-write-key", host=host, **_PEER_OPTIONS)
        # With thread=0 the client never creates the list its atexit join() walks.
        if not hasattr(client, "consumers"):
            client.consumers = []
        closers.append(client.shutdown)

        def op() -> None:
            client.track(user_id="install-0", event="command_executed", properties=props)

        return lambda: _drained_round(op, n, [client.queue])

    quiet = [logging.getLogger(n) for n in ("posthog", "segment", "analytics")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        report.rows = interleave(
            {OURS: ours, POSTHOG: posthog, SEGMENT: segment}, rounds=rounds, unit="call"
        )
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    report.check_ratio(OURS, POSTHOG, below=1.0)
    report.check_ratio(OURS, SEGMENT, below=1.0)
    report.notes.append(
        "peers only queue in memory; ours is in its journal file on return (stored in SQLite "
        "by a background thread during the rounds)"
    )
    return report
