"""Fork safety for SQLite: no ``os.fork()`` while a thread is inside SQLite.

:class:`ForkGuard` counts running database sections and holds a fork off
until they end; :data:`fork_guard` is the process-wide instance (the service
installs its ``os.register_at_fork`` hooks) and :func:`guarded` wraps an
object so that each of its method calls is such a section.

Waiting for another process's write lock happens *between* sections, not in
them: connections wait only a short slice in SQLite's busy handler
(:data:`LOCK_SLICE_MS`), and a guarded call that finds the database locked
leaves its section, pauses and tries again until its thread's lock budget
(:func:`lock_budget`) is spent. So a host's ``os.fork()`` waits at most about
one slice for a thread that waits on a lock, never the whole budget.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import types
from collections.abc import Iterator
from typing import Any, Final, TypeVar, cast

from telemetry_core.errors import StorageError

__all__ = [
    "BACKGROUND_LOCK_BUDGET",
    "DEFAULT_LOCK_BUDGET",
    "LOCK_SLICE_MS",
    "ForkGuard",
    "fork_guard",
    "guarded",
    "is_locked",
    "lock_budget",
    "set_lock_budget",
]

#: How long one SQLite call waits in its busy handler (milliseconds) on the
#: connections of background threads; longer waits are retries between sections.
LOCK_SLICE_MS: Final = 50
#: A thread's budget for waiting on another writer's lock (seconds) unless set.
DEFAULT_LOCK_BUDGET: Final = 0.2
#: The budget of background work (the worker, retention, an explicit submit_now()).
BACKGROUND_LOCK_BUDGET: Final = 5.0
#: Pause between two attempts of a call that found the database locked (seconds).
LOCK_RETRY_PAUSE: Final = 0.01

_budget = threading.local()


def set_lock_budget(seconds: float) -> None:
    """Let guarded calls of this thread wait up to ``seconds`` for a lock."""
    _budget.seconds = seconds


def thread_lock_budget() -> float:
    """How long this thread's database calls may wait for another writer's lock (seconds)."""
    return float(getattr(_budget, "seconds", DEFAULT_LOCK_BUDGET))


@contextlib.contextmanager
def lock_budget(seconds: float) -> Iterator[None]:
    """Run the block with this thread's lock budget set to ``seconds``."""
    before = thread_lock_budget()
    set_lock_budget(seconds)
    try:
        yield
    finally:
        set_lock_budget(before)


def is_locked(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is SQLite's "database is locked/busy"."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, (sqlite3.OperationalError, StorageError)):
            text = str(error)
            if "database is locked" in text or "database is busy" in text:
                return True
    return False


T = TypeVar("T")


class ForkGuard:
    """Keeps ``os.fork()`` from happening while a thread is inside SQLite.

    SQLite's internal mutexes are not fork-safe: a child forked while another
    thread holds one (opening a file, committing, closing) deadlocks on its
    first connection. Database calls of the service and the worker run in a
    :meth:`section`; :meth:`before_fork` waits (bounded by ``max_wait``) until
    no section is active and holds new ones off until the fork is done.
    Sections never span network I/O, so the wait is short.

    :param max_wait: longest wait in :meth:`before_fork` for running sections
        before forking anyway (default :attr:`MAX_WAIT`).
    """

    #: Default longest wait for running sections before forking anyway.
    MAX_WAIT: Final = 5.0

    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self.max_wait = max_wait
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False
        self._section = _Section(self)

    @property
    def active(self) -> int:
        """How many sections are running now."""
        return self._active

    @property
    def forking(self) -> bool:
        """True from :meth:`before_fork` until the fork is done."""
        return self._forking

    def section(self) -> _Section:
        """Mark the block (``with guard.section():``) as touching SQLite.

        The returned context manager is stateless and reentrant; one object is
        shared by every caller (a plain class, not a generator: it sits on
        every event's path).
        """
        return self._section

    def _enter(self) -> None:
        cond = self._cond
        with cond:
            while self._forking:
                cond.wait()
            self._active += 1

    def _exit(self) -> None:
        cond = self._cond
        with cond:
            self._active -= 1
            if self._forking and not self._active:
                cond.notify_all()

    def before_fork(self) -> None:
        """Wait for active sections to end; keep the guard held across fork()."""
        cond = self._cond
        cond.acquire()
        self._forking = True
        deadline = time.monotonic() + self.max_wait
        while self._active and (remaining := deadline - time.monotonic()) > 0:
            cond.wait(remaining)

    def after_fork_in_parent(self) -> None:
        """Let sections run again."""
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        """Start afresh: the parent's other threads do not exist here."""
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False


class _Section:
    """The context manager of :meth:`ForkGuard.section`."""

    __slots__ = ("_guard",)

    def __init__(self, guard: ForkGuard) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._guard._enter()

    def __exit__(self, *exc_info: object) -> None:
        self._guard._exit()


#: The process-wide guard (its fork hooks are installed by the service).
fork_guard = ForkGuard()


class _Guarded:
    """Runs every method call of ``target`` inside a :data:`fork_guard` section."""

    def __init__(self, target: object) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            guard = fork_guard
            deadline: float | None = None
            while True:
                guard._enter()
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:
                    # Every guarded method is one transaction, rolled back when
                    # it fails, so trying it again is safe.
                    if not is_locked(exc):
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + thread_lock_budget()
                    if now >= deadline:
                        raise
                finally:
                    guard._exit()
                time.sleep(min(LOCK_RETRY_PAUSE, max(deadline - time.monotonic(), 0.0)))

        if isinstance(attr, types.MethodType):
            # A method stays what it is: the next lookup of the name finds
            # the wrapper without __getattr__.
            self.__dict__[name] = call
        return call

    def __repr__(self) -> str:
        return f"guarded({self._target!r})"


def guarded(target: T) -> T:
    """``target`` with each method call run in a :data:`fork_guard` section."""
    return cast(T, _Guarded(target))
