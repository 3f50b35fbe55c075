"""Tests of the submission worker, with in-memory fakes for every provider."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from telemetry_core import TelemetryConfig
from telemetry_core.errors import PluginError, TransportError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import QueuedEvent, QueueStats, SubmissionResult
from telemetry_core.plugin_host import PluginHost
from telemetry_core.schema import Event, EventError, ServerInfo, new_event_id
from telemetry_core.worker import SubmissionWorker


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Answers from a script: SubmissionResult, TransportError or a callable."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.batches: list[list[str]] = []
        self.pings: list[bool] = []
        self.ping_answer = True
        self.closed = 0
        self.on_submit: Any = None
        self.infos = 0
        self.dedup_window_days: int | None = None

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        self.batches.append([e.id for e in events])
        if self.on_submit is not None:
            self.on_submit(events)
        answer = self.script.pop(0) if self.script else None
        if answer is None:
            return SubmissionResult(accepted=len(events))
        if callable(answer):
            answer = answer(events)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, SubmissionResult)
        return answer

    def ping(self) -> bool:
        self.pings.append(self.ping_answer)
        return self.ping_answer

    def server_info(self) -> ServerInfo:
        self.infos += 1
        return ServerInfo(name="fake", version="0", dedup_window_days=self.dedup_window_days)

    def close(self) -> None:
        self.closed += 1


class FakeStorage:
    """An in-memory queue with the Storage protocol's semantics (no leases expiry)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entries: dict[str, dict[str, Any]] = {}
        self.submitted: list[str] = []
        self.dead: dict[str, str] = {}
        self.dead_entries: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.released: list[str] = []

    def add(self, n: int) -> list[str]:
        ids = []
        for i in range(n):
            event = Event(
                id=new_event_id(),
                type="test",
                timestamp=int(self.clock() * 1000),
                install_id="i" * 32,
                app="demo",
                properties={"n": i},
            )
            self.entries[event.id] = {"event": event, "retry": 0, "due": 0.0, "leased": False}
            ids.append(event.id)
        return ids

    def record(self, event: Event, *, enqueue: bool) -> None:
        raise NotImplementedError

    def enqueue(self, event_ids: Sequence[str]) -> int:
        raise NotImplementedError

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        out = []
        for entry in self.entries.values():
            if len(out) == batch_size:
                break
            if not entry["leased"] and entry["due"] <= self.clock():
                entry["leased"] = True
                out.append(
                    QueuedEvent(event=entry["event"], retry_count=entry["retry"], enqueued_at=0.0)
                )
        return out

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        for i in event_ids:
            del self.entries[i]
            self.submitted.append(i)

    def mark_failed(
        self, event_ids: Sequence[str], error: str, retry_after: float | None = None
    ) -> None:
        for i in event_ids:
            entry = self.entries[i]
            entry["retry"] += 1
            entry["leased"] = False
            entry["due"] = self.clock() + (retry_after if retry_after is not None else 1.0)

    def mark_dead(self, event_ids: Sequence[str], error: str, context: str | None = None) -> None:
        for i in event_ids:
            self.dead_entries[i] = (self.entries.pop(i), context)
            self.dead[i] = error

    def release(self, event_ids: Sequence[str]) -> None:
        for i in event_ids:
            self.entries[i]["leased"] = False
            self.released.append(i)

    def stats(self) -> QueueStats:
        due = sum(1 for e in self.entries.values() if e["due"] <= self.clock())
        return QueueStats(pending=len(self.entries), due=due, dead=len(self.dead))

    def cleanup(self, older_than: float) -> int:
        return 0

    def revive_dead(self, except_context: str | None = None) -> int:
        revived = [
            i
            for i, (_, ctx) in self.dead_entries.items()
            if except_context is None or ctx != except_context
        ]
        for i in revived:
            entry, _ = self.dead_entries.pop(i)
            self.dead.pop(i)
            entry.update(retry=0, due=0.0, leased=False)
            self.entries[i] = entry
        return len(revived)

    def close(self) -> None:
        pass


class FakeBackoff:
    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        return retry_after if retry_after is not None else 2.0**retry_count

    def should_retry(self, retry_count: int) -> bool:
        return retry_count < 5

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        return self.next_retry_delay(retry_count, retry_after)


class FakeLimiter:
    def __init__(self, tokens: float = float("inf")) -> None:
        self.tokens = tokens

    def can_submit(self, count: int) -> bool:
        return count <= self.tokens

    def consume(self, count: int) -> bool:
        if count <= self.tokens:
            self.tokens -= count
            return True
        return False

    def wait_time(self, count: int = 1) -> float:
        return 0.0 if count <= self.tokens else 42.0


class FakeLog:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.config: dict[str, str] = {}

    def log_submission(self, **fields: Any) -> None:
        self.rows.append(fields)

    def increment_counter(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def get_config(self, key: str) -> str | None:
        return self.config.get(key)

    def set_config(self, key: str, value: str) -> None:
        self.config[key] = value


class FakeTransportPlugin:
    """Provides the transport named ``fake``; records the batch hooks."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.made = 0
        self.submitted: list[SubmissionResult] = []
        self.failed: list[TransportError] = []

    @hookimpl
    def telemetry_make_transport(self, name: str, config: TelemetryConfig) -> FakeTransport | None:
        if name != "fake":
            return None
        self.made += 1
        return self.transport

    @hookimpl
    def telemetry_batch_submitted(self, events: Sequence[Event], result: SubmissionResult) -> None:
        self.submitted.append(result)

    @hookimpl
    def telemetry_batch_failed(self, events: Sequence[Event], error: TransportError) -> None:
        self.failed.append(error)


class Rig:
    """A worker wired to fakes."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.clock = FakeClock()
        self.mono = FakeClock(100.0)
        self.transport = FakeTransport()
        self.plugin = FakeTransportPlugin(self.transport)
        self.host = PluginHost(
            load_entrypoints=False, plugins=[self.plugin], disabled=("https", "sqlite")
        )
        self.storage = FakeStorage(self.clock)
        self.log = FakeLog()
        self.limiter = FakeLimiter(config.pop("tokens", float("inf")))
        options: dict[str, Any] = {
            "app": "demo",
            "db_path": tmp_path / "t.db",
            "enabled": True,
            "remote_enabled": True,
            "endpoint": "https://127.0.0.1:1/v1/submit",
            "transport": "fake",
            "submission_batch_size": 10,
            "do_not_track": False,
        }
        options.update(config)
        self.config = TelemetryConfig(**options)
        self.worker = self.new_worker()

    def new_worker(self, config: TelemetryConfig | None = None) -> SubmissionWorker:
        """Another worker on the same fakes (a new process, or new settings)."""
        return SubmissionWorker(
            config or self.config,
            host=self.host,
            storage=self.storage,
            log=self.log,
            backoff=FakeBackoff(),
            limiter=self.limiter,
            clock=self.clock,
            monotonic=self.mono,
        )

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks."""
        self.clock.now += seconds
        self.mono.now += seconds


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_success_marks_submitted_and_logs(rig: Rig) -> None:
    ids = rig.storage.add(3)
    cycle = rig.worker.run_once()
    assert cycle.reason == "sent" and cycle.handled == 3 and not cycle.more
    assert rig.storage.submitted == ids
    assert rig.transport.batches == [ids]
    assert len(rig.plugin.submitted) == 1
    (row,) = rig.log.rows
    assert row["batch_size"] == 3 and row["accepted"] == 3 and row["status"] == 200
    assert row["error"] is None and not row["retry"] and not row["network_error"]


def test_transport_is_built_lazily_once(rig: Rig) -> None:
    assert rig.worker.run_once().reason == "empty"
    assert rig.plugin.made == 0 and rig.worker.transport is None
    rig.storage.add(1)
    rig.worker.run_once()
    rig.storage.add(1)
    rig.worker.run_once()
    assert rig.plugin.made == 1


def test_full_batch_says_more(rig: Rig) -> None:
    rig.storage.add(25)
    cycle = rig.worker.run_once()
    assert cycle.handled == 10 and cycle.more
    assert rig.worker.drain(total=15) == 15
    assert not rig.storage.entries
    assert [len(b) for b in rig.transport.batches] == [10, 10, 5]


def test_partial_success_counts_rejected_as_terminal(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ids = rig.storage.add(4)
    rig.transport.script.append(
        SubmissionResult(
            accepted=2,
            rejected=1,
            duplicates=1,
            errors=(EventError(index=1, code="pii", message="x"),),
        )
    )
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        rig.worker.run_once()
        rig.storage.add(2)
        rig.transport.script.append(SubmissionResult(accepted=1, rejected=1))
        rig.worker.run_once()
    assert set(ids) <= set(rig.storage.submitted)
    assert rig.log.counters["server_rejected"] == 2
    assert rig.log.counters["server_rejected:pii"] == 1
    assert rig.log.rows[0]["rejected"] == 1 and rig.log.rows[0]["duplicates"] == 1
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1


def test_retryable_error_schedules_and_pauses(rig: Rig) -> None:
    ids = rig.storage.add(3)
    rig.transport.script.append(TransportError("503", retryable=True, status=503))
    cycle = rig.worker.run_once()
    assert cycle.reason == "retry" and cycle.handled == 0
    assert all(rig.storage.entries[i]["retry"] == 1 for i in ids)
    # No Retry-After: the pause comes from the backoff (2**0 = 1 s).
    assert rig.worker.pause_until == rig.clock.now + 1.0
    assert rig.worker.run_once().reason == "paused"
    assert len(rig.plugin.failed) == 1
    row = rig.log.rows[0]
    assert row["status"] == 503 and row["error"] == "503" and not row["network_error"]
    rig.advance(1.0)
    cycle = rig.worker.run_once()
    assert cycle.reason == "sent" and rig.storage.submitted == ids
    assert rig.log.rows[-1]["retry"] is True
    assert rig.worker.pause_until == 0.0


def test_retry_after_pause_is_honoured_even_by_drain(rig: Rig) -> None:
    rig.storage.add(2)
    rig.transport.script.append(TransportError("429", retryable=True, status=429, retry_after=30.0))
    rig.worker.run_once()
    assert rig.worker.pause_until == rig.clock.now + 30.0
    rig.advance(29.0)  # entries due again (fake storage: 30 s), pause not over
    assert rig.worker.drain(total=2) == 0
    assert len(rig.transport.batches) == 1
    rig.advance(1.0)
    assert rig.worker.drain(total=2) == 2


def test_retry_after_is_clamped(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_retry_after=60.0)
    rig.storage.add(1)
    rig.transport.script.append(TransportError("x", retryable=True, status=503, retry_after=1e9))
    rig.worker.run_once()
    assert rig.worker.pause_until == rig.clock.now + 60.0


def test_backoff_pause_does_not_stop_drain(rig: Rig) -> None:
    rig.storage.add(1)
    rig.transport.script.append(TransportError("x", retryable=True, status=502))
    rig.worker.run_once()
    rig.storage.add(2)  # new entries, due now
    assert rig.worker.run_once().reason == "paused"
    assert rig.worker.drain(total=2) == 2


def test_network_error_goes_offline_until_ping(rig: Rig) -> None:
    rig.storage.add(2)
    rig.transport.script.append(TransportError("refused", retryable=True))
    rig.worker.run_once()
    assert rig.worker.offline and rig.log.rows[0]["network_error"] is True
    rig.advance(10)
    rig.transport.ping_answer = False
    assert rig.worker.run_once().reason == "offline"
    assert len(rig.transport.batches) == 1
    rig.transport.ping_answer = True
    assert rig.worker.run_once().reason == "sent"
    assert rig.transport.pings == [False, True] and not rig.worker.offline


def test_a_ping_that_raises_counts_as_offline_and_logs_its_type(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.storage.add(1)
    rig.transport.script.append(TransportError("refused", retryable=True))
    rig.worker.run_once()
    rig.advance(10)

    def raising() -> bool:
        raise OSError("secret-api-key in a message")

    rig.transport.ping = raising  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger="telemetry_core"):
        assert rig.worker.run_once().reason == "offline"
    messages = [record.getMessage() for record in caplog.records]
    assert "telemetry-core: transport ping failed: OSError" in messages
    assert all("secret-api-key" not in m for m in messages)


def test_failures_grow_the_pause(rig: Rig) -> None:
    rig.storage.add(1)
    pauses = []
    for _ in range(3):
        rig.transport.script.append(TransportError("x", retryable=True, status=503))
        rig.worker.run_once()
        pauses.append(rig.worker.pause_until - rig.clock.now)
        rig.advance(100)
    assert pauses == [1.0, 2.0, 4.0]


def test_too_large_splits_in_halves(rig: Rig) -> None:
    ids = rig.storage.add(8)

    def answer(events: Sequence[Event]) -> Any:
        if len(events) > 2:
            return TransportError("413", retryable=False, status=413, too_large=True)
        return SubmissionResult(accepted=len(events))

    rig.transport.script.extend([answer] * 20)
    cycle = rig.worker.run_once()
    assert cycle.handled == 8
    assert sorted(rig.storage.submitted) == sorted(ids)
    assert [len(b) for b in rig.transport.batches] == [8, 4, 2, 2, 4, 2, 2]
    assert not rig.storage.dead


def test_single_event_too_large_is_dead(rig: Rig) -> None:
    (event_id,) = rig.storage.add(1)
    rig.transport.script.append(TransportError("413", retryable=False, status=413, too_large=True))
    rig.worker.run_once()
    assert rig.storage.dead == {event_id: "event too large"}
    assert rig.log.counters["dead"] == 1


def test_split_stops_on_retryable_and_releases_the_rest(rig: Rig) -> None:
    ids = rig.storage.add(4)
    rig.transport.script.extend(
        [
            TransportError("413", retryable=False, status=413, too_large=True),
            TransportError("503", retryable=True, status=503),
        ]
    )
    cycle = rig.worker.run_once()
    assert cycle.reason == "retry"
    assert rig.storage.released == ids[2:]
    assert [rig.storage.entries[i]["retry"] for i in ids] == [1, 1, 0, 0]


def test_terminal_error_dead_letters(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    ids = rig.storage.add(3)
    rig.transport.script.append(TransportError("401 unauthorized", retryable=False, status=401))
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        cycle = rig.worker.run_once()
    assert cycle.reason == "sent" and cycle.handled == 3
    assert set(rig.storage.dead) == set(ids)
    assert rig.worker.pause_until == 0.0
    assert "API key" in caplog.text
    assert len(rig.plugin.failed) == 1


def test_transient_failures_never_dead_letter_and_park_after_max_retries(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ids = rig.storage.add(2)
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        for _ in range(12):  # far past the backoff's 5 retries
            rig.transport.script.append(TransportError("500", retryable=True, status=500))
            assert rig.worker.run_once().reason == "retry"
            rig.advance(10_000)
    assert not rig.storage.dead and set(rig.storage.entries) == set(ids)
    assert rig.worker.consecutive_failures == 12
    parked = [r for r in caplog.records if "parked" in r.getMessage()]
    assert len(parked) == 1  # warned once, when it happened
    assert rig.worker.run_once().reason == "sent"
    assert set(rig.storage.submitted) == set(ids) and rig.worker.consecutive_failures == 0


def test_retry_after_sets_the_pause_without_growing_the_exponent(rig: Rig) -> None:
    rig.storage.add(1)
    pauses = []
    for retry_after in (None, 7.0, 7.0, None, None):
        rig.transport.script.append(
            TransportError("x", retryable=True, status=503, retry_after=retry_after)
        )
        rig.worker.run_once()
        pauses.append(rig.worker.pause_until - rig.clock.now)
        rig.advance(100)
    # Backoff-timed pauses go 1, 2, 4 s: the two Retry-After failures did not count.
    assert pauses == [1.0, 7.0, 7.0, 2.0, 4.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 415, 422])
def test_permanent_refusals_dead_letter(tmp_path: Path, status: int) -> None:
    rig = Rig(tmp_path)
    ids = rig.storage.add(1)
    rig.transport.script.append(TransportError(str(status), retryable=False, status=status))
    rig.worker.run_once()
    assert set(rig.storage.dead) == set(ids)


def test_dead_letters_revive_when_a_worker_starts_with_other_settings(tmp_path: Path) -> None:
    first = Rig(tmp_path, api_key="old-key-123")
    ids = first.storage.add(2)
    first.transport.script.append(TransportError("401", retryable=False, status=401))
    first.worker.run_once()
    assert set(first.storage.dead) == set(ids)
    # The same settings: a new worker leaves them dead.
    same = first.new_worker()
    assert same.run_once().reason == "empty" and set(first.storage.dead) == set(ids)
    # The app ships a new key: the next worker sends them again, with no manual step.
    fixed = first.new_worker(first.config.evolve(api_key="new-key-456"))
    assert fixed.run_once().reason == "sent"
    assert set(first.storage.submitted) == set(ids) and not first.storage.dead


def test_a_wall_clock_step_neither_stretches_nor_skips_the_pause(rig: Rig) -> None:
    rig.storage.add(1)
    rig.transport.script.append(TransportError("x", retryable=True, status=503))
    rig.worker.run_once()  # pause of 1 s
    rig.clock.now += 86_400  # the wall clock jumps a day ahead: the pause still holds
    assert rig.worker.run_once().reason == "paused"
    rig.clock.now -= 2 * 86_400  # and a day back: the pause ends after its 1 s all the same
    rig.mono.now += 1.0
    assert rig.worker.run_once().reason != "paused"


def test_a_retention_longer_than_the_collectors_dedup_window_is_flagged_once_a_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, retention_days=30)
    rig.transport.dedup_window_days = 7
    rig.storage.add(1)
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        rig.worker.run_once()
        rig.storage.add(1)
        rig.worker.run_once()
    assert rig.transport.infos == 1  # asked once per worker
    assert rig.log.config["server-dedup-window-days"] == "7"
    flagged = [r for r in caplog.records if "counted twice" in r.getMessage()]
    assert len(flagged) == 1 and "30 days" in flagged[0].getMessage()
    # A new worker the same day uses what was learned, without asking again.
    again = rig.new_worker()
    rig.storage.add(1)
    again.run_once()
    assert rig.transport.infos == 1
    rig.advance(2 * 86_400)
    rig.storage.add(1)
    rig.new_worker().run_once()
    assert rig.transport.infos == 2  # learned again after a day


def test_a_retention_within_the_dedup_window_is_not_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, retention_days=30)
    rig.transport.dedup_window_days = 90
    rig.storage.add(1)
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        rig.worker.run_once()
    assert rig.transport.infos == 1
    assert not [r for r in caplog.records if "counted twice" in r.getMessage()]


def test_plugin_bug_is_a_retryable_failure(rig: Rig) -> None:
    ids = rig.storage.add(1)
    rig.transport.script.append(RuntimeError("boom"))
    assert rig.worker.run_once().reason == "retry"
    assert rig.storage.entries[ids[0]]["retry"] == 1
    assert "boom" in rig.log.rows[0]["error"]


def test_missing_transport_releases_the_batch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, transport="nope")
    ids = rig.storage.add(2)
    with pytest.raises(PluginError):
        rig.worker.run_once()
    assert rig.storage.released == ids
    assert all(rig.storage.entries[i]["retry"] == 0 for i in ids)


def test_limiter_limits_the_batch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tokens=3)
    ids = rig.storage.add(5)
    cycle = rig.worker.run_once()
    assert cycle.handled == 3
    assert rig.storage.released == ids[3:]
    cycle = rig.worker.run_once()
    assert cycle.reason == "rate_limited" and cycle.wait == 42.0
    assert rig.worker.drain(total=2) == 0


def test_batch_is_capped_by_burst(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_rate_limit=4)
    rig.storage.add(6)
    rig.worker.run_once()
    assert [len(b) for b in rig.transport.batches] == [4]


def test_drain_reports_progress(rig: Rig) -> None:
    rig.storage.add(23)
    seen: list[tuple[int, int]] = []
    assert rig.worker.drain(lambda done, total: seen.append((done, total)), total=23) == 23
    assert seen == [(10, 23), (20, 23), (23, 23)]


def test_drain_is_bounded(rig: Rig) -> None:
    rig.storage.add(50)
    assert rig.worker.drain(total=0, max_batches=2) == 20


def test_thread_sends_and_stops_bounded(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=3600.0)
    sent = threading.Event()
    rig.transport.on_submit = lambda events: sent.set()
    rig.storage.add(3)
    rig.worker.start()
    try:
        assert sent.wait(10)
        rig.storage.add(2)
        sent.clear()
        rig.worker.wake()  # interrupts the hour-long interval
        assert sent.wait(10)
    finally:
        assert rig.worker.stop(10)
    assert not rig.worker.running
    assert len(rig.storage.submitted) == 5
    rig.worker.close()
    assert rig.transport.closed == 1


def test_stop_does_not_wait_for_a_hung_request(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=3600.0)
    entered = threading.Event()
    release = threading.Event()

    def hang(events: Sequence[Event]) -> None:
        entered.set()
        release.wait(10)

    first = rig.storage.add(1)
    assert rig.worker.run_once().reason == "sent"  # the transport's setup is done
    rig.transport.on_submit = hang
    ids = rig.storage.add(1)
    rig.worker.start()
    assert entered.wait(10)
    assert rig.worker._runner.phase == "network"  # no grace for a thread waiting on the network
    assert rig.worker.stop(0.05) is False  # the request is still on the wire
    release.set()
    assert rig.worker.stop(10) is True
    assert rig.storage.submitted == first + ids


def test_stop_waits_for_the_first_call_of_a_new_transport(tmp_path: Path) -> None:
    # The first call runs the transport's lazy setup (the https transport loads
    # the CA bundle in OpenSSL without the GIL): a daemon thread left there when
    # the process exits crashed it with SIGSEGV. stop() gives it the grace.
    rig = Rig(tmp_path, submission_interval=3600.0)
    entered = threading.Event()
    release = threading.Event()
    phases: list[str | None] = []

    def setup(events: Sequence[Event]) -> None:
        phases.append(rig.worker._runner.phase)
        entered.set()
        release.wait(10)

    rig.transport.on_submit = setup
    ids = rig.storage.add(1)
    rig.worker.start()
    assert entered.wait(10)
    assert rig.worker.stop(0.0, grace=0.0) is False  # signal only: no wait
    # Released once stop() is waiting; it must not return before the call ends.
    releaser = threading.Thread(target=release.set)
    releaser.start()
    try:
        assert rig.worker.stop(0.0, grace=10.0) is True
    finally:
        releaser.join(10)
    assert phases == ["setup"]
    assert rig.storage.submitted == ids
    assert not rig.worker.running


def test_a_new_transport_is_set_up_again_after_close(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=3600.0)
    phases: list[str | None] = []
    rig.transport.on_submit = lambda events: phases.append(rig.worker._runner.phase)
    rig.storage.add(1)
    rig.worker.run_once()
    rig.storage.add(1)
    rig.worker.run_once()
    rig.worker.close()
    rig.storage.add(1)
    rig.worker.run_once()
    assert phases == ["setup", "network", "setup"]


def test_stopping_thread_releases_unsent_split_halves(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=3600.0)
    done = threading.Event()

    def too_large_then_stop(events: Sequence[Event]) -> Any:
        rig.worker.stop(0.0, grace=0.0)  # in the thread: only signals it
        done.set()
        return TransportError("413", retryable=False, status=413, too_large=True)

    rig.transport.script.append(too_large_then_stop)
    ids = rig.storage.add(4)
    rig.worker.start()
    assert done.wait(10)
    assert rig.worker.stop(10)
    assert sorted(rig.storage.released) == sorted(ids)
    assert len(rig.transport.batches) == 1


def test_thread_survives_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(tmp_path, transport="nope", submission_interval=3600.0)
    rig.storage.add(1)
    with caplog.at_level(logging.WARNING, logger="telemetry_core"):
        rig.worker.start()
        for _ in range(200):
            if caplog.records:
                break
            threading.Event().wait(0.01)
        assert rig.worker.running
        assert rig.worker.stop(10)
    assert "PluginError" in caplog.text


def test_a_long_wait_releases_the_transports_idle_connections(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=3600.0)
    released = threading.Event()
    rig.transport.release_idle = released.set  # type: ignore[attr-defined]
    rig.storage.add(1)
    rig.worker.start()
    try:
        assert released.wait(10)  # sent, then about to wait an hour
    finally:
        assert rig.worker.stop(10)
    assert len(rig.storage.submitted) == 1
    # The next call rebuilds the TLS context: a setup phase again.
    assert rig.worker._sender.transport_ready is False


def test_a_short_wait_keeps_the_connections(tmp_path: Path) -> None:
    rig = Rig(tmp_path, submission_interval=5.0)
    released: list[bool] = []
    sent = threading.Event()
    rig.transport.release_idle = lambda: released.append(True)  # type: ignore[attr-defined]
    rig.transport.on_submit = lambda events: sent.set()
    rig.storage.add(1)
    rig.worker.start()
    try:
        assert sent.wait(10)
    finally:
        assert rig.worker.stop(10)
    assert released == []
