"""The ``sqlite`` storage plugin's tables: made and migrated when the queue opens,
with a schema version of their own; files made by the previous layout (the
core's local migrations 1 to 6 made these tables) open with everything intact."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from telemetry_core._submission_history import submission_history
from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import StorageError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.local_store import SCHEMA_VERSION as CORE_VERSION
from telemetry_core.local_store import LocalStore
from telemetry_core.models import QueuedEvent, QueueStats
from telemetry_core.plugin_host import PluginHost
from telemetry_core.schema import Event
from telemetry_core.service import TelemetryService
from telemetry_core_plugins._sqlite_schema import PART, SCHEMA_VERSION, adopt
from telemetry_core_plugins.sqlite_storage import SQLiteQueue
from tests.legacy_layout import advance, make_legacy_file
from tests.processes import run_released_together

MakeEvent = Callable[..., Event]


class Backoff:
    """Retry ten seconds later, never park."""

    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        return 10.0

    def should_retry(self, retry_count: int) -> bool:
        return True

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        return time.time() + 10.0


def open_queue(store: LocalStore) -> SQLiteQueue:
    return SQLiteQueue(store, Backoff(), lease=60.0)


@pytest.fixture
def store(tmp_db_path: Path) -> Iterator[LocalStore]:
    s = LocalStore(tmp_db_path)
    yield s
    s.close()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        return [(str(t), str(n), str(s)) for t, n, s in rows]
    finally:
        conn.close()


def _part_version(conn: sqlite3.Connection) -> int | None:
    row = conn.execute(
        "SELECT version FROM telemetry_part_versions WHERE part = ?", (PART,)
    ).fetchone()
    return None if row is None else int(row[0])


def _assert_refused(path: Path, match: str, *, read_only: bool) -> None:
    """Opening the queue on ``path`` raises a StorageError that says ``match``."""
    s = LocalStore(path, read_only=read_only)
    try:
        with pytest.raises(StorageError, match=match):
            open_queue(s)
    finally:
        s.close()


# -- a new file ---------------------------------------------------------------


def test_the_core_alone_makes_none_of_the_queue_tables(store: LocalStore) -> None:
    names = {r[0] for r in store.connection().execute("SELECT name FROM sqlite_master")}
    assert not names & {"telemetry_queue", "telemetry_stored_events", "telemetry_events"}
    queue = open_queue(store)
    names = {r[0] for r in store.connection().execute("SELECT name FROM sqlite_master")}
    assert {"telemetry_queue", "telemetry_stored_events", "telemetry_events"} <= names
    assert _part_version(store.connection()) == SCHEMA_VERSION
    assert store.counters() == {"queue.holes": 0}
    assert queue.stats().pending == 0


def test_queue_table_keeps_the_seed_columns_and_indexes(store: LocalStore) -> None:
    open_queue(store)
    conn = store.connection()
    cols = {r[1] for r in conn.execute("PRAGMA table_info(telemetry_queue)")}
    assert {"id", "event_id", "created_at", "retry_count", "next_retry_at", "last_error"} <= cols
    assert {"lease_owner", "lease_expires_at", "dead"} <= cols
    # An entry carries its event (step 4, local migration 6 before).
    assert {"type", "recorded_at", "payload"} <= cols
    # Only the rare states are indexed (partial indexes), besides the unique
    # event id: a fresh entry is appended to the table and to that index only.
    # No foreign key: a cascade would scan the queue per deleted event.
    indexes = {r[1]: (r[2], r[4]) for r in conn.execute("PRAGMA index_list(telemetry_queue)")}
    assert indexes == {
        "idx_telemetry_queue_next_retry_at": (0, 1),
        "idx_telemetry_queue_dead": (0, 1),
        "idx_telemetry_queue_event_id": (1, 0),
    }
    assert conn.execute("PRAGMA foreign_key_list(telemetry_queue)").fetchall() == []
    # Events not queued are keyed by their time-ordered id, without a rowid.
    assert conn.execute("PRAGMA index_list(telemetry_stored_events)").fetchall()[0][3] == "pk"
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'telemetry_stored_events'")
    assert "WITHOUT ROWID" in sql.fetchone()[0]
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'telemetry_events'")
    assert kind.fetchone()[0] == "view"


def test_event_counts_by_type(store: LocalStore) -> None:
    queue = open_queue(store)
    assert queue.event_counts() == {}
    with store.transaction() as conn:
        for i, kind in enumerate(["a", "b", "a", "a"]):
            conn.execute(
                "INSERT INTO telemetry_stored_events(id, type, created_at, payload)"
                " VALUES (?, ?, 0, x'00')",
                (f"id{i}", kind),
            )
        # Queued events count too (the entry carries the event).
        conn.execute(
            "INSERT INTO telemetry_queue(event_id, type, created_at, payload)"
            " VALUES ('q1', 'b', 0, x'00')"
        )
    assert queue.event_counts() == {"a": 3, "b": 2}


def test_opening_up_to_date_tables_takes_no_write_lock(tmp_db_path: Path) -> None:
    s = LocalStore(tmp_db_path)
    open_queue(s)
    s.close()
    writer = sqlite3.connect(tmp_db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process is writing
        again = LocalStore(tmp_db_path, busy_timeout_ms=10)
        try:
            assert open_queue(again).stats().pending == 0
        finally:
            again.close()
    finally:
        writer.rollback()
        writer.close()


_OPEN_SCRIPT = """
import sys, time
from telemetry_core.local_store import LocalStore
from telemetry_core_plugins.sqlite_storage import SQLiteQueue
from tests.conftest import build_event

class Backoff:
    def next_retry_delay(self, retry_count, retry_after=None): return 10.0
    def should_retry(self, retry_count): return True
    def next_retry_timestamp(self, retry_count, retry_after=None): return time.time() + 10

sys.stdin.readline()
store = LocalStore(sys.argv[1])
queue = SQLiteQueue(store, Backoff())
queue.record(build_event("from_" + sys.argv[2]), enqueue=True)
print(sorted(store.counters().items()))
store.close()
"""


def test_two_processes_open_the_tables_of_a_new_file_at_once(tmp_db_path: Path) -> None:
    outputs = run_released_together(
        [[sys.executable, "-c", _OPEN_SCRIPT, str(tmp_db_path), str(i)] for i in range(2)], 60
    )
    assert {out.strip() for out in outputs} == {"[('queue.holes', 0)]"}
    s = LocalStore(tmp_db_path)
    try:
        assert open_queue(s).event_counts() == {"from_0": 1, "from_1": 1}
        assert _part_version(s.connection()) == SCHEMA_VERSION
    finally:
        s.close()


# -- versions -----------------------------------------------------------------


def test_newer_tables_are_refused(store: LocalStore) -> None:
    open_queue(store)
    with store.transaction() as conn:
        conn.execute(
            "UPDATE telemetry_part_versions SET version = ? WHERE part = ?",
            (SCHEMA_VERSION + 1, PART),
        )
    with pytest.raises(StorageError, match="newer"):
        open_queue(store)


def test_a_file_with_the_pre_release_queue_layout_is_refused(tmp_db_path: Path) -> None:
    s = LocalStore(tmp_db_path)
    open_queue(s)
    s.close()
    conn = sqlite3.connect(tmp_db_path)
    conn.execute("DELETE FROM telemetry_counters WHERE name = 'queue.holes'")
    conn.commit()
    conn.close()
    _assert_refused(tmp_db_path, "pre-release", read_only=False)
    _assert_refused(tmp_db_path, "pre-release", read_only=True)


def test_a_read_only_view_of_a_file_without_the_tables_is_empty(tmp_db_path: Path) -> None:
    # A file only the core wrote (``telemetry config set`` before the app ran).
    s = LocalStore(tmp_db_path)
    s.set_config("remote-endpoint", "https://x")
    s.close()
    before = _schema(tmp_db_path)
    view = LocalStore(tmp_db_path, read_only=True)
    try:
        queue = open_queue(view)
        assert queue.stats().pending == 0
        assert queue.event_counts() == {}
    finally:
        view.close()
    assert _schema(tmp_db_path) == before


def test_a_read_only_view_refuses_tables_it_would_have_to_migrate(tmp_db_path: Path) -> None:
    s = LocalStore(tmp_db_path)
    open_queue(s)
    with s.transaction() as conn:
        conn.execute("UPDATE telemetry_part_versions SET version = 3 WHERE part = ?", (PART,))
    s.close()
    _assert_refused(tmp_db_path, "left unchanged", read_only=True)
    again = LocalStore(tmp_db_path)
    try:
        assert _part_version(again.connection()) == 3
    finally:
        again.close()


# -- files made by the previous layout ----------------------------------------


def _insert_legacy_event(conn: sqlite3.Connection, event: Event, created_at: float) -> None:
    conn.execute(
        "INSERT INTO telemetry_events(id, type, timestamp, session_id, duration_ms, success, app,"
        " app_version, install_id, schema, properties, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.type,
            event.timestamp,
            event.session_id,
            event.duration_ms,
            event.success,
            event.app,
            event.app_version,
            event.install_id,
            event.schema,
            msgspec.json.encode(event.properties).decode(),
            msgspec.json.encode(event),
            created_at,
        ),
    )


def _make_previous_layout_file(path: Path, version: int, events: list[Event], now: float) -> None:
    """A file the previous layout made at ``version``, with what each of its
    steps could hold: events (1), stored config (2), two queue entries (one
    failed twice, one dead) and a drop counter (3), a submission (4), the
    delivery-policy columns (5); migration 6 then moved the events as it did."""
    conn = make_legacy_file(path, min(version, 1))
    for i, event in enumerate(events):
        _insert_legacy_event(conn, event, now - 100 + i)
    if version >= 2:
        advance(conn, 2)
        conn.execute("INSERT INTO telemetry_config VALUES ('remote-endpoint', 'https://x', 1)")
    if version >= 3:
        advance(conn, 3)
        conn.executemany(
            "INSERT INTO telemetry_queue(event_id, created_at, retry_count, last_error, dead)"
            " VALUES (?, ?, ?, ?, ?)",
            [(events[1].id, now - 50, 2, "boom", 0), (events[2].id, now - 49, 1, "no", 1)],
        )
        conn.execute("INSERT INTO telemetry_counters VALUES ('dropped.queue_full', 3)")
    if version >= 4:
        advance(conn, 4)
        conn.execute(
            "INSERT INTO telemetry_submissions(started_at, latency_ms, batch_size, status, error)"
            " VALUES (?, 12.5, 1, 503, 'overloaded')",
            (now - 10,),
        )
    if version >= 5:
        advance(conn, 5)
        conn.execute("UPDATE telemetry_queue SET backoff_step = 2 WHERE retry_count = 2")
        conn.execute("UPDATE telemetry_queue SET dead_context = 'ctx' WHERE dead = 1")
    advance(conn, version)
    conn.close()


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_a_file_made_by_the_previous_layout_opens_with_events_and_queue_intact(
    tmp_path: Path, make_event: MakeEvent, version: int
) -> None:
    now = time.time()
    events = [make_event(kind, {"n": i}) for i, kind in enumerate(["kept", "live", "dead"])]
    path = tmp_path / "old" / "telemetry.db"
    _make_previous_layout_file(path, version, events, now)
    fresh = tmp_path / "new" / "telemetry.db"
    s = LocalStore(fresh)
    open_queue(s)
    s.close()

    store = LocalStore(path)
    try:
        queue = open_queue(store)
        conn = store.connection()
        assert store.schema_version() == CORE_VERSION
        assert _part_version(conn) == SCHEMA_VERSION
        assert queue.event_counts() == {"dead": 1, "kept": 1, "live": 1}
        seen = conn.execute("SELECT id, type, app FROM telemetry_events ORDER BY id").fetchall()
        assert seen == sorted((e.id, e.type, e.app) for e in events)
        if version >= 2:
            assert store.get_config("remote-endpoint") == "https://x"
        if version >= 3:
            stats = queue.stats()
            assert (stats.pending, stats.dead, stats.dropped) == (1, 1, {"queue_full": 3})
            [entry] = queue.dequeue(10)
            assert entry.event == events[1]
            assert (entry.retry_count, entry.last_error) == (2, "boom")
            assert queue.revive_dead() == 1
        else:
            assert queue.stats().pending == 0
            assert store.counters() == {"queue.holes": 0}
        if version >= 4:
            log = submission_history(store, queue.stats())
            assert (log.last_error, log.latency_p50_ms) == ("overloaded", 12.5)
        if version >= 5:
            steps = conn.execute(
                "SELECT backoff_step, dead_context FROM telemetry_queue ORDER BY id"
            ).fetchall()
            assert steps == [(2, None), (0, None)]  # the dead one was revived above
    finally:
        store.close()
    # The same tables, indexes and view as a file made new.
    assert _schema(path) == _schema(fresh)


def test_a_version_6_file_opens_in_a_service_with_its_queue(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    path = tmp_path / "data" / "telemetry.db"
    events = [make_event(kind) for kind in ["kept", "live", "dead"]]
    _make_previous_layout_file(path, 6, events, time.time())
    config = TelemetryConfig(
        app="demo", db_path=path, enabled=True, remote_enabled=False, do_not_track=False
    )
    with TelemetryService(config, host=PluginHost(load_entrypoints=False, disabled=())) as svc:
        assert svc.event_counts() == {"dead": 1, "kept": 1, "live": 1}
        stats = svc.queue_stats()
        assert (stats.pending, stats.dead) == (1, 1)
        assert svc.counters()["dropped.queue_full"] == 3


def test_a_version_5_file_moves_queued_events_into_their_entries(tmp_db_path: Path) -> None:
    # A file written before local migration 6: every event in telemetry_events,
    # the queue entries pointing at them (one entry whose event is gone).
    conn = make_legacy_file(tmp_db_path, 5)
    for i, kind in enumerate(["sent", "queued", "queued", "local"]):
        conn.execute(
            "INSERT INTO telemetry_events(id, type, timestamp, app, install_id, schema,"
            " properties, payload, created_at) VALUES (?, ?, 0, 'x', 'i', 1, '{}', ?, ?)",
            (f"e{i}", kind, f'{{"n":{i}}}'.encode(), 100.0 + i),
        )
    conn.executemany(
        "INSERT INTO telemetry_queue(event_id, created_at, retry_count, dead) VALUES (?, ?, ?, ?)",
        [("e1", 200.0, 3, 0), ("gone", 201.0, 0, 0), ("e2", 202.0, 0, 1)],
    )
    conn.close()
    store = LocalStore(tmp_db_path)
    try:
        queue = open_queue(store)
        db = store.connection()
        rows = db.execute(
            "SELECT id, event_id, type, retry_count, dead, recorded_at, payload"
            " FROM telemetry_queue ORDER BY id"
        ).fetchall()
        assert rows == [
            (1, "e1", "queued", 3, 0, 101.0, b'{"n":1}'),
            (3, "e2", "queued", 0, 1, 102.0, b'{"n":2}'),
        ]
        stored = db.execute("SELECT id FROM telemetry_stored_events ORDER BY id").fetchall()
        assert stored == [("e0",), ("e3",)]
        # Size = max(id) - holes stays exact: row 2 is free.
        assert store.counters()["queue.holes"] == 1
        assert queue.event_counts() == {"local": 1, "queued": 2, "sent": 1}
        seen = db.execute("SELECT id, created_at FROM telemetry_events ORDER BY id").fetchall()
        assert seen == [("e0", 100.0), ("e1", 101.0), ("e2", 102.0), ("e3", 103.0)]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("version", "expected"), [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 4)]
)
def test_adopt_tells_the_version_from_the_previous_layouts_tables(
    tmp_db_path: Path, version: int, expected: int
) -> None:
    conn = make_legacy_file(tmp_db_path, version)
    try:
        assert adopt(conn) == expected
    finally:
        conn.close()


# -- another storage plugin ---------------------------------------------------


class MemoryStorage:
    """A storage that keeps its events in memory and ignores the store handle."""

    def __init__(self) -> None:
        self.recorded: list[tuple[Event, bool]] = []

    def record(self, event: Event, *, enqueue: bool) -> None:
        self.recorded.append((event, enqueue))

    def enqueue(self, event_ids: Sequence[str]) -> int:
        return 0

    def dequeue(self, batch_size: int) -> list[QueuedEvent]:
        return []

    def mark_submitted(self, event_ids: Sequence[str]) -> None:
        pass

    def mark_failed(
        self, event_ids: Sequence[str], error: str, retry_after: float | None = None
    ) -> None:
        pass

    def mark_dead(self, event_ids: Sequence[str], error: str, context: str | None = None) -> None:
        pass

    def release(self, event_ids: Sequence[str]) -> None:
        pass

    def stats(self) -> QueueStats:
        return QueueStats(pending=sum(1 for _, queued in self.recorded if queued))

    def cleanup(self, older_than: float) -> int:
        return 0

    def revive_dead(self, except_context: str | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


class MemoryStoragePlugin:
    def __init__(self) -> None:
        self.storage = MemoryStorage()

    @hookimpl
    def telemetry_make_storage(self, name: str) -> MemoryStorage | None:
        return self.storage if name == "memory" else None


def test_a_storage_plugin_that_ignores_the_handle_works(tmp_db_path: Path) -> None:
    plugin = MemoryStoragePlugin()
    config = TelemetryConfig(
        app="demo",
        db_path=tmp_db_path,
        enabled=True,
        remote_enabled=False,
        do_not_track=False,
        storage="memory",
    )
    host = PluginHost(load_entrypoints=False, disabled=(), plugins=[plugin])
    with TelemetryService(config, host=host) as svc:
        assert svc.track("command_executed", {"n": 1}) is not None
        assert svc.queue_stats().pending == 0  # a read: the journal is stored first
        assert [event.type for event, _ in plugin.storage.recorded] == ["command_executed"]
        # Without the optional EventCounts the service shows no events.
        assert svc.event_counts() == {}
    # The file holds the core's tables only.
    names = {name for _, name, _ in _schema(tmp_db_path)}
    assert not names & {"telemetry_queue", "telemetry_stored_events", "telemetry_events"}
    assert "telemetry_config" in names


def test_a_version_6_file_reads_with_consent_off_and_stays_unchanged(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    # A user who disabled telemetry runs `status`: the file the previous release
    # made is read as it is (read-only: nothing would ever migrate it).
    path = tmp_path / "data" / "telemetry.db"
    events = [make_event(kind) for kind in ["kept", "live", "dead"]]
    _make_previous_layout_file(path, 6, events, time.time())
    before = _schema(path)
    config = TelemetryConfig(
        app="demo", db_path=path, enabled=False, remote_enabled=False, do_not_track=False
    )
    with TelemetryService(config, host=PluginHost(load_entrypoints=False, disabled=())) as svc:
        assert svc.event_counts() == {"dead": 1, "kept": 1, "live": 1}
        stats = svc.queue_stats()
        assert (stats.pending, stats.dead) == (1, 1)
        assert svc.status()["degraded"] is None
    assert _schema(path) == before


def test_a_file_this_code_made_has_the_previous_releases_layout(tmp_path: Path) -> None:
    # The previous release (core schema 6, the same tables made by its own
    # migrations) keeps opening a file this code made or opened: same version,
    # and every table, index and view it knows, with the same definition.
    legacy = tmp_path / "legacy.db"
    conn = make_legacy_file(legacy, 6)
    conn.close()
    ours = tmp_path / "ours.db"
    s = LocalStore(ours)
    open_queue(s)
    s.close()
    made = sqlite3.connect(ours)
    try:
        assert made.execute("PRAGMA user_version").fetchone()[0] == 6 == CORE_VERSION
    finally:
        made.close()
    extra = {("table", "telemetry_part_versions")}
    assert set(_schema(legacy)) <= set(_schema(ours))
    assert {(t, n) for t, n, _ in _schema(ours)} - {(t, n) for t, n, _ in _schema(legacy)} == extra
