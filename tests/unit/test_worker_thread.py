"""The worker's thread loop: the exit flush is answered by a cycle that began after it."""

from __future__ import annotations

import threading

from telemetry_core._worker_thread import WorkerThread
from telemetry_core.worker import CycleResult

_WAIT = 10.0  # a bound for the test's own waits; nothing here sleeps


def _thread(cycle: object) -> WorkerThread:
    return WorkerThread(
        cycle=cycle,  # type: ignore[arg-type]
        after_cycle=None,
        setup=None,
        before_long_wait=lambda: None,
        interval=lambda: 3600.0,
        warn_once=lambda *args: None,
    )


def test_a_flush_is_not_answered_by_the_cycle_already_running_when_it_came() -> None:
    # At exit, track()'s last event is stored and then flush() is called; a
    # cycle that was already running may have looked at the queue before the
    # event was stored, so its "nothing due" must not end the flush.
    in_first = threading.Event()
    release_first = threading.Event()
    started: list[int] = []
    flush_asked = threading.Event()
    # Cycles that began after the flush was asked and have ended.
    done_after_flush: list[int] = []

    flush_returned = threading.Event()

    def cycle() -> CycleResult:
        started.append(len(started) + 1)
        after_flush = flush_asked.is_set()
        if len(started) == 1:
            in_first.set()
            release_first.wait(_WAIT)
        else:
            # Give a flush answered too early the time to return before this
            # cycle ends (a correct flush waits for it: the test then takes
            # this half second).
            flush_returned.wait(0.5)
        if after_flush:
            done_after_flush.append(len(started))
        return CycleResult(handled=0, more=False, wait=3600.0, reason="empty")

    worker = _thread(cycle)
    worker.start()
    try:
        assert in_first.wait(_WAIT)
        result: list[tuple[bool, int]] = []

        def flush() -> None:
            flush_asked.set()
            answered = worker.flush(_WAIT)
            result.append((answered, len(done_after_flush)))
            flush_returned.set()

        flusher = threading.Thread(target=flush)
        flusher.start()
        # The flush is asked (and waiting) while the first cycle runs; once that
        # cycle ends, only a second one may answer it.
        assert worker._flushing.wait(_WAIT)  # flush() has registered itself
        release_first.set()
        flusher.join(_WAIT)
        answered, cycles_after = result[0]
        assert answered is True
        assert cycles_after >= 1  # answered by a cycle that looked after the flush came
    finally:
        release_first.set()
        worker.stop(_WAIT, 0.0)


def test_a_flush_of_an_idle_thread_runs_one_cycle_and_returns() -> None:
    ran = threading.Event()
    count: list[int] = []

    def cycle() -> CycleResult:
        count.append(1)
        ran.set()
        return CycleResult(handled=0, more=False, wait=3600.0, reason="empty")

    worker = _thread(cycle)
    worker.start()
    try:
        assert ran.wait(_WAIT)  # the first cycle, then an hour's wait
        before = len(count)
        assert worker.flush(_WAIT) is True
        assert len(count) == before + 1
    finally:
        worker.stop(_WAIT, 0.0)


def test_a_flush_waits_at_most_its_timeout() -> None:
    in_cycle = threading.Event()
    release = threading.Event()

    def cycle() -> CycleResult:
        in_cycle.set()
        release.wait(_WAIT)
        return CycleResult(handled=0, more=False, wait=3600.0, reason="empty")

    worker = _thread(cycle)
    worker.start()
    try:
        assert in_cycle.wait(_WAIT)
        assert worker.flush(0.0) is False  # the running cycle cannot answer it
    finally:
        release.set()
        worker.stop(_WAIT, 0.0)
