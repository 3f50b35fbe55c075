"""drain() with a transport that splits a request (``begin_batch``): the
database work of the neighbouring batches runs while one is in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from telemetry_core.errors import TransportError
from telemetry_core.models import QueuedEvent, SubmissionResult
from telemetry_core.schema import Event
from tests.unit.test_worker import FakeStorage, FakeTransport, Rig


class SplitTransport(FakeTransport):
    """``begin_batch`` records the send; the returned call answers from the script."""

    def __init__(self, trace: list[str]) -> None:
        super().__init__()
        self.trace = trace

    def begin_batch(self, events: Sequence[Event]) -> Callable[[], SubmissionResult]:
        self.trace.append(f"sent {len(self.batches)}")
        number = len(self.batches)

        def answer() -> SubmissionResult:
            self.trace.append(f"answer {number}")
            return self.submit_batch(events)

        return answer


class TracedStorage(FakeStorage):
    """Records the order of claims and acknowledgements in the shared trace."""

    def __init__(self, rig: Rig, trace: list[str]) -> None:
        super().__init__(rig.clock)
        self.trace = trace

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        batch = super().dequeue(batch_size)
        self.trace.append(f"claim {len(batch)}")
        return batch

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        self.trace.append(f"ack {len(event_ids)}")
        super().mark_submitted(event_ids)


@pytest.fixture
def split(tmp_path: Path) -> tuple[Rig, list[str]]:
    trace: list[str] = []
    rig = Rig(tmp_path)
    rig.transport = SplitTransport(trace)
    rig.plugin.transport = rig.transport
    rig.storage = TracedStorage(rig, trace)
    rig.worker = rig.new_worker()
    return rig, trace


def test_the_next_claim_and_the_last_ack_overlap_the_request(split: tuple[Rig, list[str]]) -> None:
    rig, trace = split
    ids = rig.storage.add(35)
    assert rig.worker.drain(total=35) == 35
    # The first delivered batch of a worker is acknowledged at once (then the
    # dedup-window check asks the collector); a short batch (the queue's end)
    # goes alone, as there is nothing to claim ahead.
    assert trace == [
        "claim 10",
        "sent 0",
        "claim 10",
        "answer 0",
        "ack 10",
        "sent 1",
        "claim 10",
        "answer 1",
        "sent 2",
        "ack 10",
        "claim 5",
        "answer 2",
        "ack 10",
        "ack 5",
        "claim 0",
    ]
    assert rig.storage.submitted == ids  # in queue order, every one once
    assert [b for batch in rig.transport.batches for b in batch] == ids
    assert not rig.storage.entries
    assert [row["batch_size"] for row in rig.log.rows] == [10, 10, 10, 5]
    assert len(rig.plugin.submitted) == 4


def test_a_failure_in_flight_gives_back_the_batch_claimed_ahead(
    split: tuple[Rig, list[str]],
) -> None:
    rig, _ = split
    ids = rig.storage.add(40)
    rig.transport.script = [None, None, TransportError("busy", retryable=True, status=503)]
    assert rig.worker.drain(total=40) == 20
    assert rig.worker.last_cycle is not None and rig.worker.last_cycle.reason == "retry"
    assert rig.storage.submitted == ids[:20]
    assert rig.storage.released == ids[30:40]  # claimed while the third batch was out
    failed = [rig.storage.entries[i] for i in ids[20:30]]
    assert all(e["retry"] == 1 and not e["leased"] for e in failed)
    assert all(not rig.storage.entries[i]["leased"] for i in ids[30:])
    rows = rig.log.rows
    assert [r["status"] for r in rows] == [200, 200, 503]  # the log keeps the order


def test_a_storage_error_while_in_flight_still_applies_the_answer(
    split: tuple[Rig, list[str]],
) -> None:
    rig, _ = split
    ids = rig.storage.add(30)
    rig.worker.drain(total=10, max_batches=1)  # the transport's first call, alone
    real = rig.storage.dequeue
    calls: list[int] = []

    def breaks_second(batch_size: int) -> list[QueuedEvent]:
        calls.append(batch_size)
        if len(calls) == 2:  # the claim ahead, while the batch is in flight
            raise OSError("disk went away")
        return real(batch_size)

    rig.storage.dequeue = breaks_second  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk"):
        rig.worker.drain(total=20)
    rig.storage.dequeue = real  # type: ignore[method-assign]
    # The batch in flight was delivered and acknowledged; nothing else is held.
    assert rig.storage.submitted == ids[:20]
    assert not any(e["leased"] for e in rig.storage.entries.values())
    assert rig.worker.drain(total=10) == 10
    assert rig.storage.submitted == ids


def test_a_drain_that_stops_gives_back_the_batch_claimed_ahead(
    split: tuple[Rig, list[str]],
) -> None:
    rig, _ = split
    ids = rig.storage.add(30)
    # Each drain claims the following batch ahead, then gives it back.
    assert rig.worker.drain(total=10, max_batches=1) == 10
    assert rig.storage.released == ids[10:20]
    assert rig.worker.drain(total=10, max_batches=1) == 10
    assert rig.storage.released == ids[10:]
    assert rig.worker.run_once().handled == 10
    assert rig.storage.submitted == ids
