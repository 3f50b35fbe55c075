"""Tests of the write-behind journal and its merger (telemetry_core._write_behind),
and of lock waits that happen between fork-guard sections (telemetry_core._forksafe)."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

import pytest

from telemetry_core import _write_behind as write_behind_module
from telemetry_core._forksafe import fork_guard, guarded, is_locked, lock_budget
from telemetry_core._write_behind import (
    WRITE_RETRY_HOLD,
    SpillJournal,
    WriteBehind,
    read_spill_file,
    remove_spill_files,
    spill_files,
)
from telemetry_core.errors import StorageError
from tests.processes import in_forked_child

Stored = list[tuple[bytes, bool]]


def payload(n: int) -> bytes:
    return b'{"id":"%d","n":%d}' % (n, n)


class Sink:
    """Stores merged events; ``locked`` makes it fail like a locked database."""

    def __init__(self) -> None:
        self.events: Stored = []
        self.locked = False
        self.calls = 0

    def __call__(self, entries: Stored) -> None:
        self.calls += 1
        if self.locked:
            raise StorageError("telemetry database x: database is locked")
        self.events.extend(entries)


def merger(tmp_path: Path, sink: Sink, *, max_entries: int) -> WriteBehind:
    """A journal of ``tmp_path/t.db`` with its merger storing into ``sink``."""
    return WriteBehind(
        SpillJournal(tmp_path / "t.db", max_entries=max_entries),
        sink,
        is_locked=is_locked,
        monotonic=time.monotonic,
    )


def test_a_spill_line_round_trips_and_a_torn_last_line_is_skipped() -> None:
    data = b"1" + payload(1) + b"\n" + b"0" + payload(2) + b"\n" + b"1" + payload(3)[:5]
    assert read_spill_file(data) == [(payload(1), True), (payload(2), False)]


def test_append_writes_a_private_file_next_to_the_database(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    journal = SpillJournal(db, max_entries=10)
    assert journal.append(payload(1), enqueue=True)
    assert journal.append(payload(2), enqueue=False)
    [path] = spill_files(db)
    assert path.name.startswith("telemetry.db.spill-")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_spill_file(path.read_bytes()) == [(payload(1), True), (payload(2), False)]
    assert journal.pending == 2
    journal.close()


def test_a_full_journal_refuses_more(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path / "t.db", max_entries=2)
    assert [journal.append(payload(i), enqueue=True) for i in range(3)] == [True, True, False]
    assert journal.pending == 2
    journal.close()


def test_a_journal_that_cannot_be_written_is_not_tried_on_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that takes no new file costs one failed attempt per hold, not one per
    track(); once the hold is over (clock injected) the journal is tried again."""
    now = [100.0]
    journal = SpillJournal(tmp_path / "t.db", max_entries=10, monotonic=lambda: now[0])
    attempts: list[int] = []
    real_open = SpillJournal._open

    def refused(self: SpillJournal) -> int:
        attempts.append(1)
        raise PermissionError("no new files here")

    monkeypatch.setattr(SpillJournal, "_open", refused)
    assert [journal.append(payload(i), enqueue=True) for i in range(50)] == [False] * 50
    assert len(attempts) == 1
    now[0] += WRITE_RETRY_HOLD
    assert not journal.append(payload(50), enqueue=True)
    assert len(attempts) == 2
    monkeypatch.setattr(SpillJournal, "_open", real_open)
    now[0] += WRITE_RETRY_HOLD
    assert journal.append(payload(51), enqueue=True)
    assert journal.pending == 1
    journal.close()


def test_a_failed_merge_keeps_everything_and_appends_go_on(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    journal = SpillJournal(db, max_entries=10)
    sink = Sink()
    journal.append(payload(1), enqueue=True)
    sink.locked = True
    with pytest.raises(StorageError):
        journal.merge(sink)
    journal.append(payload(2), enqueue=True)  # into a new file, while the first waits
    assert journal.pending == 2 and len(spill_files(db)) == 2
    sink.locked = False
    assert journal.merge(sink) == 2
    assert sink.events == [(payload(1), True), (payload(2), True)]
    assert journal.pending == 0 and spill_files(db) == []


def test_orphans_of_a_live_writer_are_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    alive = SpillJournal(db, max_entries=10)
    alive.append(payload(1), enqueue=True)
    merger = SpillJournal(db, max_entries=10)
    sink = Sink()
    assert merger.merge_orphans(sink) == 0  # its writer still holds the lock
    alive.close()  # the writer goes away without merging
    assert merger.merge_orphans(sink) == 1
    assert sink.events == [(payload(1), True)] and spill_files(db) == []


def test_a_killed_writers_events_are_merged_by_the_next_process(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from telemetry_core._write_behind import SpillJournal\n"
        "j = SpillJournal(Path(sys.argv[1]), max_entries=10)\n"
        'assert j.append(b\'{"id":"k"}\', enqueue=True)\n'
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(db)], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    sink = Sink()
    assert SpillJournal(db, max_entries=10).merge_orphans(sink) == 1
    assert sink.events == [(b'{"id":"k"}', True)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_spills_into_a_file_of_its_own(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    journal = SpillJournal(db, max_entries=10)
    journal.append(payload(1), enqueue=True)
    [parent_file] = spill_files(db)

    def child() -> bytes:
        assert journal.pending == 0  # the parent's events are the parent's
        assert journal.append(payload(2), enqueue=True)
        mine = [p for p in spill_files(db) if p != parent_file]
        return b"%d" % len(mine)

    assert in_forked_child(child) == b"1"
    assert read_spill_file(parent_file.read_bytes()) == [(payload(1), True)]
    # The child exited: its file is an orphan; the parent's still has a live writer.
    sink = Sink()
    assert journal.merge_orphans(sink) == 1 and sink.events == [(payload(2), True)]
    journal.close()


def test_remove_spill_files_deletes_them_all(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    for _ in range(2):
        SpillJournal(db, max_entries=10).append(payload(1), enqueue=True)
    remove_spill_files(db)
    assert spill_files(db) == []


def test_the_merger_thread_stores_spilled_events_once_the_lock_is_released(
    tmp_path: Path,
) -> None:
    sink = Sink()
    sink.locked = True
    behind = merger(tmp_path, sink, max_entries=10)
    assert behind.spill(payload(1), enqueue=True)
    assert not behind.try_database()  # within the hold: spill without trying
    for _ in range(500):  # bounded: until the thread has met the lock
        if sink.calls:
            break
        time.sleep(0.01)
    assert sink.calls and not sink.events
    sink.locked = False
    assert behind.merge_until(time.monotonic() + 30)
    assert sink.events == [(payload(1), True)]
    assert behind.stop(30)


def test_merge_until_gives_up_at_its_deadline(tmp_path: Path) -> None:
    sink = Sink()
    sink.locked = True
    now = [0.0]
    behind = WriteBehind(
        SpillJournal(tmp_path / "t.db", max_entries=10),
        sink,
        is_locked=is_locked,
        monotonic=lambda: now[0],
    )
    behind.journal.append(payload(1), enqueue=True)
    assert not behind.merge_until(0.0)
    assert behind.journal.pending == 1
    behind.release_files()
    assert len(spill_files(tmp_path / "t.db")) == 1


# -- lock waits between fork-guard sections -------------------------------------------


class Writer:
    """Writes one config row; counts its attempts."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 20")
        self.attempts = 0

    def write(self) -> None:
        self.attempts += 1
        self.conn.execute("INSERT INTO t VALUES (1)")


def _locked_db(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    path = tmp_path / "lock.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("CREATE TABLE t (x)")
    setup.close()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    return path, locker


def test_a_guarded_call_waits_for_a_lock_in_retries_within_its_budget(tmp_path: Path) -> None:
    path, locker = _locked_db(tmp_path)
    writer = Writer(path)
    with lock_budget(0.0), pytest.raises(sqlite3.OperationalError):
        guarded(writer).write()  # no budget: one attempt
    assert writer.attempts == 1
    done = threading.Event()

    def call() -> None:
        with lock_budget(30.0):
            guarded(writer).write()
        done.set()

    thread = threading.Thread(target=call)
    thread.start()
    for _ in range(3000):  # bounded: until it has retried at least once
        if writer.attempts >= 3:
            break
        time.sleep(0.01)
    assert writer.attempts >= 3 and not done.is_set()
    locker.execute("ROLLBACK")
    thread.join(30)
    assert done.is_set()
    assert locker.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_a_fork_does_not_wait_for_a_thread_waiting_on_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread waits up to a minute for a lock held by another connection. A fork
    # meanwhile finds no section running: the waiting happens between sections
    # (were it inside one, before_fork would give up after max_wait with the
    # section still active).
    monkeypatch.setattr(fork_guard, "max_wait", 10.0)
    path, locker = _locked_db(tmp_path)
    writer = Writer(path)
    done = threading.Event()

    def call() -> None:
        with lock_budget(60.0):
            guarded(writer).write()
        done.set()

    thread = threading.Thread(target=call)
    thread.start()
    for _ in range(3000):  # bounded: until it has retried
        if writer.attempts >= 2:
            break
        time.sleep(0.01)
    fork_guard.before_fork()
    try:
        active = fork_guard.active
    finally:
        fork_guard.after_fork_in_parent()
    assert active == 0
    assert not done.is_set()  # the lock is still held: the thread still waits
    locker.execute("ROLLBACK")
    thread.join(60)
    assert done.is_set()


def test_appends_and_merges_from_many_threads_store_each_event_exactly_once(
    tmp_path: Path,
) -> None:
    # The merger thread and readers settling their own writes merge at the same
    # time as appends go on: nothing may be lost or handed on twice.
    sink = Sink()
    behind = merger(tmp_path, sink, max_entries=10_000)
    writers, per_writer = 4, 300
    done = threading.Event()

    def write(w: int) -> None:
        for i in range(per_writer):
            assert behind.append(payload(w * per_writer + i), enqueue=i % 2 == 0)

    def settle() -> None:
        while not done.is_set():
            behind.merge_once()

    settlers = [threading.Thread(target=settle) for _ in range(2)]
    appenders = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in settlers + appenders:
        thread.start()
    for thread in appenders:
        thread.join(30)
    done.set()
    for thread in settlers:
        thread.join(30)
    assert behind.merge_until(time.monotonic() + 30)
    assert behind.stop(30)
    stored = [p for p, _ in sink.events]
    assert sorted(stored) == sorted(payload(n) for n in range(writers * per_writer))
    assert not spill_files(tmp_path / "t.db")


def test_an_idle_merger_sleeps_until_the_next_append(tmp_path: Path) -> None:
    sink = Sink()
    behind = merger(tmp_path, sink, max_entries=10)
    merges: list[float] = []
    real_merge = behind.merge_once

    def counted() -> bool:
        merges.append(time.monotonic())
        return real_merge()

    behind.merge_once = counted  # type: ignore[method-assign]
    assert behind.append(payload(1), enqueue=True)
    for _ in range(500):  # bounded: until the thread has merged
        if sink.events:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    tries = len(merges)
    time.sleep(0.3)  # several merge periods: an idle merger does not even try
    assert len(merges) == tries
    assert behind.append(payload(2), enqueue=False)  # wakes it
    for _ in range(500):
        if len(sink.events) == 2:
            break
        time.sleep(0.01)
    assert sink.events == [(payload(1), True), (payload(2), False)]
    assert behind.stop(30)


def test_a_new_spill_file_appears_already_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made under another name and renamed once locked: a merger adopting
    # orphans can never take (and unlink) a file its writer is about to use.
    db = tmp_path / "t.db"
    visible_while_locking: list[list[Path]] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        visible_while_locking.append(spill_files(db))
        real_flock(fd, operation)

    monkeypatch.setattr(write_behind_module.fcntl, "flock", flock)
    journal = SpillJournal(db, max_entries=10)
    assert journal.append(payload(1), enqueue=True)
    monkeypatch.undo()
    assert visible_while_locking == [[]]  # not yet under a spill file's name
    [path] = spill_files(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    journal.close()
    (tmp_path / "t.db.spillnew-1-deadbeef").write_bytes(b"")  # a writer died making one
    remove_spill_files(db)
    assert list(tmp_path.iterdir()) == []


def test_new_appends_during_a_merge_are_not_taken_for_a_lock(tmp_path: Path) -> None:
    """A read's merge (``only_locked``) that leaves events other threads appended
    meanwhile returns at once: they are the merger thread's; only a lock is waited
    out. (Before, such a read retried, and stored, until its whole budget was spent.)"""
    stored: Stored = []

    def store(entries: Stored) -> None:
        stored.extend(entries)
        if len(stored) == 1:  # another thread appends while this merge stores
            assert behind.journal.append(payload(99), enqueue=True)

    behind = merger(tmp_path, cast(Sink, store), max_entries=10)
    assert behind.journal.append(payload(1), enqueue=True)
    assert not behind.merge_until(time.monotonic() + 60, only_locked=True)
    assert stored == [(payload(1), True)]  # one merge: the newcomer was left alone
    assert not behind.locked
    assert behind.journal.pending == 1
    assert behind.merge_until(time.monotonic() + 60)  # the merger's own way takes it
    assert stored == [(payload(1), True), (payload(99), True)]
    behind.journal.close()


def test_a_stop_during_a_merge_ends_the_merger_at_once(tmp_path: Path) -> None:
    # stop() sets its wake-up while the thread is inside a merge; the thread
    # clears wake-ups after each merge, and must not then sleep on a lost one.
    entered, release = threading.Event(), threading.Event()

    def slow_store(entries: Stored) -> None:
        entered.set()
        release.wait(10)

    behind = merger(tmp_path, cast(Sink, slow_store), max_entries=10)
    assert behind.append(payload(1), enqueue=True)
    assert entered.wait(10)
    stopper = threading.Thread(target=behind.stop, args=(30,))
    stopper.start()
    for _ in range(500):  # bounded: until stop() has set its flags
        if behind._stop.is_set():
            break
        time.sleep(0.01)
    release.set()
    stopper.join(30)
    thread = behind._thread
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()
