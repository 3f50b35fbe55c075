"""Tests of the client's retention cleanup (telemetry_core._retention) on real SQLite files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry_core._retention import CLEANUP_PAGE, LAST_CLEANUP_KEY, Cleaner, clean
from telemetry_core.local_store import LocalStore
from telemetry_core.protocols import PagedCleanup
from telemetry_core.schema import Event, new_event_id
from telemetry_core_plugins.sqlite_storage import SQLiteQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class NoBackoff:
    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        return 1.0

    def should_retry(self, retry_count: int) -> bool:
        return True

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        return 0.0


class OneShotStorage:
    """A storage without paged cleanup: it gets one ``cleanup`` call."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def cleanup(self, older_than: float) -> int:
        self.calls.append(older_than)
        return 7


class PagedStorage:
    """Paged cleanup over ``total`` events, recording each step."""

    def __init__(self, total: int, stop_after: threading.Event | None = None) -> None:
        self.total = total
        self.steps: list[tuple[str, int]] = []
        self.stop_after = stop_after

    def cleanup(self, older_than: float) -> int:  # pragma: no cover - never chosen
        raise AssertionError("the paged protocol must be preferred")

    def cleanup_page(self, older_than: float, after: str, page: int) -> tuple[str | None, int]:
        self.steps.append((after, page))
        done = len(self.steps) * page
        if self.stop_after is not None:
            self.stop_after.set()
        if done >= self.total:
            return None, self.total - (done - page)
        return f"id{done}", page


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    s = LocalStore(tmp_path / "telemetry.db", clock=Clock())
    yield s
    s.close()


def test_a_storage_without_pages_gets_one_cleanup_call() -> None:
    storage = OneShotStorage()
    assert not isinstance(storage, PagedCleanup)
    assert clean(storage, 123.0, None) == 7  # type: ignore[arg-type]
    assert storage.calls == [123.0]


def test_a_paged_storage_is_cleaned_step_by_step_until_done() -> None:
    storage = PagedStorage(total=2 * CLEANUP_PAGE + 10)
    assert isinstance(storage, PagedCleanup)
    assert clean(storage, 1.0, None) == 2 * CLEANUP_PAGE + 10  # type: ignore[arg-type]
    assert [after for after, _ in storage.steps] == [
        "",
        f"id{CLEANUP_PAGE}",
        f"id{2 * CLEANUP_PAGE}",
    ]


def test_a_stopped_cleanup_returns_none_between_steps() -> None:
    stop = threading.Event()
    storage = PagedStorage(total=10 * CLEANUP_PAGE, stop_after=stop)
    assert clean(storage, 1.0, stop) is None  # type: ignore[arg-type]
    assert len(storage.steps) == 1


def _record(queue: SQLiteQueue, clock: Clock, n: int) -> None:
    for i in range(n):
        queue.record(
            Event(
                id=new_event_id(),
                type="t",
                timestamp=1,
                install_id="i",
                app="a",
                properties={"i": i},
            ),
            enqueue=True,
        )
        clock.now += 1


def test_the_cleaner_deletes_old_events_counts_them_and_remembers_when(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = LocalStore(tmp_path / "telemetry.db", clock=clock)
    queue = SQLiteQueue(store, NoBackoff(), clock=clock)
    _record(queue, clock, 6)  # created at now .. now + 5
    warnings: list[Any] = []
    cleaner = Cleaner(
        store=store,
        storage=queue,
        now=clock.now,
        cutoff=1_000_003.0,  # the first three are older
        busy_timeout_ms=50,
        warn=lambda *args: warnings.append(args),
    )
    cleaner.start()
    assert cleaner.join(30)
    assert warnings == []
    assert queue.event_counts() == {"t": 3}
    assert queue.stats().dropped == {"expired": 3}
    assert store.get_config(LAST_CLEANUP_KEY) == repr(clock.now)
    store.close()


def test_a_failing_cleanup_warns_and_is_not_marked_done(store: LocalStore) -> None:
    class Broken:
        def cleanup(self, older_than: float) -> int:
            raise OSError("disk gone")

    warnings: list[Any] = []
    cleaner = Cleaner(
        store=store,
        storage=Broken(),  # type: ignore[arg-type]
        now=5.0,
        cutoff=1.0,
        busy_timeout_ms=50,
        warn=lambda *args: warnings.append(args),
    )
    cleaner.start()
    assert cleaner.join(30)
    assert [w[0] for w in warnings] == ["cleanup"]
    assert store.get_config(LAST_CLEANUP_KEY) is None


def test_stop_ends_a_running_cleanup_without_marking_it_done(store: LocalStore) -> None:
    entered = threading.Event()
    release = threading.Event()

    class Slow:
        def cleanup_page(self, older_than: float, after: str, page: int) -> tuple[str | None, int]:
            entered.set()
            release.wait(30)  # the first step is held; later ones take 10 ms each
            threading.Event().wait(0.01)
            return "next", 0

        def cleanup(self, older_than: float) -> int:  # pragma: no cover
            return 0

    cleaner = Cleaner(
        store=store,
        storage=Slow(),
        now=5.0,
        cutoff=1.0,
        busy_timeout_ms=50,
        warn=print,  # type: ignore[arg-type]
    )
    cleaner.start()
    assert entered.wait(30)
    release.set()
    assert cleaner.stop(30)
    assert store.get_config(LAST_CLEANUP_KEY) is None
