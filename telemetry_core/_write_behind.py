"""Write-behind: the journal ``track()`` appends events to, and how they get in.

By default (``write_behind``) ``track()`` appends each checked event to this
process's *spill file* next to the database, one line per event, in one
``write()`` of an ``O_APPEND`` file: a few microseconds, no lock to wait for, and
the event survives the process (even ``os._exit`` or SIGKILL, as the bytes are
in the kernel's page cache: the durability of a WAL commit with
``synchronous=NORMAL``). With ``write_behind`` off only the events a locked
database turns away are appended (DESIGN §4: ``track()`` never waits on another
process's lock). A merger thread moves journaled events into the database in
batches; reads, sends and :meth:`SpillJournal.close` store them first, and
whatever is still journaled when the process ends is merged by the next
process that opens the database.

Layout: ``<db name>.spill-<pid>-<random>``; each line is ``1`` or ``0`` (queue
the event or only keep it locally, decided at ``track()`` time) followed by the
event's wire encoding. The writing process holds an exclusive ``flock`` on its
file for as long as it writes to it, so a merger takes only files whose writer
has gone (or rotated them away); merging twice is harmless because recording an
id that is already stored changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Final

from telemetry_core._log import logger

__all__ = [
    "SPILL_GLOB",
    "SpillJournal",
    "WriteBehind",
    "count_spilled",
    "read_spill_file",
    "remove_spill_files",
    "spill_files",
]

#: Spill files of a database ``X`` are ``X`` + this pattern.
SPILL_GLOB: Final = ".spill-*"
# A spill file while it is made (not yet locked): no merger takes it.
_MAKING: Final = ".spillnew-"
#: After a failed write (a directory that takes no new file, a full disk), appends
#: fail at once for this long instead of trying the file system on every event.
WRITE_RETRY_HOLD: Final = 1.0
_QUEUE: Final = b"1"
_LOCAL: Final = b"0"

_journals: weakref.WeakSet[SpillJournal] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for journal in list(_journals):
        journal._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def spill_files(db_path: Path, pattern: str = SPILL_GLOB) -> list[Path]:
    """Every spill file of the database at ``db_path`` (``pattern``: the files
    being made, too, with ``_MAKING + "*"``), oldest name first."""
    try:
        return sorted(db_path.parent.glob(db_path.name + pattern))
    except OSError:
        return []


def count_spilled(db_path: Path) -> int:
    """Events waiting in every spill file of ``db_path`` (any process's)."""
    total = 0
    for path in spill_files(db_path):
        with contextlib.suppress(OSError):
            total += path.read_bytes().count(b"\n")
    return total


def read_spill_file(data: bytes) -> list[tuple[bytes, bool]]:
    """The (payload, queue it) pairs of a spill file's bytes; a torn last line
    (the writer died inside ``write()``) is skipped."""
    out = []
    for line in data.split(b"\n"):
        if len(line) > 1 and line[:1] in (_QUEUE, _LOCAL) and line.endswith(b"}"):
            out.append((line[1:], line[:1] == _QUEUE))
    return out


class SpillJournal:
    """This process's spill file for the database at ``db_path``.

    :param db_path: the database the events belong to.
    :param max_entries: events kept spilled at most (``max_queue_size``);
        :meth:`append` refuses more and the caller counts them.

    Thread-safe. :meth:`append` is the only call on ``track()``'s path.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        max_entries: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db_path = db_path
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._retry_at = 0.0  # see WRITE_RETRY_HOLD
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending = 0
        # Files rotated away from append() whose merge has not succeeded yet:
        # (path, fd holding the lock, events in it), oldest first.
        self._rotated: list[tuple[Path, int, int]] = []
        _journals.add(self)

    @property
    def pending(self) -> int:
        """Events this process spilled that are not stored yet."""
        return self._pending + sum(count for _, _, count in self._rotated)

    def append(self, payload: bytes, *, enqueue: bool) -> bool:
        """Append one encoded event; False (nothing written) when full or the
        file cannot be written (then for :data:`WRITE_RETRY_HOLD` without trying)."""
        line = (_QUEUE if enqueue else _LOCAL) + payload + b"\n"
        with self._lock:
            if self.pending >= self.max_entries:
                return False
            if self._retry_at and self._monotonic() < self._retry_at:
                return False
            try:
                fd = self._fd if self._fd is not None else self._open()
                os.write(fd, line)
            except OSError as exc:
                logger.debug("telemetry-core: cannot write the spill file: %r", exc)
                self._retry_at = self._monotonic() + WRITE_RETRY_HOLD
                return False
            self._retry_at = 0.0
            self._pending += 1
            return True

    def _open(self) -> int:
        # Made and locked under a name no merger looks for, then renamed into
        # place: a merger adopting orphans never sees the file unlocked.
        suffix = f"{os.getpid()}-{os.urandom(4).hex()}"
        path = self.db_path.parent / f"{self.db_path.name}.spill-{suffix}"
        making = self.db_path.parent / f"{self.db_path.name}{_MAKING}{suffix}"
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
            os.rename(making, path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                making.unlink()
            raise
        self._fd, self._path = fd, path
        return fd

    def merge(self, store_events: Callable[[list[tuple[bytes, bool]]], None]) -> int:
        """Hand this process's spilled events to ``store_events`` (one call per
        file, which stores them durably or raises), deleting each file merged;
        return how many events were stored.

        The file is rotated first, so ``append`` goes on into a new file while
        the merge waits for the database. A file whose merge fails stays
        rotated (and locked) for the next call; the exception propagates.
        """
        with self._lock:
            if self._fd is not None and self._path is not None:
                self._rotated.append((self._path, self._fd, self._pending))
                self._fd = self._path = None
                self._pending = 0
        done = 0
        while self._rotated:
            path, fd, _ = self._rotated[0]
            done += _merge_file(path, fd, store_events)
            with self._lock:
                self._rotated.pop(0)
            os.close(fd)
        return done

    def own_files(self) -> set[Path | None]:
        """The files this journal writes or has rotated and not merged yet."""
        return {self._path, *(path for path, _, _ in self._rotated)}

    def merge_orphans(self, store_events: Callable[[list[tuple[bytes, bool]]], None]) -> int:
        """Merge the spill files of the database that no live writer holds
        (left by a process that exited or was killed); return events handed on."""
        own = self.own_files()
        done = 0
        for path in spill_files(self.db_path):
            if path in own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # merged and removed by someone else meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its writer is alive
                done += _merge_file(path, fd, store_events)
            finally:
                os.close(fd)
        return done

    def close(self) -> None:
        """Close the files without merging (they stay for the next process)."""
        with self._lock:
            fds = [fd for _, fd, _ in self._rotated]
            if self._fd is not None:
                fds.append(self._fd)
            self._fd, self._path, self._rotated = None, None, []
            self._pending = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _forget_after_fork(self) -> None:
        # The parent still writes its file; the child must neither write to it
        # nor keep its lock alive after the parent exits.
        self._lock = threading.Lock()
        self.close()


def _merge_file(
    path: Path, fd: int, store_events: Callable[[list[tuple[bytes, bool]]], None]
) -> int:
    """Store the events of the spill file open at ``fd``, then unlink it."""
    data = _read_all(fd)
    events = read_spill_file(data)
    if events:
        store_events(events)
    with contextlib.suppress(OSError):
        path.unlink()
    return len(events)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def remove_spill_files(db_path: Path) -> None:
    """Delete every spill file of ``db_path`` (``disable --purge``)."""
    for path in [*spill_files(db_path), *spill_files(db_path, _MAKING + "*")]:
        with contextlib.suppress(OSError):
            path.unlink()


#: First wait of the merger thread before it tries the database (seconds); it
#: doubles after each locked attempt up to :data:`MERGE_MAX_WAIT`.
MERGE_FIRST_WAIT: Final = 0.05
MERGE_MAX_WAIT: Final = 1.0
#: After a locked write, ``track()`` spills without trying the database for
#: this long (seconds), so a held lock costs each call one append, not a wait.
SPILL_HOLD: Final = 0.05


class WriteBehind:
    """A spill journal and the thread that merges it into the database.

    :param journal: this process's :class:`SpillJournal`.
    :param store_events: stores (payload, queue it) pairs durably in one go or
        raises; a locked database is recognised by ``is_locked``.
    :param is_locked: whether an exception means "another writer holds the lock".
    :param thread_setup: run once in the merger thread before its first merge
        (the service gives that thread's connection a longer busy timeout).
    :param monotonic: the clock of :data:`SPILL_HOLD`.
    :param on_error: told of a merge that failed for another reason than a
        lock (the storage refuses writes); the merger thread then waits for the
        next append instead of retrying.
    :param after_merge: called after a merge that stored events, outside the
        merge lock (it may take the service's locks).
    """

    def __init__(
        self,
        journal: SpillJournal,
        store_events: Callable[[list[tuple[bytes, bool]]], None],
        *,
        is_locked: Callable[[BaseException], bool],
        thread_setup: Callable[[], None] | None = None,
        monotonic: Callable[[], float],
        on_error: Callable[[BaseException], None] | None = None,
        after_merge: Callable[[], None] | None = None,
    ) -> None:
        self.journal = journal
        self._on_error = on_error
        self._after_merge = after_merge
        self._failed = False  # the last merge failed for another reason than a lock
        #: The last merge found the database locked.
        self.locked = False
        self._store_events = store_events
        self._is_locked = is_locked
        self._thread_setup = thread_setup
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # One merge at a time: the merger thread and a reader settling its
        # own writes must not both hand the same rotated file on.
        self._merging = threading.Lock()
        self._stop = threading.Event()
        # Set by each append (and by stop): the idle merger sleeps on it with
        # no timeout, so a quiet process has no wake-ups at all.
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._hold_until = 0.0
        self._orphans = True  # files of earlier processes may exist

    def try_database(self) -> bool:
        """Whether ``track()`` should try the database (not within a hold)."""
        return not self.journal.pending or self._monotonic() >= self._hold_until

    def spill(self, payload: bytes, *, enqueue: bool) -> bool:
        """Append one event the database refused (locked) and make sure the
        merger runs; False when full. ``track()`` then spills without trying
        the database for :data:`SPILL_HOLD`."""
        self._hold_until = self._monotonic() + SPILL_HOLD
        return self.append(payload, enqueue=enqueue)

    def append(self, payload: bytes, *, enqueue: bool) -> bool:
        """Append one event and make sure the merger runs; False when full."""
        if not self.journal.append(payload, enqueue=enqueue):
            return False
        thread = self._thread
        if thread is None or not thread.is_alive():
            self.start()
        elif not self._kick.is_set():
            self._kick.set()
        return True

    def start(self) -> None:
        """Start the merger thread unless it runs, and wake it (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="telemetry-core-write-behind", daemon=True
                )
                self._thread.start()
        self._kick.set()

    def adopt_orphans(self) -> None:
        """Look for spill files other processes left (a forked worker that exited,
        a killed process) and merge them in the background."""
        own = self.journal.own_files()
        if any(path not in own for path in spill_files(self.journal.db_path)):
            self._orphans = True
            self.start()

    def merge_once(self) -> bool:
        """Merge what waits (own journal, then orphans); True when nothing is left.

        A locked database leaves everything in place and returns False. A
        merge running in another thread is waited for (so that a read after
        it sees what was merged). ``after_merge`` runs once the merge lock is
        released, when events were stored."""
        with self._merging:
            done, stored = self._merge_all()
        if stored and self._after_merge is not None:
            self._after_merge()
        return done

    def _merge_all(self) -> tuple[bool, bool]:
        """(nothing left, some events were stored); under the merge lock."""
        stored = 0
        self._failed = self.locked = False
        try:
            stored += self.journal.merge(self._store_events)
            if self._orphans:
                stored += self.journal.merge_orphans(self._store_events)
                self._orphans = False
        except Exception as exc:
            self._orphans = True  # a failed merge leaves its file as an orphan
            self.locked = self._is_locked(exc)
            if not self.locked:
                self._failed = True
                logger.debug("telemetry-core: merging spilled events failed: %r", exc)
                if self._on_error is not None:
                    self._on_error(exc)
            return False, stored > 0
        return not self.journal.pending, stored > 0

    def merge_until(
        self, deadline: float, *, first_wait: float = MERGE_FIRST_WAIT, only_locked: bool = False
    ) -> bool:
        """Merge in the caller's thread, retrying until the monotonic ``deadline``
        (pauses from ``first_wait``, doubling up to :data:`MERGE_MAX_WAIT`); True
        when nothing is left. A failure other than a lock returns False at once;
        with ``only_locked`` so does a merge that was not locked out (what other
        threads appended meanwhile is then the merger thread's)."""
        wait = first_wait
        while True:
            if self.merge_once():
                return True
            if self._failed or (only_locked and not self.locked):
                return False  # the storage refuses writes: waiting will not help
            left = deadline - self._monotonic()
            if left <= 0:
                return False
            # A plain sleep: the merger's stop event may be set (close), and
            # waiting on it would spin.
            time.sleep(min(wait, left))
            wait = min(wait * 2, MERGE_MAX_WAIT)

    def release_files(self) -> None:
        """Close the journal's files unmerged: they become orphans that the next
        merge of orphans (this process's or another's) stores. A merge in
        flight (another thread's) ends first."""
        with self._merging:
            self.journal.close()
        self._orphans = True

    def stop(self, timeout: float) -> bool:
        """Stop the merger thread, waiting at most ``timeout``; True if it ended."""
        self._stop.set()
        self._kick.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(timeout, 0.0))
        return not thread.is_alive()

    def _run(self) -> None:
        if self._thread_setup is not None:
            try:
                self._thread_setup()
            except Exception as exc:
                logger.debug("telemetry-core: write-behind thread setup failed: %r", exc)
        wait = MERGE_FIRST_WAIT
        while not self._stop.wait(wait):
            merged = self.merge_once()
            if not merged and self.locked:
                wait = min(wait * 2, MERGE_MAX_WAIT)  # locked: try again soon
                continue
            wait = MERGE_FIRST_WAIT
            # Cleared before looking, so an append (or a stop) after the look
            # sets it again; a stop before the clear is seen by the look.
            self._kick.clear()
            if self._stop.is_set():
                return
            if self._failed or (not self.journal.pending and not self._orphans):
                self._kick.wait()
