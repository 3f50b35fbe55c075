"""Stateful property test of the ``sqlite`` queue against a simple model.

Several owners (queue objects) share one database; hypothesis interleaves
record, dequeue, mark_submitted, mark_failed, release, clock jumps and reopening
the file (close + new LocalStore and new queue objects, like a process restart).
After every step the queue must agree with the model:

* nothing submitted is ever delivered again;
* nothing pending is lost across a reopen (only counted drops of a full queue);
* dequeue returns the oldest due entries in FIFO order;
* leases are exclusive: no owner gets an entry another owner holds live.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from telemetry_core.local_store import LocalStore
from telemetry_core.schema import Event, new_event_id
from telemetry_core_plugins.sqlite_storage import SQLiteQueue

LEASE = 30.0
RETRY_DELAY = 10.0
MAX_RETRIES = 2
MAX_QUEUE_SIZE = 12
OWNERS = 3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Backoff:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        return RETRY_DELAY if retry_after is None else retry_after

    def should_retry(self, retry_count: int) -> bool:
        return retry_count < MAX_RETRIES

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        return self.clock() + self.next_retry_delay(retry_count, retry_after)


@attrs.define
class Entry:
    seq: int
    retry_count: int = 0
    next_retry_at: float = 0.0
    owner: str | None = None
    lease_expires_at: float = 0.0
    dead: bool = False
    context: str | None = None
    # Whether the stored next_retry_at is set (claimed or rescheduled): such an
    # entry is in the retry index, where parked entries are counted.
    scheduled: bool = False


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="queue-stateful-"))
        self.clock = Clock()
        self.entries: dict[str, Entry] = {}
        self.submitted: set[str] = set()
        self.dropped = 0
        self.seq = 0
        self._open()

    def _open(self) -> None:
        self.store = LocalStore(self.dir / "telemetry.db", clock=self.clock)
        self.queues = [
            SQLiteQueue(
                self.store,
                Backoff(self.clock),
                clock=self.clock,
                lease=LEASE,
                max_queue_size=MAX_QUEUE_SIZE,
            )
            for _ in range(OWNERS)
        ]

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ---------------------------------------------------------

    def _live_lease(self, e: Entry) -> bool:
        return e.owner is not None and e.lease_expires_at > self.clock.now

    def _due(self) -> list[str]:
        now = self.clock.now
        due = [
            (e.seq, i)
            for i, e in self.entries.items()
            if not e.dead and not self._live_lease(e) and e.next_retry_at <= now
        ]
        return [i for _, i in sorted(due)]

    def _held_by(self, owner: str) -> list[str]:
        return [i for i, e in self.entries.items() if e.owner == owner]

    # -- rules -----------------------------------------------------------------

    @rule(count=st.integers(min_value=1, max_value=4), enqueue=st.booleans())
    def record(self, count: int, enqueue: bool) -> None:
        for _ in range(count):
            event = Event(
                id=new_event_id(),
                type="stateful",
                timestamp=1,
                install_id="i",
                app="a",
                properties={"seq": self.seq},
            )
            self.queues[0].record(event, enqueue=enqueue)
            if not enqueue:
                continue
            self.entries[event.id] = Entry(seq=self.seq)
            self.seq += 1
            while len(self.entries) > MAX_QUEUE_SIZE:
                # Entries on the wire are never trimmed: they may be delivered.
                free = [i for i, e in self.entries.items() if not self._live_lease(e)]
                if not free:
                    break
                oldest = min(free, key=lambda i: self.entries[i].seq)
                del self.entries[oldest]
                self.dropped += 1

    @rule(owner=st.integers(0, OWNERS - 1), size=st.integers(min_value=1, max_value=6))
    def dequeue(self, owner: int, size: int) -> None:
        queue = self.queues[owner]
        expected = self._due()[:size]
        for i in expected:
            e = self.entries[i]
            assert not self._live_lease(e), "model bug"
        got = queue.dequeue(size)
        got_ids = [q.event_id for q in got]
        assert not set(got_ids) & self.submitted, "a submitted event was delivered again"
        for i in got_ids:
            e = self.entries.get(i)
            assert e is not None, "dequeue returned an entry that is not pending"
            assert not self._live_lease(e), "an entry leased by another owner was handed out"
        assert got_ids == expected, "not the oldest due entries in FIFO order"
        for q in got:
            e = self.entries[q.event_id]
            assert q.retry_count == e.retry_count
            assert q.event.properties == {"seq": e.seq}
            e.owner = queue.owner
            e.lease_expires_at = self.clock.now + LEASE
            e.scheduled = True

    def _pick(self, data: st.DataObject, owner: int) -> tuple[SQLiteQueue, list[str]]:
        queue = self.queues[owner]
        mine = self._held_by(queue.owner)
        others = [i for i in self.entries if i not in mine]
        chosen = data.draw(
            st.lists(st.sampled_from(mine), unique=True, max_size=6) if mine else st.just([])
        )
        if others and data.draw(st.booleans()):
            chosen.append(data.draw(st.sampled_from(others)))  # must be left alone
        return queue, chosen

    @rule(owner=st.integers(0, OWNERS - 1), data=st.data())
    def mark_submitted(self, owner: int, data: st.DataObject) -> None:
        queue, chosen = self._pick(data, owner)
        queue.mark_submitted(chosen)
        for i in chosen:
            if self.entries[i].owner == queue.owner:
                del self.entries[i]
                self.submitted.add(i)

    @rule(owner=st.integers(0, OWNERS - 1), data=st.data())
    def mark_failed(self, owner: int, data: st.DataObject) -> None:
        queue, chosen = self._pick(data, owner)
        queue.mark_failed(chosen, "boom")
        for i in chosen:
            e = self.entries[i]
            if e.owner != queue.owner:
                continue
            # A failure is never final: past MAX_RETRIES the entry is parked.
            e.next_retry_at = self.clock.now + RETRY_DELAY
            e.retry_count += 1
            e.owner = None
            e.scheduled = True

    @rule(owner=st.integers(0, OWNERS - 1), data=st.data(), context=st.sampled_from("ab"))
    def mark_dead(self, owner: int, data: st.DataObject, context: str) -> None:
        queue, chosen = self._pick(data, owner)
        queue.mark_dead(chosen, "refused", context)
        for i in chosen:
            e = self.entries[i]
            if e.owner != queue.owner:
                continue
            e.dead = True
            e.context = context
            e.retry_count += 1
            e.owner = None
            e.scheduled = False

    @rule(owner=st.integers(0, OWNERS - 1), data=st.data())
    def release(self, owner: int, data: st.DataObject) -> None:
        queue, chosen = self._pick(data, owner)
        queue.release(chosen)
        for i in chosen:
            e = self.entries[i]
            if e.owner == queue.owner:
                e.owner = None
                e.next_retry_at = 0.0
                e.scheduled = False

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 29.0, 31.0, 100.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: any(e.dead for e in self.entries.values()))
    @rule(keep=st.sampled_from([None, "a", "b"]))
    def revive_dead(self, keep: str | None) -> None:
        revived = self.queues[0].revive_dead(except_context=keep)
        dead = [e for e in self.entries.values() if e.dead and (keep is None or e.context != keep)]
        assert revived == len(dead)
        for e in dead:
            e.dead = False
            e.context = None
            e.retry_count = 0
            e.next_retry_at = 0.0
            e.owner = None
            e.scheduled = False

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self._open()
        # The old queue objects are gone, as after a crash: their leases just
        # run out. Model them as owned by nobody reachable.
        for e in self.entries.values():
            if e.owner is not None:
                e.owner = "gone:" + e.owner

    # -- invariants ------------------------------------------------------------

    @invariant()
    def queue_matches_model(self) -> None:
        rows = (
            self.store.connection()
            .execute("SELECT event_id, retry_count, dead FROM telemetry_queue ORDER BY id")
            .fetchall()
        )
        in_db = [r[0] for r in rows]
        by_seq = sorted(self.entries, key=lambda i: self.entries[i].seq)
        assert in_db == by_seq, "pending entries lost, resurrected or reordered"
        for event_id, retry_count, dead in rows:
            e = self.entries[event_id]
            assert (retry_count, bool(dead)) == (e.retry_count, e.dead)

    @invariant()
    def stats_match_model(self) -> None:
        stats = self.queues[0].stats()
        live = [e for e in self.entries.values() if not e.dead]
        assert stats.pending == len(live)
        assert stats.dead == len(self.entries) - len(live)
        assert stats.leased == sum(1 for e in live if self._live_lease(e))
        assert stats.due == len(self._due())
        assert stats.parked == sum(1 for e in live if e.retry_count >= MAX_RETRIES and e.scheduled)
        assert stats.dropped.get("queue_full", 0) == self.dropped


QueueMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueStateful = QueueMachine.TestCase
