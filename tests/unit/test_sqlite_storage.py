"""Tests of the bundled ``sqlite`` storage plugin (SQLiteQueue) on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import ConfigError, StorageError
from telemetry_core.local_store import LocalStore
from telemetry_core.models import QueuedEvent, QueueStats
from telemetry_core.plugin_host import PluginHost
from telemetry_core.protocols import Storage
from telemetry_core.schema import Event, validate_event
from telemetry_core_plugins import sqlite_storage
from telemetry_core_plugins._sqlite_schema import open_tables
from telemetry_core_plugins.sqlite_storage import SQLiteQueue
from tests.processes import in_forked_child, run_released_together
from tests.property import strategies

MakeEvent = Callable[..., Event]


class FakeClock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBackoff:
    """Retry ``delay`` seconds later (or ``retry_after``), at most ``max_retries`` times."""

    def __init__(self, clock: FakeClock, *, delay: float = 10.0, max_retries: int = 2) -> None:
        self.clock = clock
        self.delay = delay
        self.max_retries = max_retries
        self.calls: list[tuple[int, float | None]] = []

    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        return self.delay if retry_after is None else retry_after

    def should_retry(self, retry_count: int) -> bool:
        return retry_count < self.max_retries

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        self.calls.append((retry_count, retry_after))
        return self.clock() + self.next_retry_delay(retry_count, retry_after)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backoff(clock: FakeClock) -> FakeBackoff:
    return FakeBackoff(clock)


@pytest.fixture
def store(tmp_db_path: Path, clock: FakeClock) -> Iterator[LocalStore]:
    """The local store with the plugin's tables made (as a queue opening does)."""
    s = LocalStore(tmp_db_path, clock=clock)
    open_tables(s)
    yield s
    s.close()


@pytest.fixture
def queue(store: LocalStore, backoff: FakeBackoff, clock: FakeClock) -> SQLiteQueue:
    return SQLiteQueue(store, backoff, clock=clock, lease=60.0, max_queue_size=1000)


def record_many(queue: SQLiteQueue, make_event: MakeEvent, n: int, **fields: object) -> list[Event]:
    events = [make_event("test_event", {"n": i}, **fields) for i in range(n)]
    for e in events:
        queue.record(e, enqueue=True)
    return events


def ids(batch: list[QueuedEvent]) -> list[str]:
    return [q.event_id for q in batch]


# -- the plugin -------------------------------------------------------------


def test_lists_the_sqlite_provider() -> None:
    [info] = sqlite_storage.telemetry_list_providers()
    assert (info.kind, info.name) == ("storage", "sqlite")
    assert info.description


def test_make_storage_through_the_plugin_host(
    store: LocalStore, backoff: FakeBackoff, clock: FakeClock, tmp_db_path: Path
) -> None:
    config = TelemetryConfig(
        app="testapp", db_path=tmp_db_path, max_queue_size=123, lease_seconds=42.0
    )
    host = PluginHost(load_entrypoints=False, disabled=())
    storage = host.make_storage(config, store, backoff, clock)
    assert isinstance(storage, SQLiteQueue)
    assert isinstance(storage, Storage)
    assert storage.lease == 42.0
    assert storage.max_queue_size == 123
    other = config.evolve(storage="elsewhere")
    assert (
        sqlite_storage.telemetry_make_storage(
            name="elsewhere", config=other, store=store, backoff=backoff, clock=clock
        )
        is None
    )


def test_bad_parameters_are_refused(store: LocalStore, backoff: FakeBackoff) -> None:
    with pytest.raises(ConfigError, match="lease") as info:
        SQLiteQueue(store, backoff, lease=0)
    assert info.value.setting == "lease_seconds"
    with pytest.raises(ConfigError, match="max_queue_size") as info:
        SQLiteQueue(store, backoff, max_queue_size=0)
    assert info.value.setting == "max_queue_size"


# -- recording ----------------------------------------------------------------


def test_record_stores_columns_and_exact_payload(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent, clock: FakeClock
) -> None:
    event = make_event(
        "command_executed",
        {"command": "run", "ok": True, "n": 3, "x": 1.5, "none": None},
        duration_ms=12.5,
        success=False,
        session_id="s1",
        app_version="1.2.3",
    )
    queue.record(event, enqueue=True)
    row = (
        store.connection()
        .execute(
            "SELECT id, type, timestamp, session_id, duration_ms, success, app, app_version,"
            " install_id, schema, properties, payload, created_at FROM telemetry_events"
        )
        .fetchone()
    )
    assert row[:10] == (
        event.id,
        "command_executed",
        event.timestamp,
        "s1",
        12.5,
        0,
        "testapp",
        "1.2.3",
        event.install_id,
        1,
    )
    assert msgspec.json.decode(row[10]) == event.properties
    assert row[11] == msgspec.json.encode(event)
    assert row[12] == clock.now
    assert queue.stats().pending == 1
    [claimed] = queue.dequeue(10)
    assert claimed.event == event
    assert claimed.retry_count == 0
    assert claimed.enqueued_at == clock.now


def test_record_without_enqueue_stores_locally_only(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    queue.record(make_event("local_only"), enqueue=False)
    assert queue.event_counts() == {"local_only": 1}
    assert queue.stats().pending == 0
    assert queue.dequeue(10) == []


def test_recording_the_same_id_twice_changes_nothing(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    event = make_event()
    queue.record(event, enqueue=True)
    queue.mark_submitted(ids(queue.dequeue(10)))
    queue.record(event, enqueue=True)
    assert queue.event_counts() == {"command_executed": 1}
    assert queue.stats().pending == 0


def test_enqueue_stored_events_in_the_given_order(
    queue: SQLiteQueue, make_event: MakeEvent
) -> None:
    events = [make_event("later", {"i": i}) for i in range(4)]
    for e in events:
        queue.record(e, enqueue=False)
    order = [events[2].id, events[0].id, "00000000-0000-7000-8000-000000000000", events[3].id]
    assert queue.enqueue(order) == 3
    assert queue.enqueue([events[0].id]) == 0  # already queued
    assert queue.enqueue([]) == 0
    assert ids(queue.dequeue(10)) == [events[2].id, events[0].id, events[3].id]


# -- dequeue, leases ---------------------------------------------------------


def test_dequeue_is_fifo(queue: SQLiteQueue, make_event: MakeEvent) -> None:
    events = record_many(queue, make_event, 25)
    got: list[str] = []
    for _ in range(10):
        batch = queue.dequeue(7)
        if not batch:
            break
        got += ids(batch)
        queue.mark_submitted(ids(batch))
    assert got == [e.id for e in events]
    assert queue.dequeue(0) == []


def test_leases_are_exclusive_between_two_queues_on_one_file(
    tmp_db_path: Path, store: LocalStore, clock: FakeClock, make_event: MakeEvent
) -> None:
    q1 = SQLiteQueue(store, FakeBackoff(clock), clock=clock, lease=60)
    other_store = LocalStore(tmp_db_path, clock=clock)
    q2 = SQLiteQueue(other_store, FakeBackoff(clock), clock=clock, lease=60)
    try:
        events = record_many(q1, make_event, 10)
        a, b = q1.dequeue(6), q2.dequeue(6)
        assert ids(a) == [e.id for e in events[:6]]
        assert ids(b) == [e.id for e in events[6:]]
        assert q2.dequeue(6) == []
        # q2 cannot act on q1's claim.
        q2.mark_submitted(ids(a))
        q2.mark_failed(ids(a), "not mine")
        q2.mark_dead(ids(a), "not mine")
        q2.release(ids(a))
        stats = q1.stats()
        assert (stats.pending, stats.leased, stats.due, stats.dead) == (10, 10, 0, 0)
        q1.mark_submitted(ids(a))
        assert q1.stats().pending == 4
    finally:
        other_store.close()


def test_leases_are_exclusive_across_threads(
    queue: SQLiteQueue, make_event: MakeEvent, tmp_db_path: Path, clock: FakeClock
) -> None:
    events = record_many(queue, make_event, 300)
    delivered: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4, timeout=30)
    errors: list[BaseException] = []

    def sender(slot: int) -> None:
        try:
            own_store = LocalStore(tmp_db_path, clock=clock) if slot % 2 else queue.store
            q = SQLiteQueue(own_store, FakeBackoff(clock), clock=clock) if slot % 2 else queue
            barrier.wait()
            for _ in range(200):
                batch = q.dequeue(9)
                if not batch:
                    break
                delivered[slot] += ids(batch)
                q.mark_submitted(ids(batch))
            if own_store is not queue.store:
                own_store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    everything = [i for d in delivered for i in d]
    assert len(everything) == len(set(everything)) == 300
    assert set(everything) == {e.id for e in events}
    assert queue.stats().pending == 0


_DRAIN_SCRIPT = """
import sys, time
from telemetry_core.local_store import LocalStore
from telemetry_core_plugins.sqlite_storage import SQLiteQueue
from tests.property import strategies

class Backoff:
    def next_retry_delay(self, retry_count, retry_after=None): return 1.0
    def should_retry(self, retry_count): return True
    def next_retry_timestamp(self, retry_count, retry_after=None): return time.time() + 1

sys.stdin.readline()
store = LocalStore(sys.argv[1])
queue = SQLiteQueue(store, Backoff(), lease=300)
for _ in range(1000):
    batch = queue.dequeue(5)
    if not batch:
        break
    for q in batch:
        print(q.event_id, flush=True)
    queue.mark_submitted([q.event_id for q in batch])
store.close()
"""


def test_leases_are_exclusive_across_processes(tmp_db_path: Path, make_event: MakeEvent) -> None:
    store = LocalStore(tmp_db_path)
    queue = SQLiteQueue(store, FakeBackoff(FakeClock()), lease=300)
    events = record_many(queue, make_event, 400)
    store.close()
    outputs = run_released_together(
        [[sys.executable, "-c", _DRAIN_SCRIPT, str(tmp_db_path)]] * 2, 120
    )
    sent = [line for out in outputs for line in out.split()]
    assert len(sent) == len(set(sent)) == 400
    assert set(sent) == {e.id for e in events}


def test_an_expired_lease_makes_entries_due_again(
    tmp_db_path: Path, store: LocalStore, clock: FakeClock, make_event: MakeEvent
) -> None:
    crashed = SQLiteQueue(store, FakeBackoff(clock), clock=clock, lease=30)
    events = record_many(crashed, make_event, 3)
    assert ids(crashed.dequeue(10)) == [e.id for e in events]
    rescuer = SQLiteQueue(store, FakeBackoff(clock), clock=clock, lease=30)
    clock.advance(29.9)
    assert rescuer.dequeue(10) == []
    assert rescuer.stats().leased == 3
    clock.advance(0.2)
    assert rescuer.stats().leased == 0
    assert rescuer.stats().due == 3
    again = rescuer.dequeue(10)
    assert ids(again) == [e.id for e in events]
    assert [q.retry_count for q in again] == [0, 0, 0]  # a crash is not a failed attempt
    # The crashed sender's late acknowledgement does not touch the new claim...
    crashed.mark_failed(ids(again), "late")
    assert rescuer.stats().leased == 3
    # ...and the rescuer's does.
    rescuer.mark_submitted(ids(again))
    assert rescuer.stats().pending == 0


def test_late_acknowledgement_of_an_unclaimed_expired_lease_still_counts(
    queue: SQLiteQueue, clock: FakeClock, make_event: MakeEvent
) -> None:
    record_many(queue, make_event, 2)
    batch = queue.dequeue(10)
    clock.advance(3600)
    queue.mark_submitted(ids(batch))
    assert queue.stats().pending == 0


def test_a_stale_claim_never_touches_a_reused_row_id(
    store: LocalStore, clock: FakeClock, make_event: MakeEvent
) -> None:
    # Row ids are reused once the newest entry is deleted; a claim that another
    # sender finished must not act on the new entry behind the same row id.
    q1 = SQLiteQueue(store, FakeBackoff(clock), clock=clock, lease=30)
    q2 = SQLiteQueue(store, FakeBackoff(clock), clock=clock, lease=30)
    [x] = record_many(q1, make_event, 1)
    assert ids(q1.dequeue(1)) == [x.id]
    clock.advance(31)
    assert ids(q2.dequeue(1)) == [x.id]
    q2.mark_submitted([x.id])
    y = make_event("reused")
    q1.record(y, enqueue=True)
    assert store.connection().execute("SELECT id FROM telemetry_queue").fetchall() == [(1,)]
    assert ids(q1.dequeue(1)) == [y.id]
    for act in (q1.mark_submitted, q1.release, lambda i: q1.mark_failed(i, "late")):
        act([x.id])
        stats = q1.stats()
        assert (stats.pending, stats.leased) == (1, 1)
    q1.mark_submitted([y.id])
    assert q1.stats().pending == 0


def test_delivered_and_trimmed_events_stay_recorded_locally(
    store: LocalStore, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    # A queued event lives in its entry; delivering (or trimming) the entry
    # moves the event to the stored events, with the same columns and payload.
    queue = SQLiteQueue(store, backoff, clock=clock, max_queue_size=3)
    events = record_many(queue, make_event, 4, duration_ms=1.5, success=False)
    conn = store.connection()
    view = "SELECT * FROM telemetry_events ORDER BY id"
    before = conn.execute(view).fetchall()
    assert queue.stats().dropped == {"queue_full": 1}
    queue.mark_submitted(ids(queue.dequeue(2)))
    assert queue.stats().pending == 1
    assert conn.execute(view).fetchall() == before
    stored = conn.execute("SELECT id FROM telemetry_stored_events ORDER BY id").fetchall()
    assert stored == [(e.id,) for e in events[:3]]
    assert queue.event_counts() == {"test_event": 4}
    # Recording a delivered event again changes nothing.
    queue.record(events[0], enqueue=True)
    assert queue.stats().pending == 1
    assert conn.execute(view).fetchall() == before


def test_an_entry_whose_event_is_gone_is_removed_by_dequeue(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    events = record_many(queue, make_event, 3)
    # A damaged file: the entry lost the event it carries.
    store.connection().execute(
        "UPDATE telemetry_queue SET payload = NULL WHERE event_id = ?", (events[1].id,)
    )
    assert ids(queue.dequeue(10)) == [events[0].id, events[2].id]
    assert queue.stats().pending == 2
    queue.mark_submitted([events[0].id, events[2].id])
    assert queue.stats().pending == 0


def test_size_stays_exact_through_deletes_anywhere(
    queue: SQLiteQueue, clock: FakeClock, make_event: MakeEvent
) -> None:
    # queue.holes follows deletes at the front, the middle and the end.
    events = record_many(queue, make_event, 10)
    batch = queue.dequeue(10)
    queue.mark_submitted([events[i].id for i in (0, 4, 9)])
    assert queue.stats().pending == 7
    queue.mark_submitted([events[i].id for i in (7, 8)])
    assert queue.stats().pending == 5
    more = record_many(queue, make_event, 2)
    assert queue.stats().pending == 7
    queue.release(ids(batch))
    clock.advance(1)
    queue.mark_submitted(ids(queue.dequeue(10)))
    assert queue.stats().pending == 0
    assert queue.store.counters()["queue.holes"] == 0
    assert len(more) == 2


# -- failures, dead letters --------------------------------------------------


def test_mark_failed_schedules_from_the_backoff(
    queue: SQLiteQueue, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    events = record_many(queue, make_event, 3)
    batch = queue.dequeue(2)
    queue.mark_failed(ids(batch), "HTTP 503")
    assert backoff.calls == [(0, None)]
    stats = queue.stats()
    assert (stats.pending, stats.due, stats.leased) == (3, 1, 0)
    assert ids(queue.dequeue(10)) == [events[2].id]
    queue.mark_submitted([events[2].id])
    clock.advance(9.9)
    assert queue.dequeue(10) == []
    clock.advance(0.1)
    retried = queue.dequeue(10)
    assert ids(retried) == [e.id for e in events[:2]]
    assert [(q.retry_count, q.last_error) for q in retried] == [(1, "HTTP 503")] * 2
    queue.mark_failed(ids(retried), "throttled", retry_after=120.0)
    assert backoff.calls[-1] == (1, 120.0)
    clock.advance(119)
    assert queue.dequeue(10) == []
    clock.advance(1)
    assert [q.retry_count for q in queue.dequeue(10)] == [2, 2]


def test_failures_never_dead_letter_entries_they_park_after_max_retries(
    queue: SQLiteQueue, clock: FakeClock, make_event: MakeEvent
) -> None:
    [event] = record_many(queue, make_event, 1)
    for attempt in range(12):  # far past max_retries=2
        [claimed] = queue.dequeue(10)
        assert claimed.retry_count == attempt
        queue.mark_failed([event.id], f"failure {attempt}")
        stats = queue.stats()
        assert (stats.pending, stats.dead) == (1, 0)
        assert stats.parked == (1 if attempt + 1 >= 2 else 0)
        assert stats.next_attempt_at == clock() + 10
        assert queue.dequeue(10) == []  # not due before its retry time
        clock.advance(10)
    [last] = queue.dequeue(10)
    queue.mark_submitted([last.event_id])
    stats = queue.stats()
    assert (stats.pending, stats.parked, stats.dead, stats.next_attempt_at) == (0, 0, 0, None)


def test_retry_after_sets_the_wait_without_growing_the_backoff_step(
    queue: SQLiteQueue, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    [event] = record_many(queue, make_event, 1)
    for _ in range(3):
        queue.dequeue(10)
        queue.mark_failed([event.id], "503", retry_after=1.0)
        clock.advance(1)
    queue.dequeue(10)
    queue.mark_failed([event.id], "500")
    clock.advance(10)
    queue.dequeue(10)
    queue.mark_failed([event.id], "500")
    # The step passed to the backoff grew only with the two backoff-timed failures.
    assert [c[0] for c in backoff.calls] == [0, 0, 0, 0, 1]
    assert queue.dequeue(10) == []  # still waiting for the computed delay
    assert queue.stats().parked == 1  # five consecutive failures, max_retries=2


def test_dead_letters_revive_when_the_delivery_context_changes(
    queue: SQLiteQueue, make_event: MakeEvent
) -> None:
    events = record_many(queue, make_event, 3)
    queue.mark_dead(ids(queue.dequeue(2)), "HTTP 401", "context-a")
    queue.mark_dead(ids(queue.dequeue(1)), "HTTP 401", "context-b")
    assert queue.stats().dead == 3
    assert queue.revive_dead(except_context="context-a") == 1  # the one that died under b
    assert ids(queue.dequeue(10)) == [events[2].id]
    assert queue.stats().dead == 2
    assert queue.revive_dead(except_context="context-a") == 0
    assert queue.revive_dead(except_context="context-c") == 2
    again = queue.dequeue(10)
    assert (ids(again), [q.retry_count for q in again]) == ([e.id for e in events[:2]], [0, 0])
    assert queue.revive_dead() == 0


def test_manual_revive_revives_every_dead_letter(queue: SQLiteQueue, make_event: MakeEvent) -> None:
    [event] = record_many(queue, make_event, 1)
    queue.mark_dead(ids(queue.dequeue(1)), "HTTP 400", "context-a")
    assert queue.revive_dead() == 1
    [revived] = queue.dequeue(10)
    assert (revived.event_id, revived.retry_count, revived.last_error) == (
        event.id,
        0,
        "HTTP 400",
    )


def test_a_backwards_clock_step_does_not_hold_scheduled_entries(
    queue: SQLiteQueue, clock: FakeClock, make_event: MakeEvent
) -> None:
    [event] = record_many(queue, make_event, 1)
    queue.dequeue(1)
    queue.mark_failed([event.id], "500")  # due 10 s later
    clock.advance(-86_400)  # NTP steps the clock one day back
    [claimed] = queue.dequeue(1)
    assert claimed.event_id == event.id


def test_a_backwards_clock_step_does_not_hold_a_dead_senders_lease(
    store: LocalStore, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    crashed = SQLiteQueue(store, backoff, clock=clock, lease=30)
    [event] = record_many(crashed, make_event, 1)
    assert crashed.dequeue(1)  # the sender dies holding the lease
    clock.advance(-86_400)
    other = SQLiteQueue(store, backoff, clock=clock, lease=30)
    assert ids(other.dequeue(1)) == [event.id]


def test_trimming_never_drops_entries_on_the_wire(
    store: LocalStore, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    queue = SQLiteQueue(store, backoff, clock=clock, max_queue_size=5)
    first = record_many(queue, make_event, 5)
    in_flight = queue.dequeue(2)  # the two oldest are being sent
    newest = record_many(queue, make_event, 3)  # three over the bound
    # The three oldest entries that no lease holds went, not the two on the wire.
    queue.mark_submitted(ids(in_flight))
    stats = queue.stats()
    assert (stats.dropped, stats.pending) == ({"queue_full": 3}, 3)
    assert ids(queue.dequeue(10)) == [e.id for e in newest]
    assert ids(in_flight) == [e.id for e in first[:2]]


def test_mark_dead_is_immediate(queue: SQLiteQueue, make_event: MakeEvent) -> None:
    events = record_many(queue, make_event, 3)
    batch = queue.dequeue(2)
    queue.mark_dead(ids(batch), "HTTP 401 " + "x" * 5000)
    stats = queue.stats()
    assert (stats.pending, stats.dead, stats.leased) == (1, 2, 0)
    assert ids(queue.dequeue(10)) == [events[2].id]
    row = queue.store.connection().execute("SELECT max(length(last_error)) FROM telemetry_queue")
    assert row.fetchone()[0] == sqlite_storage.MAX_ERROR_LENGTH


def test_release_gives_entries_back_without_counting_an_attempt(
    queue: SQLiteQueue, make_event: MakeEvent
) -> None:
    events = record_many(queue, make_event, 3)
    batch = queue.dequeue(3)
    queue.release(ids(batch[1:]))
    again = queue.dequeue(10)
    assert ids(again) == [e.id for e in events[1:]]
    assert [q.retry_count for q in again] == [0, 0]


def test_calls_with_no_ids_do_nothing(queue: SQLiteQueue) -> None:
    queue.mark_submitted([])
    queue.mark_failed([], "x")
    queue.mark_dead([], "x")
    queue.release([])
    assert queue.stats().pending == 0


# -- bounds, retention --------------------------------------------------------


def test_a_full_queue_drops_the_oldest_and_counts_them(
    store: LocalStore, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    queue = SQLiteQueue(store, backoff, clock=clock, max_queue_size=5)
    events = record_many(queue, make_event, 8)
    stats = queue.stats()
    assert stats.pending == 5
    assert stats.dropped == {"queue_full": 3}
    assert ids(queue.dequeue(10)) == [e.id for e in events[3:]]
    assert queue.event_counts() == {"test_event": 8}  # events stay recorded locally
    late = [make_event("late") for _ in range(3)]
    for e in late:
        queue.record(e, enqueue=False)
    assert queue.enqueue([e.id for e in late]) == 3
    assert queue.stats().dropped == {"queue_full": 6}
    assert queue.stats().pending == 5


def test_cleanup_removes_old_events_and_entries(
    queue: SQLiteQueue, store: LocalStore, clock: FakeClock, make_event: MakeEvent
) -> None:
    old = record_many(queue, make_event, 4)
    queue.record(make_event("old_local"), enqueue=False)
    clock.advance(100)
    new = record_many(queue, make_event, 2)
    cutoff = clock.now - 50
    assert queue.cleanup(cutoff) == 5
    assert queue.cleanup(cutoff) == 0
    stats = queue.stats()
    assert stats.pending == 2
    assert stats.dropped == {"expired": 4}
    assert ids(queue.dequeue(10)) == [e.id for e in new]
    assert queue.event_counts() == {"test_event": 2}
    assert old[0].id not in ids(queue.dequeue(10))


# -- stats --------------------------------------------------------------------


def test_stats_snapshot(queue: SQLiteQueue, clock: FakeClock, make_event: MakeEvent) -> None:
    empty = queue.stats()
    assert (empty.pending, empty.due, empty.leased, empty.dead) == (0, 0, 0, 0)
    assert empty.oldest_enqueued_at is None
    first = clock.now
    events = record_many(queue, make_event, 10)
    clock.advance(5)
    queue.dequeue(3)  # leased
    failed = queue.dequeue(2)
    queue.mark_failed(ids(failed), "x")  # waiting for a retry
    dead = queue.dequeue(1)
    queue.mark_dead(ids(dead), "x")
    stats = queue.stats()
    assert (stats.pending, stats.due, stats.leased, stats.dead) == (9, 4, 3, 1)
    assert stats.oldest_enqueued_at == first
    assert len(events) == 10


def _plan(conn: object, sql: str) -> str:
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, (1,) * sql.count("?")).fetchall()  # type: ignore[attr-defined]
    return "\n".join(str(r[3]) for r in rows)


@pytest.mark.parametrize(
    "name",
    [
        "_CLAIM",
        "_NOT_DUE",
        "_DEAD",
        "_REVIVE",
        "_SUBMITTED",
        "_RESCHEDULE",
        "_KILL",
        "_RELEASE",
        "_MAX_ID",
        "_HOLES",
    ],
)
def test_hot_queries_use_indexes(store: LocalStore, name: str) -> None:
    sql = getattr(sqlite_storage, name)
    plan = _plan(store.connection(), sql)
    assert plan
    for line in plan.splitlines():
        if line.startswith("SCAN") and "json_each" not in line:
            assert "USING INDEX" in line or "USING COVERING INDEX" in line, plan
    assert "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("name", ["_SELECT_DUE", "_OLDEST"])
def test_fifo_walks_follow_the_queue_order(store: LocalStore, name: str) -> None:
    # The queue's own rowid order is FIFO: the walk stops after LIMIT rows and
    # never sorts; the event is found by its primary key.
    plan = _plan(store.connection(), getattr(sqlite_storage, name))
    lines = plan.splitlines()
    assert lines[0].startswith("SCAN q") or lines[0].startswith("SCAN telemetry_queue"), plan
    assert "TEMP B-TREE" not in plan, plan
    for line in lines[1:]:
        assert "PRIMARY KEY" in line, plan


def test_recording_writes_no_secondary_index_or_counter(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    # The hot path touches only the two tables: a fresh entry is in no partial
    # index and the queue size needs no counter update.
    conn = store.connection()
    before = store.counters()
    record_many(queue, make_event, 5)
    assert store.counters() == before
    indexed = conn.execute(
        "SELECT count(*) FROM telemetry_queue INDEXED BY idx_telemetry_queue_next_retry_at"
        " WHERE dead = 0 AND next_retry_at > 0"
    ).fetchone()[0]
    assert indexed == 0
    assert queue.stats().pending == 5


def test_stats_are_right_at_100k_entries(
    queue: SQLiteQueue, store: LocalStore, clock: FakeClock
) -> None:
    n = 100_000
    now = clock.now
    conn = store.connection()
    with store.transaction():
        conn.executemany(
            "INSERT INTO telemetry_queue(event_id, type, created_at, payload)"
            " VALUES (?, 'bulk', ?, x'7b7d')",
            [(f"e{i:06d}", now - n + i) for i in range(n)],
        )
        # 100 dead, 50 waiting for a retry, 20 leased (10 of them expired).
        conn.execute("UPDATE telemetry_queue SET dead = 1 WHERE id <= 100")
        conn.execute(
            "UPDATE telemetry_queue SET next_retry_at = ? WHERE id > 500 AND id <= 550", (now + 10,)
        )
        conn.execute(
            "UPDATE telemetry_queue SET lease_owner = 'x', lease_expires_at = ?,"
            " next_retry_at = ? WHERE id > 1000 AND id <= 1010",
            (now + 5, now + 5),
        )
        conn.execute(
            "UPDATE telemetry_queue SET lease_owner = 'y', lease_expires_at = ?,"
            " next_retry_at = ? WHERE id > 2000 AND id <= 2010",
            (now - 5, now - 5),
        )
    stats = queue.stats()
    assert stats.pending == n - 100
    assert stats.dead == 100
    assert stats.leased == 10
    assert stats.due == n - 100 - 50 - 10
    assert stats.oldest_enqueued_at == now - n + 100
    assert store.counters()["queue.holes"] == 0
    # Dequeue skips the dead at the front and takes the oldest due.
    batch = conn.execute(sqlite_storage._SELECT_DUE, (now, now + queue.horizon, 3)).fetchall()
    assert [r[0] for r in batch] == [101, 102, 103]


# -- processes ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_record(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    record_many(queue, make_event, 1)
    parent_owner = queue.owner
    child_event = make_event("from_child")

    def child() -> bytes:
        queue.record(child_event, enqueue=True)
        return queue.owner.encode()

    child_owner = in_forked_child(child).decode()
    assert child_owner and child_owner != parent_owner
    assert queue.event_counts() == {"from_child": 1, "test_event": 1}
    assert queue.stats().pending == 2


def test_a_corrupt_payload_raises_storage_error(
    queue: SQLiteQueue, store: LocalStore, make_event: MakeEvent
) -> None:
    record_many(queue, make_event, 1)
    store.connection().execute("UPDATE telemetry_queue SET payload = x'7b'")
    with pytest.raises(StorageError, match="decode"):
        queue.dequeue(1)


def test_close_closes_the_store_connections(queue: SQLiteQueue, make_event: MakeEvent) -> None:
    record_many(queue, make_event, 1)
    conn = queue.store.connection()
    queue.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    assert queue.stats().pending == 1  # reopens on use


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(strategies.events(), min_size=1, max_size=5))
def test_any_valid_event_round_trips_exactly(
    tmp_path_factory: pytest.TempPathFactory, batch: list[Event]
) -> None:
    s = LocalStore(tmp_path_factory.mktemp("rt") / "telemetry.db")
    try:
        q = SQLiteQueue(s, FakeBackoff(FakeClock()))
        for e in batch:
            assert validate_event(e) is None
            q.record(e, enqueue=True)
        got = q.dequeue(len(batch))
        assert [g.event for g in got] == batch
        assert [msgspec.json.encode(g.event) for g in got] == [
            msgspec.json.encode(e) for e in batch
        ]
    finally:
        s.close()


def test_record_many_leaves_the_file_as_record_one_by_one_does(
    tmp_path: Path, backoff: FakeBackoff, clock: FakeClock, make_event: MakeEvent
) -> None:
    events = [make_event("mixed", {"i": i}) for i in range(10)]
    # Queued and local-only events, one delivered earlier, one given twice,
    # and more queued events (five new) than the queue's bound (3) keeps.
    batch = [(e, i % 3 != 0) for i, e in enumerate(events)] + [(events[1], True)]

    def fill(name: str, many: bool) -> tuple[list[Any], QueueStats, dict[str, int]]:
        store = LocalStore(tmp_path / name, clock=clock)
        open_tables(store)
        queue = SQLiteQueue(store, backoff, clock=clock, max_queue_size=3)
        try:
            queue.record(events[4], enqueue=True)
            queue.mark_submitted(ids(queue.dequeue(1)))
            if many:
                queue.record_many(batch)
            else:
                for event, enqueue in batch:
                    queue.record(event, enqueue=enqueue)
            rows = store.connection().execute(
                "SELECT id, type, payload, created_at FROM telemetry_events ORDER BY id"
            )
            return rows.fetchall(), queue.stats(), queue.event_counts()
        finally:
            store.close()

    one_by_one, many = fill("one.db", many=False), fill("many.db", many=True)
    assert many == one_by_one
    rows, stats, counts = many
    assert counts == {"mixed": 10} and len(rows) == 10
    assert stats.pending == 3 and stats.dropped == {"queue_full": 2}
