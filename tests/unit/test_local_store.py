"""Tests of telemetry_core.local_store: the file, migrations, connections, config, logs."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from telemetry_core._submission_history import submission_history
from telemetry_core.config import read_stored_config
from telemetry_core.errors import StorageError
from telemetry_core.local_store import (
    CACHE_SIZE_KIB,
    MIGRATIONS,
    SCHEMA_VERSION,
    SUBMISSION_LOG_LIMIT,
    LocalStore,
    foreign_reason,
)
from telemetry_core.models import QueueStats
from tests.legacy_layout import make_legacy_file
from tests.processes import in_forked_child, run_released_together


@pytest.fixture
def store(tmp_db_path: Path) -> Iterator[LocalStore]:
    s = LocalStore(tmp_db_path, clock=lambda: 1000.0)
    yield s
    s.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_creates_file_dirs_wal_and_schema(store: LocalStore, tmp_db_path: Path) -> None:
    assert tmp_db_path.is_file()
    assert stat.S_IMODE(tmp_db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_db_path.stat().st_mode) & 0o077 == 0
    conn = store.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    # The core's tables only: the event table and the queue are made by the
    # sqlite storage plugin when it opens (tests/unit/test_sqlite_storage_schema.py),
    # and the table of part versions by the first part that records one.
    assert _tables(tmp_db_path) == {
        "telemetry_config",
        "telemetry_submissions",
        "telemetry_counters",
        "sqlite_sequence",
    }


def test_config_table_has_the_shape_config_reads(store: LocalStore) -> None:
    cols = [
        (r[1], r[2], r[3], r[5])
        for r in store.connection().execute("PRAGMA table_info(telemetry_config)")
    ]
    assert cols == [
        ("key", "TEXT", 0, 1),
        ("value", "TEXT", 1, 0),
        ("updated_at", "INTEGER", 1, 0),
    ]


def test_migrations_are_idempotent(tmp_db_path: Path) -> None:
    for _ in range(3):
        s = LocalStore(tmp_db_path)
        assert s.schema_version() == SCHEMA_VERSION
        s.set_config("k", "v")
        s.close()
    s = LocalStore(tmp_db_path)
    assert s.list_config() == {"k": "v"}
    s.close()


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_migrates_an_older_file_forward(tmp_db_path: Path, version: int) -> None:
    # Files made by the previous layout (whose migrations 1 to 6 also made the
    # queue's tables, now the storage plugin's: see test_sqlite_storage_schema).
    conn = make_legacy_file(tmp_db_path, version)
    if version >= 2:
        conn.execute("INSERT INTO telemetry_config VALUES ('remote-endpoint', 'https://x', 1)")
    if version >= 3:
        conn.execute("INSERT INTO telemetry_counters VALUES ('rejected:pii', 2)")
    conn.close()
    s = LocalStore(tmp_db_path)
    assert s.schema_version() == SCHEMA_VERSION
    if version >= 2:
        assert s.get_config("remote-endpoint") == "https://x"
    assert s.counters() == ({"queue.holes": 0, "rejected:pii": 2} if version >= 3 else {})
    s.log_submission(started_at=1.0, latency_ms=2.0, batch_size=1, status=200)
    assert submission_history(s, QueueStats(pending=0)).submissions == 1
    s.close()
    # A file the previous layout made is ours: never refused as foreign.
    assert foreign_reason(tmp_db_path) is None


def test_a_part_keeps_its_own_schema_version(tmp_db_path: Path) -> None:
    steps = [["CREATE TABLE demo_a (x INTEGER)"], ["CREATE TABLE demo_b (y INTEGER)"]]
    s = LocalStore(tmp_db_path)
    try:
        # Before any part records a version there is no table for them: a
        # read-only store finds nothing recorded and asks ``adopt``.
        reader = LocalStore(tmp_db_path, read_only=True)
        assert reader.migrate_part("demo", steps, lambda conn: 1) == 1
        reader.close()
        assert s.migrate_part("demo", steps[:1]) == 1
        assert s.migrate_part("demo", steps[:1]) == 1  # idempotent
        assert s.migrate_part("demo", steps) == 2
        assert {"demo_a", "demo_b"} <= _tables(tmp_db_path)
        # Another part's version is its own; ``adopt`` starts a part with no record.
        assert s.migrate_part("other", [["SELECT 1"], ["SELECT 2"]], lambda conn: 1) == 2
        rows = s.connection().execute("SELECT part, version FROM telemetry_part_versions")
        assert sorted(rows.fetchall()) == [("demo", 2), ("other", 2)]
        with pytest.raises(StorageError, match="newer"):
            s.migrate_part("demo", steps[:1])
        with pytest.raises(StorageError, match=r"broken tables.*demo_a already exists"):
            s.migrate_part("broken", [["CREATE TABLE demo_a (x INTEGER)"]])
        assert s.migrate_part("broken", [["CREATE TABLE demo_c (x INTEGER)"]]) == 1
    finally:
        s.close()
    view = LocalStore(tmp_db_path, read_only=True)
    try:
        # A read-only store reports the version it finds and never migrates.
        assert view.migrate_part("demo", [*steps, ["CREATE TABLE demo_d (z INTEGER)"]]) == 2
        assert view.migrate_part("unknown", steps) == 0
        assert view.migrate_part("unknown", steps, lambda conn: 2) == 2
    finally:
        view.close()
    assert "demo_d" not in _tables(tmp_db_path)


def test_newer_schema_is_refused(tmp_db_path: Path) -> None:
    LocalStore(tmp_db_path).close()
    conn = sqlite3.connect(tmp_db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        LocalStore(tmp_db_path)


_OPEN_SCRIPT = """
import sys
from telemetry_core.local_store import LocalStore
sys.stdin.readline()
s = LocalStore(sys.argv[1])
s.set_config("writer-" + sys.argv[2], "1")
print(s.schema_version(), s.install_id())
s.close()
"""


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_open_a_new_file_at_once(tmp_db_path: Path, attempt: int) -> None:
    # Both interpreters are up and waiting; they are released together.
    outputs = run_released_together(
        [[sys.executable, "-c", _OPEN_SCRIPT, str(tmp_db_path), str(i)] for i in range(2)], 60
    )
    lines = {out.strip() for out in outputs}
    assert len(lines) == 1  # same version, same install id
    s = LocalStore(tmp_db_path)
    assert s.schema_version() == SCHEMA_VERSION
    assert {"writer-0", "writer-1"} <= set(s.list_config())
    s.close()


def test_not_a_database_raises_storage_error(tmp_db_path: Path) -> None:
    tmp_db_path.parent.mkdir(parents=True)
    tmp_db_path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(StorageError, match=r"telemetry\.db"):
        LocalStore(tmp_db_path)


def test_corrupt_database_raises_storage_error(tmp_db_path: Path) -> None:
    LocalStore(tmp_db_path).close()
    data = bytearray(tmp_db_path.read_bytes())
    data[0:16] = b"garbage garbage!"
    tmp_db_path.write_bytes(bytes(data))
    with pytest.raises(StorageError):
        LocalStore(tmp_db_path)


def _open_in_unwritable_dir(parent: Path) -> bytes:
    locked = parent / "locked"
    try:
        LocalStore(locked / "sub" / "telemetry.db")
    except StorageError as exc:
        return b"StorageError" if "locked" in str(exc) else b"StorageError without the path"
    return b"opened"


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_unwritable_location_raises_storage_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        (tmp_path / "locked").mkdir(mode=0o500)
        try:
            assert _open_in_unwritable_dir(tmp_path) == b"StorageError"
        finally:
            (tmp_path / "locked").chmod(0o700)
        return
    # Root ignores permissions: a forked child drops to nobody first, in a
    # directory it may enter (pytest's tmp dirs are 0700 root-only).
    parent = Path(tempfile.mkdtemp(prefix="tc-perm-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        (parent / "locked").mkdir(mode=0o555)

        def as_nobody() -> bytes:
            os.setgid(65534)
            os.setuid(65534)
            return _open_in_unwritable_dir(parent)

        assert in_forked_child(as_nobody) == b"StorageError"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_file_where_the_directory_should_be_raises_storage_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(StorageError, match="cannot create"):
        LocalStore(tmp_path / "plain-file" / "telemetry.db")


def test_a_directory_in_the_way_raises_storage_error(tmp_db_path: Path) -> None:
    tmp_db_path.mkdir(parents=True)
    with pytest.raises(StorageError):
        LocalStore(tmp_db_path)


def test_config_round_trip(store: LocalStore, tmp_db_path: Path) -> None:
    assert store.get_config("remote-endpoint") is None
    store.set_config("remote-endpoint", "https://a.example/v1/submit")
    store.set_config("submission-batch-size", "50")
    store.set_config("remote-endpoint", "https://b.example/v1/submit")
    assert store.get_config("remote-endpoint") == "https://b.example/v1/submit"
    assert store.list_config() == {
        "remote-endpoint": "https://b.example/v1/submit",
        "submission-batch-size": "50",
    }
    row = store.connection().execute("SELECT updated_at FROM telemetry_config").fetchone()
    assert row[0] == 1_000_000  # clock() * 1000, integer milliseconds
    # config.read_stored_config reads the same table, read-only.
    assert read_stored_config(tmp_db_path)["submission-batch-size"] == "50"
    store.delete_config("submission-batch-size")
    store.delete_config("never-set")
    assert store.list_config() == {"remote-endpoint": "https://b.example/v1/submit"}


def test_install_id_is_random_stable_and_per_database(tmp_path: Path) -> None:
    a = LocalStore(tmp_path / "a.db")
    first = a.install_id()
    assert len(first) == 32
    int(first, 16)
    assert a.install_id() == first
    a.close()
    a = LocalStore(tmp_path / "a.db")
    assert a.install_id() == first
    assert a.get_config("install-id") == first
    a.close()
    b = LocalStore(tmp_path / "b.db")
    assert b.install_id() != first
    b.close()


def test_install_id_race_between_threads(store: LocalStore) -> None:
    seen: list[str] = []
    barrier = threading.Barrier(4, timeout=30)

    def worker() -> None:
        barrier.wait()
        seen.append(store.install_id())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == 4
    assert len(set(seen)) == 1


def test_one_connection_per_thread(store: LocalStore) -> None:
    main = store.connection()
    assert store.connection() is main
    other: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: other.append(store.connection()))
    t.start()
    t.join(timeout=30)
    assert other
    assert other[0] is not main


def test_transaction_commits_and_rolls_back(store: LocalStore) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO telemetry_config VALUES ('a', '1', 0)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO telemetry_config VALUES ('b', '1', 0)")
        raise RuntimeError("boom")
    assert store.list_config() == {"a": "1"}
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute("INSERT INTO telemetry_config VALUES ('a', '2', 0)")  # duplicate key
    assert store.list_config() == {"a": "1"}
    assert not store.connection().in_transaction


def test_nested_transaction_joins_the_outer_one(store: LocalStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.set_config("inner", "x")
        store.increment_counter("c", 2)
        raise RuntimeError("roll everything back")
    assert store.get_config("inner") is None
    assert "c" not in store.counters()


def test_counters(store: LocalStore) -> None:
    store.increment_counter("rejected:pii")
    store.increment_counter("rejected:pii", 4)
    store.increment_counter("zero", 0)
    counts = store.counters()
    assert counts["rejected:pii"] == 5
    assert "zero" not in counts


def test_submission_log_and_stats(store: LocalStore) -> None:
    empty = submission_history(store, QueueStats(pending=0))
    assert empty.submissions == 0
    assert empty.success_rate == 0.0
    assert empty.latency_p50_ms is None
    for i in range(1, 101):
        store.log_submission(
            started_at=float(i),
            latency_ms=float(i),
            batch_size=10,
            accepted=9,
            rejected=0,
            duplicates=1,
            status=200,
            error=None,
            retry=i % 10 == 0,
            network_error=False,
        )
    store.log_submission(
        started_at=200.0,
        latency_ms=0.0,
        batch_size=10,
        status=None,
        error="connection refused",
        retry=True,
        network_error=True,
    )
    store.log_submission(
        started_at=201.0, latency_ms=3.0, batch_size=10, status=503, error="overloaded"
    )
    stats = submission_history(store, QueueStats(pending=7, dead=2))
    assert stats.submissions == 102
    assert stats.successful == 100
    assert stats.failed == 2
    assert stats.success_rate == pytest.approx(100 / 102)
    assert stats.events_sent == 1020
    assert stats.events_accepted == 900
    assert stats.events_duplicate == 100
    assert stats.retries == 11
    assert stats.network_errors == 1
    assert stats.last_submission_at == 201.0
    assert stats.last_error == "overloaded"
    assert stats.queue_size == 7
    assert stats.dead == 2
    # 102 latencies: 0, 1, 2, 3, 3, 4 .. 100 -> nearest rank
    assert stats.latency_p50_ms == 49.0
    assert stats.latency_p95_ms == 95.0
    assert stats.latency_p99_ms == 99.0


def test_submission_log_is_bounded(store: LocalStore) -> None:
    conn = store.connection()
    with store.transaction():
        conn.executemany(
            "INSERT INTO telemetry_submissions(started_at, latency_ms, batch_size)"
            " VALUES (?, 1, 1)",
            [(float(i),) for i in range(SUBMISSION_LOG_LIMIT + 50)],
        )
    store.log_submission(started_at=1e9, latency_ms=1.0, batch_size=1, status=200)
    count, first = conn.execute(
        "SELECT count(*), min(started_at) FROM telemetry_submissions"
    ).fetchone()
    assert count == SUBMISSION_LOG_LIMIT
    assert first == 51.0


def test_purge_deletes_every_file(tmp_db_path: Path) -> None:
    s = LocalStore(tmp_db_path)
    s.set_config("k", "v")
    other = threading.Thread(target=lambda: s.get_config("k"))
    other.start()
    other.join(timeout=30)
    assert Path(f"{tmp_db_path}-wal").exists()
    s.purge()
    assert sorted(tmp_db_path.parent.iterdir()) == []
    with pytest.raises(StorageError, match="purged"):
        s.get_config("k")


def test_close_then_reuse_reopens(store: LocalStore) -> None:
    store.set_config("k", "v")
    store.close()
    assert store.get_config("k") == "v"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_connection(store: LocalStore) -> None:
    parent_conn = store.connection()
    store.set_config("parent", "1")

    def child() -> bytes:
        ok = store.connection() is not parent_conn and store.get_config("parent") == "1"
        store.set_config("child", "1")
        return b"ok" if ok else b"no"

    answer = in_forked_child(child)
    assert answer == b"ok"
    assert store.get_config("child") == "1"
    assert store.connection() is parent_conn


def test_reopening_an_up_to_date_file_takes_no_write_lock(tmp_db_path: Path) -> None:
    LocalStore(tmp_db_path).close()
    writer = sqlite3.connect(tmp_db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process is writing
        # With a write transaction for the version check, this open would fail
        # with "database is locked" after the (short) busy timeout.
        again = LocalStore(tmp_db_path, busy_timeout_ms=10)
        try:
            assert again.schema_version() == SCHEMA_VERSION
        finally:
            again.close()
    finally:
        writer.rollback()
        writer.close()


def test_connections_use_a_small_page_cache(store: LocalStore) -> None:
    per_thread: list[int] = []

    def other() -> None:
        per_thread.append(store.connection().execute("PRAGMA cache_size").fetchone()[0])

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert store.connection().execute("PRAGMA cache_size").fetchone()[0] == -CACHE_SIZE_KIB
    assert per_thread == [-CACHE_SIZE_KIB]


def _foreign_sqlite(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes(body) VALUES ('keep me')")
    conn.close()
    return path.read_bytes()


def test_a_foreign_sqlite_file_is_refused_and_left_byte_for_byte_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    before = _foreign_sqlite(path)
    with pytest.raises(StorageError, match="not a telemetry database"):
        LocalStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"plain text, not a database\n" * 200)
    with pytest.raises(StorageError, match=r"not a (telemetry )?database"):
        LocalStore(path)
    assert path.read_bytes() == b"plain text, not a database\n" * 200
