"""Batch cycle: dequeue 100 events and mark them submitted.

Ours is the ``sqlite`` storage plugin (``dequeue(100)`` then
``mark_submitted(ids)``, two transactions, payloads decoded into events).
Baselines: the raw floor (claim 100 rows with one ``UPDATE ... RETURNING``, then
delete them), persist-queue (``get`` + ``ack`` one by one, 100 times) and
litequeue (``pop`` + ``done`` 100 times). Every queue is filled beforehand with
enough entries for all rounds.
"""

from __future__ import annotations

from collections.abc import Callable

from bench import _ours
from bench._harness import Context, Report, Round, interleave, timed_ops
from bench._raw import RawQueue

NAME = "batch_cycle"
BATCH = 100
OURS = "telemetry-core dequeue(100)+mark_submitted"
RAW = "raw claim+delete 100 rows"
PERSIST = "persist-queue get+ack x100"
LITE = "litequeue pop+done x100"


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    k = ctx.pick(2, 10)
    rounds = ctx.pick(3, 15)
    need = (rounds + 2) * k * BATCH
    report = Report(NAME, f"dequeue {BATCH} + mark submitted (time per batch of {BATCH})")
    report.params = {"batch": BATCH, "batches_per_round": k, "rounds": rounds, "filled": need}
    closers: list[Callable[[], object]] = []

    def ours() -> Callable[[], Round]:
        queue = _ours.Queue(ctx.workdir / "ours.db")
        closers.append(queue.close)
        queue.record(need)
        storage = queue.storage

        def cycle() -> None:
            batch = storage.dequeue(BATCH)
            storage.mark_submitted([q.event_id for q in batch])

        return lambda: timed_ops([cycle] * k)

    def raw() -> Callable[[], Round]:
        queue = RawQueue(ctx.workdir / "raw.db")
        closers.append(queue.close)
        queue.fill(need)

        def cycle() -> None:
            queue.delete([row[0] for row in queue.claim(BATCH)])

        return lambda: timed_ops([cycle] * k)

    def persist() -> Callable[[], Round]:
        from persistqueue import SQLiteAckQueue

        queue = SQLiteAckQueue(str(ctx.workdir / "persist"), auto_commit=True)
        closers.append(queue.close)
        for _ in range(need):
            queue.put(_ours.raw_event_json()[1])

        def cycle() -> None:
            for _ in range(BATCH):
                item = queue.get(block=False, raw=True)
                queue.ack(id=item["pqid"])

        return lambda: timed_ops([cycle] * k)

    def lite() -> Callable[[], Round]:
        from litequeue import LiteQueue

        queue = LiteQueue(str(ctx.workdir / "lite.db"))
        closers.append(queue.close)
        with queue.transaction():
            for _ in range(need):
                queue.put(_ours.raw_event_json()[1])

        def cycle() -> None:
            for _ in range(BATCH):
                message = queue.pop()
                queue.done(message.message_id)

        return lambda: timed_ops([cycle] * k)

    try:
        report.rows = interleave(
            {OURS: ours, RAW: raw, PERSIST: persist, LITE: lite}, rounds=rounds, unit="batch"
        )
    finally:
        for close in closers:
            close()
    report.check_ratio(OURS, RAW, at_least=0.6)
    report.check_ratio(OURS, PERSIST, at_least=20)
    return report
