"""The embedded collector store: one SQLite file in WAL mode, one writer.

Requests hand their batches to a bounded queue; the writer thread takes every
batch waiting, has them written in one transaction (group commit: one fsync for
many requests) and resolves each request's future only after that commit. The
transaction itself is :class:`~telemetry_core.collector.sqlite_writer.SQLiteWriter`'s,
run on the writer thread or, with ``writer_process=True`` (what ``serve`` uses), in a
child process (:mod:`telemetry_core.collector.sqlite_writer_process`), so that
SQLite and the aggregation run beside the event loop instead of taking turns with
it for one interpreter lock. Reads (stats) open their own connections, which WAL
lets run beside the writer. See :mod:`telemetry_core.collector.store` for the
tables and the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from telemetry_core.collector.aggregation import DAY_MS, add_outcomes, build_stats
from telemetry_core.collector.sqlite_writer import SQLiteWriter, has_day_tables
from telemetry_core.collector.sqlite_writer_process import WriterFailed, WriterProcess
from telemetry_core.collector.store import (
    IngestOutcome,
    PendingWork,
    StatsData,
    StatsQuery,
    StoreUnavailable,
)
from telemetry_core.collector.store_sql import SQLITE, read_stats_data
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

__all__ = ["CLEANUP_CHUNK", "SQLiteStore", "read_stats_file"]

log = logging.getLogger("telemetry_core.collector")

#: Raw events deleted per retention transaction; batches waiting commit between chunks.
CLEANUP_CHUNK = 5000

_STOP = object()
#: How long a stats read waits for the buffered outcome counters (seconds).
_FLUSH_WAIT: Final = 2.0


@attrs.define
class _Batch:
    events: Sequence[Event]
    received_ms: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[IngestOutcome]


@attrs.define
class _Cleanup:
    before_ms: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]
    chunk: int
    deleted: int = 0


@attrs.define
class _Flush:
    """A reader waiting for the buffered outcome counters to be committed."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _writer_error(what: str, exc: WriterFailed) -> StorageError:
    """The error for a failed call of the writer process; an internal one is logged
    here (the child's traceback names code, never event data) and not repeated."""
    if exc.internal:
        log.error("collector writer failed: %s\n%s", what, exc)
        return StorageError(f"{what} failed: internal error in the writer")
    return StorageError(f"{what} failed: {exc}")


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class SQLiteStore(PendingWork):
    """A :class:`~telemetry_core.collector.store.CollectorStore` on one SQLite file.

    ``max_pending_events`` bounds the events waiting for the writer; past it,
    :meth:`ingest` raises :class:`StoreOverloaded`. ``max_group_batches`` bounds
    how many batches one transaction commits together. ``synchronous`` is the
    SQLite ``synchronous`` pragma (``FULL``: a commit survives power loss).
    ``cleanup_chunk`` is how many raw events one retention transaction deletes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending_events: int = 50_000,
        max_group_batches: int = 64,
        synchronous: str = "FULL",
        cleanup_chunk: int = CLEANUP_CHUNK,
        writer_process: bool = False,
    ) -> None:
        self.path = Path(path)
        self._cleanup_chunk = cleanup_chunk
        super().__init__(max_pending_events)
        self._max_group = max_group_batches
        self._counters: dict[tuple[int, str], int] = defaultdict(int)
        self._wake_queued = False
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = False
        #: Where the transactions run (raises StorageError when the file is unusable).
        self._sql: SQLiteWriter | WriterProcess = (
            WriterProcess(self.path, synchronous=synchronous)
            if writer_process
            else SQLiteWriter(self.path, synchronous=synchronous)
        )
        self._writer = threading.Thread(target=self._run, name="collector-sqlite-writer")
        self._writer.daemon = True
        self._writer.start()

    # -- the CollectorStore interface ------------------------------------------

    async def ingest(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        """Store ``events`` exactly once; return after their transaction committed."""
        if self._closed:
            raise StorageError("the store is closed")
        if not events:
            return IngestOutcome(inserted=())
        self._admit(len(events), "the writer is behind; try again shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestOutcome] = loop.create_future()
        self._queue.put(_Batch(events, received_ms, loop, future))
        # shield: a cancelled request must not cancel the batch's future, which the
        # writer resolves; the commit happens either way.
        return await asyncio.shield(future)

    async def record_outcomes(
        self, *, rejected: Mapping[str, int], throttled: int, received_ms: int
    ) -> None:
        """Buffer outcome counters; they are written with the next transaction."""
        with self._lock:
            add_outcomes(
                self._counters, rejected=rejected, throttled=throttled, received_ms=received_ms
            )
            wake = not self._wake_queued
            self._wake_queued = True
        if wake:  # one wake-up at a time, so a flood of 429s cannot grow the queue
            self._queue.put(None)

    async def cleanup(self, retention_days: int, now_ms: int) -> int:
        """Delete raw events received more than ``retention_days`` before ``now_ms``.

        The writer deletes ``cleanup_chunk`` rows per transaction and commits the
        batches that arrived meanwhile between chunks, so ingest never waits for
        the whole deletion.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._closed:
            raise StorageError("the store is closed")
        self._queue.put(
            _Cleanup(now_ms - retention_days * DAY_MS, loop, future, self._cleanup_chunk)
        )
        return await future

    async def stats(self, query: StatsQuery) -> dict[str, Any]:
        """Return the stats document for ``query``, read on a separate connection
        after the buffered outcome counters are committed, so it counts every
        refusal already answered."""
        await self._flush_outcomes()
        data = await asyncio.to_thread(self.read_stats_data, query)
        return build_stats(query, data)

    async def _flush_outcomes(self) -> None:
        # Through the writer's queue even when nothing is buffered: the writer may
        # hold counters it took and has not committed yet; it handles the queue in
        # order, so the flush resolves after that commit.
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Flush(loop, future))
        # Bounded: behind a slow commit or a cleanup chunk the read goes ahead
        # without the latest counters rather than keep the admin waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), _FLUSH_WAIT)

    async def close(self) -> None:
        """Commit every pending batch, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._sql.close)

    # -- reads ------------------------------------------------------------------

    def read_stats_data(self, query: StatsQuery) -> StatsData:
        """Read the rollup rows for ``query`` (blocking; callable from any thread)."""
        return _read_stats_data(self.path, query)

    # -- the writer thread ------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < self._max_group:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in items):
                stopping = True
                # drain whatever else was queued before the stop
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            batches = [i for i in items if isinstance(i, _Batch)]
            cleanups = [i for i in items if isinstance(i, _Cleanup)]
            self._commit_group(batches)
            for flush in (i for i in items if isinstance(i, _Flush)):
                with contextlib.suppress(RuntimeError):  # loop already closed
                    flush.loop.call_soon_threadsafe(_resolve, flush.future, None, None)
            for job in cleanups:
                self._run_cleanup(job, finish=stopping)

    def _take_counters(self) -> dict[tuple[int, str], int]:
        with self._lock:
            self._wake_queued = False
            counters = dict(self._counters)
            self._counters.clear()
        return counters

    def _restore_counters(self, counters: Mapping[tuple[int, str], int]) -> None:
        with self._lock:
            for key, n in counters.items():
                self._counters[key] += n

    def _commit_group(self, batches: list[_Batch]) -> None:
        counters = self._take_counters()
        if not batches and not counters:
            return
        started = time.perf_counter()
        outcomes: list[IngestOutcome] = []
        error: BaseException | None = None
        n_events = sum(len(b.events) for b in batches)
        try:
            inserted = self._sql.commit([(b.events, b.received_ms) for b in batches], counters)
            outcomes = [IngestOutcome(inserted=flags) for flags in inserted]
        except sqlite3.Error as exc:
            error = StorageError(f"commit failed: {exc}")
        except WriterFailed as exc:
            error = _writer_error("commit", exc)
            if exc.committed:  # the counters are in the file: do not add them again
                counters = {}
        except Exception:
            # Any other failure must not end the writer thread: every waiting
            # ingest would hang. The log names the failure, never event data.
            log.exception("collector writer failed to commit batches=%d", len(batches))
            error = StorageError("commit failed: internal error in the writer")
        if error is not None:
            outcomes = []
            self._restore_counters(counters)
        elapsed = time.perf_counter() - started
        self._release(n_events)
        if error is None:
            self._notify_observers(elapsed, n_events)
        for i, batch in enumerate(batches):
            value = outcomes[i] if error is None else None
            with contextlib.suppress(RuntimeError):  # loop already closed
                batch.loop.call_soon_threadsafe(_resolve, batch.future, value, error)

    def _run_cleanup(self, job: _Cleanup, *, finish: bool) -> None:
        """Delete one chunk; queue the job again behind waiting batches while rows
        remain (or, when ``finish``, at stop, keep deleting here)."""
        error: BaseException | None = None
        # Bounded: each round deletes a full chunk or ends; the cap guards the stop path.
        for _ in range(1_000_000):
            try:
                count = self._sql.delete_before(job.before_ms, job.chunk)
            except sqlite3.Error as exc:
                error = StorageError(f"cleanup failed: {exc}")
                break
            except WriterFailed as exc:
                error = _writer_error("cleanup", exc)
                break
            except Exception:
                log.exception("collector writer failed to run retention")
                error = StorageError("cleanup failed: internal error in the writer")
                break
            job.deleted += count
            if count < job.chunk:
                break
            if not finish:
                self._queue.put(job)
                return
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_resolve, job.future, job.deleted, error)


def read_stats_file(path: str | Path, query: StatsQuery) -> dict[str, Any]:
    """Return the stats document for ``query`` from a collector database file,
    read-only (what ``telemetry-collector stats --db`` uses)."""
    if not Path(path).exists():
        raise StorageError(f"no collector database at {path}")
    return build_stats(query, _read_stats_data(Path(path), query))


def _read_stats_data(path: Path, query: StatsQuery) -> StatsData:
    # as_uri() percent-encodes '?', '#' and '%' so they stay part of the path.
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read stats: {exc}") from exc
    try:
        # A file of an earlier collector not opened by this one since has no day tables.
        return read_stats_data(
            lambda sql, args: conn.execute(sql, args).fetchall(),
            query,
            SQLITE,
            day_tables=has_day_tables(conn),
        )
    except sqlite3.OperationalError as exc:  # locked, unreadable
        raise StoreUnavailable(f"cannot read stats: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read stats: {exc}") from exc
    finally:
        conn.close()
