"""The submission worker's background thread: start, wake, the exit flush, stop, the loop.

:class:`WorkerThread` knows nothing of delivery: its loop runs the cycle it is
given, then waits as long as the cycle says (at most :data:`MAX_LOOP_WAIT`)
unless woken, and goes on at once while the cycle says more is due. It also
knows what the thread is inside (:attr:`WorkerThread.phase`), so that
:meth:`~WorkerThread.stop` waits a short grace for native work that must not
be running when the process exits (see :mod:`telemetry_core.worker`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from telemetry_core._log import logger

if TYPE_CHECKING:
    from telemetry_core.worker import CycleResult

__all__ = ["MAX_LOOP_WAIT", "RELEASE_IDLE_AFTER", "SHUTDOWN_GRACE", "WorkerThread"]


#: Ceiling on one wait of the background loop, so that a clock jump or a huge
#: ``Retry-After`` never parks the thread for longer than this between checks.
MAX_LOOP_WAIT = 3600.0
#: Extra wait in :meth:`WorkerThread.stop` for a thread inside a local
#: (non-network) call or the first call of a new transport, which end quickly.
SHUTDOWN_GRACE: Final = 1.0
#: What the thread may be inside (:attr:`WorkerThread.phase`) when stop() gives
#: the grace: native work that must not be running when the process exits.
_NATIVE_PHASES: Final = frozenset({"local", "setup"})
#: Before a wait at least this long (seconds), the loop lets the transport
#: drop its idle connections (``release_idle()``, when it has one): a keep-alive
#: connection rarely outlives such a pause on the server side, and an idle
#: process should not hold sockets and TLS buffers.
RELEASE_IDLE_AFTER: Final = 30.0


class WorkerThread:
    """The lazily started daemon thread of one worker.

    :param cycle: runs one cycle; its result says whether more is due and how
        long to wait.
    :param after_cycle: called after each cycle unless stopping.
    :param setup: called once in the thread before its first cycle; an error
        is logged at debug level and ignored.
    :param before_long_wait: called before a wait of :data:`RELEASE_IDLE_AFTER`
        seconds or more.
    :param interval: how long to wait after a cycle that raised (seconds).
    :param warn_once: the worker's once-per-kind warning.
    """

    def __init__(
        self,
        *,
        cycle: Callable[[], CycleResult],
        after_cycle: Callable[[], None] | None,
        setup: Callable[[], None] | None,
        before_long_wait: Callable[[], None],
        interval: Callable[[], float],
        warn_once: Callable[..., None],
    ) -> None:
        self._cycle = cycle
        self._after_cycle = after_cycle
        self._setup = setup
        self._before_long_wait = before_long_wait
        self._interval = interval
        self._warn_once = warn_once
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Set while an exit flush waits for the queue to run dry (see flush()).
        self._flushing = threading.Event()
        # An exit flush takes a ticket; a cycle that began after the ticket was
        # taken and ended with nothing more due answers it (a cycle already
        # running when the flush came may have looked before the last events
        # were stored).
        self._flush_done = threading.Condition(threading.Lock())
        self._flush_asked = 0
        self._flush_answered = 0
        #: What the thread is inside: "network" (may take up to the timeout),
        #: "setup" (the first call of a new transport: its lazy imports, CA
        #: bundle and first handshake), "build" (making the transport object:
        #: Python only), "local" (SQLite: short) or None.
        self.phase: str | None = None

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (until the next :meth:`start`)."""
        return self._stopping.is_set()

    def halting(self) -> bool:
        """True in the thread once stop() was called: start nothing new."""
        return self._stopping.is_set() and threading.current_thread() is self._thread

    @contextlib.contextmanager
    def inside(self, phase: str) -> Iterator[None]:
        """Mark what the thread is inside for the duration of the block."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def start(self) -> None:
        """Start the thread if it is not running (idempotent)."""
        if self.running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-core-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next cycle now instead of at the end of the wait."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wake the thread and wait at most ``timeout`` until a cycle finds
        nothing more due; True when it did."""
        with self._flush_done:
            self._flush_asked += 1
            ticket = self._flush_asked
        self._flushing.set()
        self._wake.set()
        try:
            with self._flush_done:
                return self._flush_done.wait_for(
                    lambda: self._flush_answered >= ticket, max(timeout, 0.0)
                )
        finally:
            self._flushing.clear()

    def stop(self, timeout: float, grace: float) -> bool:
        """Stop the thread, waiting at most ``timeout`` (plus ``grace`` for a
        thread inside native work); True if it ended."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(timeout, 0.0))
        if thread.is_alive() and grace > 0 and self.phase in _NATIVE_PHASES:
            thread.join(grace)
        return not thread.is_alive()

    def _run(self) -> None:
        if self._setup is not None:
            try:
                self._setup()
            except Exception as exc:
                logger.debug("telemetry-core: worker thread setup failed: %r", exc)
        while not self._stopping.is_set():
            asked = self._flush_asked  # the flushes this cycle can answer
            try:
                self.phase = "local"
                cycle = self._cycle()
                if self._after_cycle is not None and not self._stopping.is_set():
                    self._after_cycle()
                wait = cycle.wait
                again = cycle.more or (cycle.reason == "sent" and self._flushing.is_set())
            except Exception as exc:
                wait, again = self._interval(), False
                self._warn_once(
                    f"cycle:{type(exc).__name__}",
                    "telemetry-core: the submission worker failed (%r); retrying in %.0f s",
                    exc,
                    wait,
                )
            finally:
                self.phase = None
            if again:
                continue
            with self._flush_done:
                self._flush_answered = max(self._flush_answered, asked)
                self._flush_done.notify_all()
            wait = min(max(wait, 0.0), MAX_LOOP_WAIT)
            if wait >= RELEASE_IDLE_AFTER:
                self._before_long_wait()
            if self._wake.wait(wait):
                self._wake.clear()
